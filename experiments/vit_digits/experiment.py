"""ViT on digits (or any image folder): the trainer's first experiment.

`make_experiment(config)` returns the `mmjax.train.Experiment` that `launch.py` trains.
"""
from __future__ import annotations

import os

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from experiments.vit_digits.model import ViTClassifier
from experiments.vit_digits.report import write_prediction_grid
from mmjax.data import DigitsSource, ImageFolderSource, make_eval_pipeline, make_pipeline, verify_image_folders
from mmjax.train import Context, Experiment


class RandomShift(grain.transforms.RandomMap):
  """Shifts the image by up to one pixel in each direction, padding with zeros."""

  def random_map(self, example, rng: np.random.Generator):
    dy, dx = rng.integers(-1, 2, size=2)
    img = np.roll(example['image'], (int(dy), int(dx)), axis=(0, 1))
    if dy:
      img[(0 if dy > 0 else -1), :] = 0
    if dx:
      img[:, (0 if dx > 0 else -1)] = 0
    return {**example, 'image': img}


def make_sources(config: ml_collections.ConfigDict):
  """(train, test, num_classes) from config.data."""
  d = config.data
  if not d.dir:
    return (DigitsSource('train', test_fraction=d.test_fraction),
            DigitsSource('test', test_fraction=d.test_fraction), DigitsSource.num_classes)
  size = (d.image_size, d.image_size)
  train = ImageFolderSource(os.path.join(d.dir, 'train'), image_size=size, grayscale=d.grayscale)
  test = ImageFolderSource(os.path.join(d.dir, 'test'), image_size=size, grayscale=d.grayscale)
  if d.verify:  # decode every file of both splits now, so bad ones fail the run before training starts, all named
    verify_image_folders([train, test])
  if train.classes != test.classes:
    raise ValueError(f'{d.dir}: train classes {train.classes} differ from test classes {test.classes}')
  return train, test, len(train.classes)


def make_model(config: ml_collections.ConfigDict, num_classes: int) -> ViTClassifier:
  m = config.model
  if config.remat_policy not in ('none', 'full'):
    raise ValueError(f"config.remat_policy={config.remat_policy!r}: the ViT encoder rematerialises whole blocks, "
                     "choose 'none' or 'full'")
  return ViTClassifier(num_classes, m.patch, m.width, m.depth, m.num_heads, m.mlp_dim, dropout=m.dropout,
                       remat=config.remat_policy == 'full', dtype=jnp.dtype(config.compute_dtype),
                       param_dtype=jnp.dtype(config.param_dtype))


def make_experiment(config: ml_collections.ConfigDict) -> Experiment:
  train_src, test_src, num_classes = make_sources(config)
  model = make_model(config, num_classes)
  channels = 1 if config.data.grayscale else 3
  size = config.data.image_size
  if not config.data.dir:
    size, channels = 8, 1

  def init_params(rng):
    return model.init(rng, jnp.zeros((1, size, size, channels), jnp.float32))['params']

  def loss_fn(params, batch, rng, step):
    del step
    logits = model.apply({'params': params}, batch['image'], train=True, rngs={'dropout': rng})
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch['label']).mean()
    return loss, {'accuracy': (logits.argmax(-1) == batch['label']).mean()}

  predict = jax.jit(lambda params, images: model.apply({'params': params}, images).argmax(-1))
  eval_batch = max(config.batch_size, jax.process_count())

  def test_accuracy(params, ctx: Context):
    correct = total = 0
    for local in make_eval_pipeline(test_src, global_batch_size=eval_batch):
      batch = ctx.global_batch(local)
      pred = predict(params, batch['image'])
      hit = (pred == batch['label']) * batch['mask']
      correct += float(jnp.sum(hit))
      total += float(jnp.sum(batch['mask']))
    return {'accuracy': correct / total, 'n': total}

  def report(params, ctx: Context):
    n = 32
    first = grain.MapDataset.source(test_src)[:n]
    local = next(iter(make_eval_pipeline(first, global_batch_size=n)))
    pred = ctx.gather(predict(params, ctx.global_batch(local)['image']))
    path = os.path.join(ctx.workdir, 'predictions.png')
    if jax.process_index() == 0:
      examples = [test_src[i] for i in range(n)]
      write_prediction_grid(path, np.stack([e['image'] for e in examples]),
                            np.array([int(e['label']) for e in examples]), pred)
    return {'predictions_png': path}

  transform = RandomShift() if config.data.augment else None
  train_data = make_pipeline(train_src, global_batch_size=config.batch_size, seed=config.seed,
                             transform=transform)
  m = config.model
  tokens = (size // m.patch) ** 2
  per_layer = 2 * tokens * (4 * m.width * m.width + 2 * m.width * m.mlp_dim) + 4 * tokens * tokens * m.width
  flops = 3 * (m.depth * per_layer + 2 * tokens * m.patch ** 2 * channels * m.width)
  return Experiment(init_params=init_params, loss_fn=loss_fn, train_data=train_data,
                    evaluators={'test': test_accuracy}, report=report, flops_per_example=flops)
