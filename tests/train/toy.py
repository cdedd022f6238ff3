"""A toy linear-regression experiment for trainer tests that need full control of the data."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mmjax.data import make_pipeline
from mmjax.train import Experiment, base_config


class ArraySource:
  """Random-access source over in-memory arrays."""

  def __init__(self, x: np.ndarray, y: np.ndarray):
    self.x, self.y = x.astype(np.float32), y.astype(np.float32)

  def __len__(self):
    return len(self.x)

  def __getitem__(self, i):
    return {'x': self.x[i], 'y': self.y[i]}


def toy_config(**overrides):
  c = base_config()
  c.total_steps = 8
  c.batch_size = 8
  c.log_every = 1
  c.eval_every = 0
  c.ckpt_every = 100
  c.progress_bar = False
  c.async_checkpointing = False
  c.optim.lr = 0.1
  c.optim.warmup_steps = 0
  c.optim.schedule = 'constant'
  c.optim.clip_norm = 0.0
  c.optim.name = 'sgd'
  c.optim.momentum = 0.0
  c.update_from_flattened_dict(overrides)  # dotted keys ('optim.lr') reach nested fields
  return c


def toy_data(n=64, seed=0, nan_rows=()):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, 4))
  y = x @ np.array([[1.0, -2.0], [0.5, 0.0], [0.0, 1.0], [3.0, 1.0]])
  x[list(nan_rows)] = np.nan
  return ArraySource(x, y)


def toy_experiment(config, source=None, evaluators=None):
  source = source or toy_data()

  def init_params(rng):
    k1, k2 = jax.random.split(rng)
    return {
        'enc': {'w': nn.LogicallyPartitioned(jax.random.normal(k1, (4, 4)) * 0.1, ('embed', 'mlp'))},
        'head': {'w': nn.LogicallyPartitioned(jax.random.normal(k2, (4, 2)) * 0.1, ('mlp', 'vocab'))},
    }

  def loss_fn(params, batch, rng, step):
    del rng, step
    h = batch['x'] @ params['enc']['w'] + batch['x']
    pred = h @ params['head']['w']
    return jnp.mean((pred - batch['y']) ** 2), {}

  data = make_pipeline(source, global_batch_size=config.batch_size, seed=config.seed, shuffle=False)
  return Experiment(init_params=init_params, loss_fn=loss_fn, train_data=data, evaluators=evaluators or {})
