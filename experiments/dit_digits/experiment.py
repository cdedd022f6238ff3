"""Class-conditional DiT on scikit-learn's digits (upsampled to 16 x 16): the suite's first image generator.

`make_experiment(config)` is what the shared trainer trains (launch.py --mode train|eval, and --mode compile through
`abstract_experiment`); PROGRAMS adds --mode sample (sample.py), which draws digits of every class from the EMA
params at several CFG scales and measures them with a classifier fitted on the real digits.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from experiments.dit_digits.data import UpsampledDigits
from experiments.dit_digits.model import CHANNELS, diffusion_loss, dit_config, make_model, make_tables
from experiments.dit_digits.sample import sample_program
from mmjax.data import make_eval_pipeline, make_pipeline
from mmjax.models.dit import train_flops_per_example
from mmjax.train import Context, Experiment

PROGRAMS = {'sample': sample_program}


def flops_per_example(config: ml_collections.ConfigDict) -> float:
  """Matmul FLOPs of one training example, forward + backward."""
  return train_flops_per_example(dit_config(config))


def _experiment(config: ml_collections.ConfigDict, train_data, test_src: UpsampledDigits | None) -> Experiment:
  """The Experiment over `train_data`, with the test-loss evaluator when `test_src` is given."""
  size = config.data.image_size
  model = make_model(config)
  tables = make_tables(config)

  def init_params(rng):
    x = jnp.zeros((1, size, size, CHANNELS), jnp.float32)
    return model.init(rng, x, jnp.zeros((1,), jnp.int32), jnp.zeros((1,), jnp.int32))['params']

  def loss_fn(params, batch, rng, step):
    del step
    loss, parts = diffusion_loss(model, tables, config, params, batch['image'], batch['label'], rng)
    return loss.mean(), {k: v.mean() for k, v in parts.items()}

  @jax.jit
  def test_loss_sums(params, batch, rng):
    loss, parts = diffusion_loss(model, tables, config, params, batch['image'], batch['label'], rng,
                                 deterministic=True)
    mask = batch['mask']
    return {'loss': jnp.sum(loss * mask), **{k: jnp.sum(v * mask) for k, v in parts.items()}}

  def test_loss(params, ctx: Context):
    """The loss on the test digits with fixed timesteps and noise (the same draws at every evaluation)."""
    sums, total = {}, 0.0
    key = jax.random.key(config.seed)
    for i, local in enumerate(make_eval_pipeline(test_src, global_batch_size=config.batch_size)):
      batch = ctx.global_batch(local)
      for k, v in test_loss_sums(params, batch, jax.random.fold_in(key, i)).items():
        sums[k] = sums.get(k, 0.0) + float(v)
      total += float(jnp.sum(batch['mask']))
    return {k: v / total for k, v in sums.items()}

  return Experiment(init_params=init_params, loss_fn=loss_fn, train_data=train_data,
                    evaluators={'test': test_loss} if test_src is not None else {},
                    flops_per_example=flops_per_example(config))


def make_experiment(config: ml_collections.ConfigDict) -> Experiment:
  d = config.data
  train_src = UpsampledDigits('train', image_size=d.image_size, test_fraction=d.test_fraction)
  test_src = UpsampledDigits('test', image_size=d.image_size, test_fraction=d.test_fraction)
  train_data = make_pipeline(train_src, global_batch_size=config.batch_size, seed=config.seed)
  return _experiment(config, train_data, test_src)


def abstract_experiment(config: ml_collections.ConfigDict) -> tuple[Experiment, dict[str, jax.ShapeDtypeStruct]]:
  """The training experiment without data and the shapes of one global batch, for lowering the step ahead of time
  (mmjax.train.aot)."""
  b, s = config.batch_size, config.data.image_size
  batch = {'image': jax.ShapeDtypeStruct((b, s, s, CHANNELS), jnp.float32),
           'label': jax.ShapeDtypeStruct((b,), jnp.int32)}
  return _experiment(config, None, None), batch
