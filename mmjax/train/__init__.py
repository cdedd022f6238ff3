"""mmjax.train: the sharded trainer, optimiser, checkpoints and metrics."""
from mmjax.train.checkpoint import IncompatibleCheckpointError
from mmjax.train.config import base_config, group
from mmjax.train.trainer import Context, Experiment, evaluate_checkpoint, train_and_evaluate

__all__ = ['base_config', 'group', 'Context', 'Experiment', 'IncompatibleCheckpointError',
           'evaluate_checkpoint', 'train_and_evaluate']
