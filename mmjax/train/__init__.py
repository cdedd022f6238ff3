"""mmjax.train: the sharded trainer, its state and steps, optimisers, hooks, checkpoints and metrics."""
from mmjax.train.checkpoint import IncompatibleCheckpointError
from mmjax.train.config import base_config, group, optim_config
from mmjax.train.experiment import Context, Experiment
from mmjax.train.hooks import Hook
from mmjax.train.state import TrainState
from mmjax.train.step import compute_grads, default_train_step, keep_if_finite
from mmjax.train.trainer import evaluate_checkpoint, train_and_evaluate

__all__ = ['base_config', 'group', 'optim_config', 'Context', 'Experiment', 'Hook', 'IncompatibleCheckpointError',
           'TrainState', 'compute_grads', 'default_train_step', 'keep_if_finite', 'evaluate_checkpoint',
           'train_and_evaluate']
