"""The standard keys every mmjax experiment config carries.

Experiment configs start from `base_config()` and override what they need, so that
`--config.<key>=...` works the same way for every paper.

Optimiser parameter groups (`optim.groups`, first match wins; unmatched parameters form the 'default' group at
`optim.lr`) select parameters by a regex over their '/'-joined paths, e.g. 'vision_tower/encoder/layers_0/mlp/
fc1/kernel'. A group sets any of: lr (peak), schedule, warmup_steps, end_lr_factor (unset ones inherit the
optimiser's), frozen (never updated), frozen_until=k (not updated in the first k steps, then its schedule runs
over the remaining steps, warmup included). A regex that matches no parameter is an error; every group's
parameter count is logged at start and written to the 'setup' row of metrics.jsonl.

From the command line (launch.py locks the config, so only existing keys can be set):
  a group the config defines:  --config.optim.groups.vision.lr=2e-6
  new or changed groups:       --config.optim.group_spec='vision=^vision_tower/:lr=2e-6;proj=^proj/:frozen_until=100'
group_spec holds ';'-separated entries 'name=regex[:key=value...]' with the keys above; an entry naming a group
of the config changes it (an empty regex, 'vision=:lr=1e-5', keeps its regex), a new name is appended after the
config's groups.

EMA: ema_decay > 0 keeps an EMA of the parameters that `ema_regex` selects ('' = all), checkpointed and used for
evaluation in place of those parameters.
"""
from __future__ import annotations

import ml_collections

from mmjax.train.optimizer import group, optim_config
from mmjax.train.sharding import DEFAULT_RULES

__all__ = ['base_config', 'group', 'optim_config', 'parse_arg']


def base_config() -> ml_collections.ConfigDict:
  """Returns a ConfigDict holding the trainer's standard keys with safe defaults."""
  c = ml_collections.ConfigDict()
  c.experiment = ''  # module path with `make_experiment(config)`, e.g. 'experiments.vit_digits.experiment'
  c.variant = 'default'  # the config variant ('default' or 'smoke'); launch.py --mode picks the program
  c.seed = 0
  # Start params (not optimiser state) when the workdir holds no checkpoint yet (priority: workdir checkpoint >
  # init_from > fresh init): a source (a run's workdir, an mmjax params checkpoint, an HF folder) for the whole
  # tree, or a mapping {subtree or regex: source} whose uncovered parameters are initialised randomly, e.g.
  # {'vision_tower': {'source': SIGLIP_DIR, 'skip': 'head/.*'}, 'language_model': QWEN2_DIR}
  # (see mmjax.weights.compose). From the command line: a path, or 'subtree=path;subtree=path'.
  c.init_from = ml_collections.FieldReference('', field_type=object)
  c.total_steps = 1000
  c.batch_size = 128  # global batch, over all processes
  c.grad_accum_steps = 1  # microbatches per step; batch_size must divide evenly
  c.log_every = 50
  c.eval_every = 500  # 0 disables periodic evaluation (the final step always evaluates)
  c.ckpt_every = 500
  c.keep_ckpts = 3
  c.async_checkpointing = True
  c.mesh = ml_collections.ConfigDict({'data': -1, 'fsdp': 1, 'tensor': 1})
  c.sharding_rules = ml_collections.ConfigDict(dict(DEFAULT_RULES))
  c.compute_dtype = 'float32'  # 'bfloat16' for mixed precision; params stay in param_dtype
  c.param_dtype = 'float32'
  c.remat_policy = 'none'  # what a block keeps for the backward pass: none (all), full, save_dots, save_attention
  c.ema_decay = 0.0  # > 0 keeps an EMA of the params ema_regex selects, checkpointed and used for evaluation
  c.ema_regex = ''  # regex over parameter paths ('' = all), e.g. '^generator/'
  c.profile_steps = ()  # (first, last): trace these steps with jax.profiler into workdir/profile
  # XLA compiler options of the train step (jax.jit's compiler_options), e.g. {'xla_backend_optimization_level': 1};
  # empty: XLA_FLAGS and XLA's defaults. An unknown option fails the first step, naming it.
  c.xla_options = ml_collections.ConfigDict()
  c.tensorboard = False
  c.progress_bar = True
  # The optimiser (see mmjax.train.optimizer.optim_config for its keys and the module docstring for groups).
  c.optim = optim_config()
  return c


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """Parses a config argument 'k1=v1,k2=v2' over `defaults` (values keep the default's type).

  An unknown key raises ValueError listing the valid ones.
  """
  out = ml_collections.ConfigDict(defaults)
  for item in filter(None, (arg or '').split(',')):
    key, sep, value = item.partition('=')
    key = key.strip()
    if key not in defaults:
      raise ValueError(f"unknown config argument '{key}'; valid: {', '.join(sorted(defaults))}")
    if not sep:
      raise ValueError(f"config argument '{item}' must look like key=value")
    kind = type(defaults[key])
    if kind is bool:
      out[key] = value.strip().lower() in ('1', 'true', 'yes')
    else:
      out[key] = kind(value.strip()) if defaults[key] is not None else value.strip()
  return out
