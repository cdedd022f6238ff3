"""mmjax.train: the sharded trainer, its state and steps, optimisers, hooks, checkpoints and metrics."""
from mmjax import lazy_exports

# submodule -> the names it exports; a name's submodule is imported on its first use (mmjax.lazy_exports)
_EXPORTS = {
  'checkpoint': ('IncompatibleCheckpointError',),
  'config': ('base_config', 'group', 'optim_config'),
  'experiment': ('Context', 'Experiment'),
  'hooks': ('Hook',),
  'preference': ('dpo_loss', 'pack_pairs', 'sequence_logprobs'),
  'state': ('TrainState',),
  'step': ('compute_grads', 'default_train_step', 'keep_if_finite'),
  'trainer': ('evaluate_checkpoint', 'train_and_evaluate'),
}
__all__ = [name for names in _EXPORTS.values() for name in names]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
