"""The generate program (`launch.py --config configs/ipadapter_instruct.py --mode generate`): images from condition
images, a query and a prompt with IPAdapter-Instruct (pipeline.py).

Reads config.pipeline (a diffusers SD1.5 folder with image_encoder/) and config.adapter (the adapter file). In the
smoke variant config.pipeline may be empty: the tiny random stack of config.seed, with config.adapter (e.g. the
smoke training's <workdir>/adapter.safetensors) or, when that is empty too, random adapter weights (a test of the
program, not a model).
config.image is a condition image path, or several joined by ','; config.query, prompt and negative_prompt apply to
all; config.generate holds the step count, the scales, λ, images per condition, seed, size and dtype. Every
condition starts from the same noise (seed), so the rows differ only by their condition. Writes to
<workdir>/generate/:

  image_{k}_{n}.png   output n of condition k (k, n from 0)
  grid.png            one row per condition: the condition (fitted into the output size) | its outputs
  settings.json       the query, prompts, guidance mode, scales, effective λ, seed, files and timings
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from PIL import Image, ImageOps

from experiments.ipadapter_instruct.checkpoint import load_adapter
from experiments.ipadapter_instruct.pipeline import InstructPipeline, guidance_mode, ip_scale, random_adapter
from experiments.ipadapter_instruct.tiny import TINY_RESAMPLER, tiny_pipeline

_GAP = 4  # pixels between grid cells


def condition_paths(spec: str) -> list[Path]:
  """config.image ('a.png' or 'a.png,b.jpg') -> the image files; ValueError naming an empty spec, a missing path or
  a folder."""
  paths = [Path(part.strip()) for part in spec.split(',') if part.strip()]
  if not paths:
    raise ValueError("config.image is empty: pass the condition image, --config.image=PATH (several joined by ',').")
  for path in paths:
    if path.is_dir():
      raise ValueError(f'config.image: {path} is a folder; name the image files (several joined by \',\').')
    if not path.is_file():
      raise ValueError(f'config.image: {path} does not exist.')
  return paths


def _read_image(path: Path) -> Image.Image:
  try:
    with Image.open(path) as image:
      return image.convert('RGB')
  except (OSError, ValueError) as e:
    raise ValueError(f'config.image: {path} cannot be read as an image ({e}).') from None


def load_instruct_pipeline(config: ml_collections.ConfigDict) -> tuple[InstructPipeline, str]:
  """(the pipeline, where it came from) from config.pipeline and config.adapter, in config.generate.dtype.

  variant=smoke: the adapter has the tiny resampler (tiny.TINY_RESAMPLER), and without config.pipeline the SD stack
  is the tiny random one of config.seed (the one the smoke training used), with random adapter weights when
  config.adapter is empty too. Otherwise both are needed and the resampler is the official SD1.5 one.
  """
  smoke = config.variant == 'smoke'
  if not config.pipeline and not smoke:
    raise ValueError('config.pipeline is empty: pass --config.pipeline=DIR (a diffusers SD1.5 folder with '
                     'image_encoder/) and --config.adapter=FILE; variant=smoke runs the tiny random stack instead.')
  if config.pipeline and not config.adapter:
    raise ValueError(f'config.adapter is empty: pass --config.adapter=FILE, the IPAdapter-Instruct adapter '
                     f'(.bin or .safetensors) to use with {config.pipeline}.')
  if config.pipeline:
    pipe = InstructPipeline.load(config.pipeline, config.adapter, jnp.dtype(config.generate.dtype),
                                 TINY_RESAMPLER if smoke else None)
    return pipe, f'{config.pipeline} + {config.adapter}'
  sd = tiny_pipeline(config.seed)
  if config.adapter:
    weights, source = load_adapter(config.adapter, sd.unet.config, TINY_RESAMPLER), f'tiny + {config.adapter}'
  else:
    logging.warning('config.pipeline and config.adapter are empty: generating with the tiny random SD stack and '
                    'random adapter weights (experiments/ipadapter_instruct/tiny.py); the images are noise.')
    weights, source = random_adapter(sd, TINY_RESAMPLER, config.seed), 'tiny random'
  return InstructPipeline.from_parts(sd, TINY_RESAMPLER, weights), source


def write_grid(path: Path, conditions: list[Image.Image], outputs: np.ndarray) -> None:
  """outputs uint8 [K, N, H, W, 3]: row k is condition k (letterboxed on white into H x W) then its N outputs."""
  rows, cols, height, width = outputs.shape[0], outputs.shape[1] + 1, outputs.shape[2], outputs.shape[3]
  grid = Image.new('RGB', (cols * width + (cols - 1) * _GAP, rows * height + (rows - 1) * _GAP), 'white')
  for k, condition in enumerate(conditions):
    top = k * (height + _GAP)
    grid.paste(ImageOps.pad(condition, (width, height), Image.Resampling.BICUBIC, color='white'), (0, top))
    for n, image in enumerate(outputs[k]):
      grid.paste(Image.fromarray(image), ((n + 1) * (width + _GAP), top))
  grid.save(path)


def generate_program(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Generates config.generate.num_images images per condition image; returns the settings written."""
  g = config.generate
  paths = condition_paths(config.image)
  mode, weight = guidance_mode(config.query), ip_scale(config.query, g.scale, g.auto_scale)
  if g.num_images < 1:
    raise ValueError(f'config.generate.num_images must be at least 1, got {g.num_images}.')
  conditions = [_read_image(path) for path in paths]
  start = time.perf_counter()
  pipe, source = load_instruct_pipeline(config)
  logging.info('IPAdapter-Instruct pipeline (%s) loaded in %.1f s; query %r: %s CFG, λ %.2f', source,
               time.perf_counter() - start, config.query, mode, weight)
  kwargs = dict(num_inference_steps=g.num_steps, guidance_scale=g.guidance_scale, instruct_scale=g.instruct_scale,
                image_scale=g.image_scale, scale=g.scale, auto_scale=g.auto_scale, height=g.height or None,
                width=g.width or None)
  outputs, seconds = [], []
  for k, (path, condition) in enumerate(zip(paths, conditions)):
    start = time.perf_counter()
    images = pipe.generate([condition] * g.num_images, config.query, config.prompt, config.negative_prompt,
                           seed=g.seed, **kwargs)
    outputs.append(np.round(np.asarray(images) * 255).astype(np.uint8))
    seconds.append(time.perf_counter() - start)
    logging.info('condition %d/%d (%s): %d image(s) %dx%d in %.1f s%s', k + 1, len(paths), path, g.num_images,
                 images.shape[2], images.shape[1], seconds[-1], ' (compilation included)' if k == 0 else '')
  out_dir = Path(workdir) / 'generate'
  files = [[str(out_dir / f'image_{k}_{n}.png') for n in range(g.num_images)] for k in range(len(paths))]
  settings = {'pipeline': source, 'images': [str(p) for p in paths], 'query': config.query, 'prompt': config.prompt,
              'negative_prompt': config.negative_prompt, 'guidance_mode': mode, 'ip_scale': weight,
              **g.to_dict(), 'outputs': files, 'grid': str(out_dir / 'grid.png'),
              'seconds_per_condition': seconds}
  if jax.process_index() == 0:
    os.makedirs(out_dir, exist_ok=True)
    for row, names in zip(outputs, files):
      for image, name in zip(row, names):
        Image.fromarray(image).save(name)
    write_grid(out_dir / 'grid.png', conditions, np.stack(outputs))
    (out_dir / 'settings.json').write_text(json.dumps(settings, indent=1))
  logging.info('wrote %d images and grid.png to %s', len(paths) * g.num_images, out_dir)
  return settings
