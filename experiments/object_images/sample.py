"""The null2geo sample and evaluate programs (launch.py --mode sample | evaluate) over a trained workdir.

Sampling is the official one: DDPMScheduler(squaredcos_cap_v2, T = 1000, learned_range, epsilon, clip_sample,
linspace spacing) with sample.num_steps = 250 respaced ancestral steps (guided-diffusion's space_timesteps), and
classifier-free guidance ε_u + s·(ε_c − ε_u) with s = sample.cfg_scale = 4 on all four ε channels (upstream DiT
guides 3 of 4); the variance channels come from the conditional branch. Labels cycle through sample.labels, or the
distinct classes of the training data. The checkpoints are only read; outputs go to <workdir>/samples/:

  omages.npz          omages float32 [N, 64, 64, 4] in [0, 1] (the stored convention), labels int32 [N]
  meshes/<i>.obj|glb  each sample's mesh (`meshing.omage_to_mesh`, no border wrap); empty meshes are skipped
  preview.png         one cell per sample: position as RGB | occupancy, side by side
  summary.json        step, seed, labels, sampling seconds, mesh face counts, the empty samples

--mode evaluate: for each step of eval.steps (the latest when empty) eval.num_samples samples are meshed and
compared with the first eval.num_ref training shapes (decoded from their omages, as a sample is) by
`metrics.p_fid_kid`; empty meshes are left out and counted. The PointNet++ is Point-E's (eval.pointnet) or, with
none offline, randomly initialised (eval.pointnet_seed; width eval.pointnet_width): its numbers only rank
checkpoints of one run. Result: <workdir>/samples/eval.json.
"""
from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import trimesh
from absl import logging
from PIL import Image

from experiments.object_images.data import NULL_LABEL
from experiments.object_images.meshing import export_glb, export_obj, omage_to_mesh
from experiments.object_images.metrics import p_fid_kid
from experiments.object_images.null2geo import (
  GEOMETRY_CHANNELS,
  init_inputs,
  make_model,
  make_source,
  source_labels,
)
from experiments.object_images.omage import ALBEDO, NUM_CHANNELS
from experiments.object_images.pointnet import POINT_E, PointNet2, PointNet2Config, load_pointnet
from mmjax.diffusion import Guidance, Scheduler, cfg, from_diffusers_config, sample
from mmjax.diffusion.class_conditional import make_denoise_fn
from mmjax.weights import read_workdir_params


def make_scheduler(config: ml_collections.ConfigDict) -> Scheduler:
  """diffusers' DDPMScheduler over config.diffusion with set_timesteps(sample.num_steps), linspace spacing."""
  d = config.diffusion
  return from_diffusers_config({
      '_class_name': 'DDPMScheduler', 'num_train_timesteps': d.num_train_timesteps, 'beta_schedule': d.beta_schedule,
      'beta_start': d.beta_start, 'beta_end': d.beta_end, 'prediction_type': d.prediction_type,
      'variance_type': 'learned_range' if config.model.learn_sigma else 'fixed_small',
      'clip_sample': config.sample.clip_sample, 'clip_sample_range': 1.0, 'timestep_spacing': 'linspace'},
      config.sample.num_steps)


def guidance(config: ml_collections.ConfigDict) -> Guidance:
  """CFG with sample.cfg_scale on all GEOMETRY_CHANNELS ε channels (the learned variance is not guided)."""
  return cfg(config.sample.cfg_scale, channels=GEOMETRY_CHANNELS)


def abstract_params(config: ml_collections.ConfigDict) -> Any:
  model = make_model(config)
  return nn.unbox(jax.eval_shape(model.init, jax.random.key(0), *init_inputs(config))['params'])


def make_sampler(config: ml_collections.ConfigDict) -> Callable[[Any, jax.Array, jax.Array], jax.Array]:
  """`sampler(params, labels int32 [sample.batch_size], key) -> float32 [batch, S, S, 4]` in [-1, 1], jitted once:
  the noise and the per-step noise both come from `key`."""
  scheduler, g = make_scheduler(config), guidance(config)
  channels = 2 * GEOMETRY_CHANNELS if config.model.learn_sigma else GEOMETRY_CHANNELS
  denoise_fn = make_denoise_fn(make_model(config), channels)
  shape = (config.sample.batch_size, config.data.size, config.data.size, GEOMETRY_CHANNELS)

  @jax.jit
  def sampler(params, labels, key):
    noise_key, step_key = jax.random.split(key)
    noise = jax.random.normal(noise_key, shape, jnp.float32)
    cond = jnp.stack([jnp.full_like(labels, NULL_LABEL), labels])  # (unconditional, conditional)
    return jnp.clip(sample(denoise_fn=denoise_fn, params=params, scheduler=scheduler, noise=noise, cond=cond,
                           guidance=g, rng=step_key), -1.0, 1.0)
  return sampler


