"""A small pre-LN ViT classifier on scikit-learn's bundled 8x8 digits (the embedded default).

It exercises every piece of the trainer: mesh + logical sharding, optimiser groups,
EMA, checkpoints and resume, Grain data, metrics and the report.

  # seconds: a tiny model for a few steps
  python launch.py --config configs/vit_digits.py:variant=smoke --workdir runs/digits_smoke
  # the demo run (make demo): ~97% test accuracy in about a minute on 2 CPU cores
  python launch.py --config configs/vit_digits.py --workdir runs/digits
  # evaluate the latest checkpoint of that run again (the program: --mode train (default) or eval)
  python launch.py --config configs/vit_digits.py --workdir runs/digits --mode eval
  # the same on your own image folder (DIR/train/<class>/*.png and DIR/test/<class>/*.png)
  python launch.py --config configs/vit_digits.py --workdir runs/folder \
      --config.data.dir=DIR --config.data.image_size=32 --config.model.patch=4
  # FSDP x tensor parallel over 8 devices
  python launch.py --config configs/vit_digits.py --workdir runs/digits_tp \
      --config.mesh.data=2 --config.mesh.fsdp=2 --config.mesh.tensor=2
"""
import ml_collections

from mmjax.train.config import base_config, parse_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = parse_arg(arg, variant='default')
  if arg.variant not in ('default', 'smoke'):
    raise ValueError(f"variant must be 'default' or 'smoke', got {arg.variant!r}")
  c = base_config()
  c.experiment = 'experiments.vit_digits.experiment'
  c.variant = arg.variant

  c.data = ml_collections.ConfigDict()
  c.data.dir = ''  # '' = scikit-learn's digits; else an image folder with train/ and test/
  c.data.image_size = 8
  c.data.grayscale = True
  c.data.test_fraction = 0.2  # digits only
  c.data.augment = False  # random 1-pixel shifts (they cost accuracy on 8x8 digits)
  c.data.verify = True  # image folders: decode every file before training

  c.model = ml_collections.ConfigDict()
  c.model.patch = 2
  c.model.width = 64
  c.model.depth = 4
  c.model.num_heads = 4
  c.model.mlp_dim = 128
  c.model.dropout = 0.0

  c.total_steps = 2000
  c.batch_size = 64
  c.log_every = 50
  c.eval_every = 500
  c.ckpt_every = 500
  c.keep_ckpts = 2
  c.ema_decay = 0.0
  c.optim.lr = 2e-3
  c.optim.warmup_steps = 100
  c.optim.weight_decay = 1e-4
  c.optim.clip_norm = 1.0

  if arg.variant == 'smoke':
    c.model.width = 32
    c.model.depth = 2
    c.model.mlp_dim = 64
    c.total_steps = 20
    c.batch_size = 32
    c.log_every = 5
    c.eval_every = 10
    c.ckpt_every = 10
    c.optim.warmup_steps = 5
    c.optim.lr = 5e-3
  return c
