"""The sample program (`launch.py --mode sample`): class-conditional digits from a trained workdir's EMA params.

For each CFG scale s of config.sample.cfg_scales it draws config.sample.per_class samples of every class from the
same starting noise (seed config.sample.seed) with the configured scheduler, guided as ε_u + s·(ε_c − ε_u) (s = 1
is the plain conditional model), and labels them with a classifier fitted on the real digits (quality.py). The
workdir's checkpoints are only read; the outputs go to <workdir>/samples/:

  grid_cfg<s>.png   one row per class (0 at the top), per_class samples in each row, pixels in [0, 255]
  samples.npz       samples float32 [len(cfg_scales), 10 * per_class, S, S, 1] clipped to [−1, 1], labels
                    [10 * per_class], cfg_scales [len(cfg_scales)], predicted [len(cfg_scales), 10 * per_class]
  accuracy.json     the classifier's accuracy on each scale's samples, and on the real test digits
"""
from __future__ import annotations

import json
import os
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from PIL import Image

from experiments.dit_digits.model import CHANNELS, NUM_CLASSES, make_model
from experiments.dit_digits.quality import DigitsClassifier
from mmjax.diffusion import Scheduler, cfg, from_diffusers_config, sample
from mmjax.diffusion.class_conditional import make_denoise_fn
from mmjax.weights import read_workdir_params


def scheduler_config(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The diffusers scheduler config of config.sample.scheduler over the training process of config.diffusion."""
  d, s = config.diffusion, config.sample
  out = {'_class_name': s.scheduler, 'num_train_timesteps': d.num_train_timesteps, 'beta_schedule': d.beta_schedule,
         'beta_start': d.beta_start, 'beta_end': d.beta_end, 'prediction_type': d.prediction_type}
  if s.scheduler in ('DDPMScheduler', 'DDIMScheduler'):
    out['clip_sample'] = s.clip_sample
  if s.scheduler == 'DDPMScheduler':
    out['variance_type'] = 'learned_range' if config.model.learn_sigma else 'fixed_small'
  return out


def make_scheduler(config: ml_collections.ConfigDict) -> Scheduler:
  return from_diffusers_config(scheduler_config(config), config.sample.num_steps, eta=config.sample.eta)


def write_grid(path: str, images: np.ndarray, rows: int, zoom: int = 2) -> None:
  """images [rows * cols, S, S, 1] in [−1, 1], row-major, as one grayscale PNG with a 1-pixel gap between cells."""
  cols = len(images) // rows
  size = images.shape[1]
  pixels = np.round((np.clip(images[..., 0], -1, 1) + 1) * 127.5).astype(np.uint8)
  canvas = np.zeros((rows * (size + 1) - 1, cols * (size + 1) - 1), np.uint8)
  for k, img in enumerate(pixels):
    r, c = divmod(k, cols)
    canvas[r * (size + 1):r * (size + 1) + size, c * (size + 1):c * (size + 1) + size] = img
  Image.fromarray(canvas).resize((canvas.shape[1] * zoom, canvas.shape[0] * zoom), Image.NEAREST).save(path)


def draw(config: ml_collections.ConfigDict, params: Any, scales: list[float]) -> tuple[np.ndarray, np.ndarray]:
  """(samples float32 [len(scales), 10 * per_class, S, S, 1] clipped to the data range [−1, 1], labels int32
  [10 * per_class]): every scale starts from the same noise and, for stochastic schedulers, the same per-step noise.

  DDPM and DDIM clip their x0 prediction (sample.clip_sample); Euler and DPM-Solver do not, and near the cosine
  schedule's ᾱ_T ≈ 0 an ε error is amplified into a few far-out pixels, which the final clip removes."""
  s = config.sample
  scheduler = make_scheduler(config)
  learned_range = s.scheduler == 'DDPMScheduler' and config.model.learn_sigma
  denoise_fn = make_denoise_fn(make_model(config), 2 * CHANNELS if learned_range else CHANNELS)
  labels = np.repeat(np.arange(NUM_CLASSES, dtype=np.int32), s.per_class)
  cond = jnp.stack([jnp.full(labels.shape, NUM_CLASSES, jnp.int32), jnp.asarray(labels)])  # (null, class) labels
  noise_key, step_key = jax.random.split(jax.random.key(s.seed))
  size = config.data.image_size
  noise = jax.random.normal(noise_key, (len(labels), size, size, CHANNELS), jnp.float32)
  stochastic = s.scheduler == 'DDPMScheduler' or s.eta > 0
  out = [np.clip(np.asarray(sample(denoise_fn=denoise_fn, params=params, scheduler=scheduler, noise=noise, cond=cond,
                                   guidance=cfg(scale, channels=CHANNELS), rng=step_key if stochastic else None)),
                 -1.0, 1.0)
         for scale in scales]
  return np.stack(out), labels


def sample_program(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Samples, grids and classifier accuracy per CFG scale from the workdir's latest finished step (its EMA)."""
  model = make_model(config)
  size = config.data.image_size
  abstract = nn.unbox(jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, size, size, CHANNELS)),
                                     jnp.zeros((1,), jnp.int32), jnp.zeros((1,), jnp.int32))['params'])
  params, info = read_workdir_params(workdir, abstract)
  if not info.ema:
    logging.warning('%s kept no EMA (config.ema_decay=0): sampling with the raw params of step %d', workdir,
                    info.step)
  scales = [float(x) for x in config.sample.cfg_scales]
  start = time.perf_counter()
  samples, labels = draw(config, params, scales)
  seconds = time.perf_counter() - start
  classifier = DigitsClassifier(size, test_fraction=config.data.test_fraction)
  predicted = np.stack([classifier.predict(x) for x in samples])
  accuracy = {f'{scale:g}': float(np.mean(p == labels)) for scale, p in zip(scales, predicted)}
  result = {'step': info.step, 'ema': info.ema, 'scheduler': config.sample.scheduler,
            'num_steps': config.sample.num_steps, 'seed': config.sample.seed, 'per_class': config.sample.per_class,
            'accuracy_by_cfg_scale': accuracy, 'classifier_real_test_accuracy': classifier.real_test_accuracy,
            'sampling_seconds': seconds}  # compilation included
  out_dir = os.path.join(workdir, 'samples')
  if jax.process_index() == 0:
    os.makedirs(out_dir, exist_ok=True)
    for scale, x in zip(scales, samples):
      write_grid(os.path.join(out_dir, f'grid_cfg{scale:g}.png'), x, NUM_CLASSES)
    np.savez(os.path.join(out_dir, 'samples.npz'), samples=samples, labels=labels,
             cfg_scales=np.asarray(scales, np.float32), predicted=predicted)
    with open(os.path.join(out_dir, 'accuracy.json'), 'w') as f:
      json.dump(result, f, indent=1)
  logging.info('dit_digits samples of step %d (%s, %s %d steps): classifier accuracy by CFG scale %s (real test '
               'digits: %.3f); %.1f s sampling', info.step, 'EMA' if info.ema else 'params', config.sample.scheduler,
               config.sample.num_steps, accuracy, classifier.real_test_accuracy, seconds)
  return {**result, 'out_dir': out_dir}