def draw(sampler: Callable, params: Any, labels: np.ndarray, seed: int, batch: int) -> np.ndarray:
  """Samples float32 [N, S, S, 4] in [-1, 1] for labels int [N], `batch` (the sampler's) at a time; batch b starts
  from fold_in(key(seed), b), so a sample depends on its position, not on N."""
  out = []
  for b, start in enumerate(range(0, len(labels), batch)):
    chunk = np.asarray(labels[start:start + batch], np.int32)
    padded = np.concatenate([chunk, np.full(batch - len(chunk), chunk[-1], np.int32)])
    key = jax.random.fold_in(jax.random.key(seed), b)
    out.append(np.asarray(sampler(params, jnp.asarray(padded), key))[:len(chunk)])
  return np.concatenate(out)


def to_unit(omages: np.ndarray) -> np.ndarray:
  """Model space [-1, 1] -> the stored [0, 1] that `meshing.omage_to_mesh` reads."""
  return np.clip((np.asarray(omages, np.float32) + 1) / 2, 0.0, 1.0)


def write_preview(path: str, omages: np.ndarray, cols: int = 8, zoom: int = 2) -> None:
  """omages [N, S, S, 4 or 12] in [0, 1] as one RGB PNG: per sample the position (RGB) and, side by side, the
  occupancy (4 channels) or the albedo (12), cols samples per row, a 2-pixel gap between cells."""
  n, s = len(omages), omages.shape[1]
  right = omages[..., ALBEDO] if omages.shape[-1] == NUM_CHANNELS else np.repeat(omages[..., 3:4], 3, axis=-1)
  cells = np.concatenate([omages[..., :3], right], axis=2)  # [N, S, 2S, 3]
  cells = np.where(omages[..., 3:4].repeat(2, axis=2) > 0.5, cells, 0.0)  # background black in both halves
  rows = -(-n // cols)
  canvas = np.full((rows * (s + 2) - 2, min(n, cols) * (2 * s + 2) - 2, 3), 1.0, np.float32)
  for k, cell in enumerate(cells):
    r, c = divmod(k, cols)
    canvas[r * (s + 2):r * (s + 2) + s, c * (2 * s + 2):c * (2 * s + 2) + 2 * s] = cell
  image = Image.fromarray(np.round(canvas * 255).astype(np.uint8))
  image.resize((canvas.shape[1] * zoom, canvas.shape[0] * zoom), Image.NEAREST).save(path)


def sample_labels(config: ml_collections.ConfigDict, count: int, source: Any = None) -> np.ndarray:
  """int32 [count]: sample.labels cycled, or the distinct labels of the training data (`source`) cycled."""
  classes = list(config.sample.labels) or sorted(set(source_labels(source if source is not None
                                                                   else make_source(config))))
  bad = [c for c in classes if not 0 <= c <= NULL_LABEL]
  if bad:
    raise ValueError(f'config.sample.labels {bad} are not ABO labels in [0, {NULL_LABEL}]')
  return np.resize(np.asarray(classes, np.int32), count)


def _read_params(config: ml_collections.ConfigDict, workdir: str, step: int | None) -> tuple[Any, int]:
  params, info = read_workdir_params(workdir, abstract_params(config), step=step)
  return params, info.step


def sample_program(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Samples, meshes and a preview of the workdir's checkpoint sample.step (-1: the latest)."""
  s = config.sample
  params, step = _read_params(config, workdir, None if s.step < 0 else s.step)
  labels = sample_labels(config, s.num_samples)
  start = time.perf_counter()
  omages = to_unit(draw(make_sampler(config), params, labels, s.seed, s.batch_size))
  seconds = time.perf_counter() - start
  out_dir = os.path.join(workdir, 'samples')
  faces, empty = [], []
  if jax.process_index() == 0:
    os.makedirs(os.path.join(out_dir, 'meshes'), exist_ok=True)
    np.savez(os.path.join(out_dir, 'omages.npz'), omages=omages, labels=labels)
    write_preview(os.path.join(out_dir, 'preview.png'), omages)
    for i, omage in enumerate(omages):
      mesh = omage_to_mesh(omage)
      faces.append(len(mesh.faces))
      if len(mesh.faces) == 0:
        empty.append(i)
        continue
      export_obj(mesh, os.path.join(out_dir, 'meshes', f'{i:03d}.obj'))
      export_glb(mesh, os.path.join(out_dir, 'meshes', f'{i:03d}.glb'))
  result = {'step': step, 'seed': s.seed, 'num_steps': s.num_steps, 'cfg_scale': s.cfg_scale,
            'labels': labels.tolist(), 'faces': faces, 'empty': empty, 'sampling_seconds': seconds}
  if jax.process_index() == 0:
    with open(os.path.join(out_dir, 'summary.json'), 'w') as f:
      json.dump(result, f, indent=1)
  logging.info('object_images null2geo: %d samples of step %d in %.1f s (compilation included), %d empty meshes',
               len(labels), step, seconds, len(empty))
  return {**result, 'out_dir': out_dir}


def pointnet_variables(config: ml_collections.ConfigDict) -> tuple[dict, PointNet2Config]:
  """(variables, config) of the p-FID network: Point-E's weights from eval.pointnet, else a random init."""
  e = config.eval
  if e.pointnet:
    if e.pointnet_width != POINT_E.width:
      raise ValueError(f'config.eval.pointnet_width={e.pointnet_width}: Point-E\'s weights ({e.pointnet}) have '
                       f'width {POINT_E.width}')
    return load_pointnet(e.pointnet), POINT_E
  net = PointNet2Config(width=e.pointnet_width)
  variables = PointNet2(net).init(jax.random.key(e.pointnet_seed), jnp.zeros((1, e.num_points, 3)),
                                  jnp.zeros((1,), jnp.int32))
  return nn.unbox(variables), net


def meshes_of(omages: np.ndarray) -> tuple[list[trimesh.Trimesh], int]:
  """(the non-empty meshes of omages [N, S, S, 4] in [0, 1], the number of empty ones)."""
  meshes = [omage_to_mesh(o) for o in omages]
  kept = [m for m in meshes if len(m.faces) and m.area > 0]
  return kept, len(meshes) - len(kept)


def evaluate_program(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """p-FID / p-KID of each step of eval.steps (the latest when empty) against the training shapes."""
  e = config.eval
  source = make_source(config)
  count = len(source) if e.num_ref <= 0 else min(e.num_ref, len(source))
  ref, ref_empty = meshes_of(to_unit(np.stack([source[i]['omage'] for i in range(count)])))
  labels = sample_labels(config, e.num_samples, source)
  variables, net = pointnet_variables(config)
  sampler = make_sampler(config)
  results = []
  for step in list(e.steps) or [None]:
    params, got = _read_params(config, workdir, step)
    gen, empty = meshes_of(to_unit(draw(sampler, params, labels, e.seed, config.sample.batch_size)))
    if len(gen) < 2:
      results.append({'step': got, 'p_fid': None, 'num_empty': empty, 'why': 'fewer than 2 non-empty meshes'})
      continue
    scores = p_fid_kid(gen, ref, variables, config=net, num_points=e.num_points, seed=e.seed)
    results.append({'step': got, **scores, 'num_empty': empty})
    logging.info('object_images null2geo step %d: p-FID %.4g, p-KID x1e3 %.4g (%d empty meshes)', got,
                 scores['p_fid'], scores['p_kid_x1e3'], empty)
  out = {'results': results, 'num_ref_empty': ref_empty, 'pointnet': e.pointnet or
         f'random init (seed {e.pointnet_seed}, width {e.pointnet_width})', 'sample_seed': e.seed}
  if jax.process_index() == 0:
    os.makedirs(os.path.join(workdir, 'samples'), exist_ok=True)
    with open(os.path.join(workdir, 'samples', 'eval.json'), 'w') as f:
      json.dump(out, f, indent=1)
  return out
