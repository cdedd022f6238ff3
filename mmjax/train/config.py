"""The standard keys every mmjax experiment config carries.

Experiment configs start from `base_config()` and override what they need, so that
`--config.<key>=...` works the same way for every paper.
"""
from __future__ import annotations

import ml_collections

from mmjax.train.sharding import DEFAULT_RULES


def base_config() -> ml_collections.ConfigDict:
  """Returns a ConfigDict holding the trainer's standard keys with safe defaults."""
  c = ml_collections.ConfigDict()
  c.experiment = ''  # module path with `make_experiment(config)`, e.g. 'experiments.vit_digits.experiment'
  c.mode = 'train'  # the config variant (e.g. 'smoke'); launch.py's --mode picks train/eval
  c.seed = 0
  # Start params (not optimiser state) from another run's workdir or an mmjax params checkpoint
  # when the workdir holds no checkpoint yet. Priority: workdir checkpoint > init_from > fresh init.
  c.init_from = ''
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
  c.remat = False  # rematerialise transformer blocks in the backward pass
  c.ema_decay = 0.0  # > 0 keeps an EMA of the params, checkpointed and used for evaluation
  c.profile_steps = ()  # (first, last): trace these steps with jax.profiler into workdir/profile
  c.tensorboard = False
  c.progress_bar = True

  c.optim = ml_collections.ConfigDict()
  c.optim.name = 'adamw'  # adamw | sgd
  c.optim.lr = 1e-3
  c.optim.schedule = 'cosine'  # cosine | linear | constant
  c.optim.warmup_steps = 0
  c.optim.end_lr_factor = 0.0  # final lr as a fraction of the peak, for cosine/linear
  c.optim.weight_decay = 0.0
  c.optim.b1 = 0.9
  c.optim.b2 = 0.999
  c.optim.eps = 1e-8
  c.optim.momentum = 0.9  # sgd only
  c.optim.clip_norm = 1.0  # 0 disables clipping
  # Parameter groups, first match wins: {name: {'regex': str, 'lr': float, 'frozen': bool}}.
  # Paths are '/'-joined parameter names, e.g. 'vision/encoder/block_0/attn/q_proj/kernel'.
  # Unmatched parameters use optim.lr.
  c.optim.groups = ml_collections.ConfigDict()
  return c


def group(regex: str, lr: float | None = None, frozen: bool = False) -> ml_collections.ConfigDict:
  """One optimiser parameter group for `config.optim.groups`."""
  return ml_collections.ConfigDict({'regex': regex, 'lr': -1.0 if lr is None else float(lr),
                                    'frozen': frozen})


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
