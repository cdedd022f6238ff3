"""Textured objects: geo2mat's materials for given geometry, and the N2G2M pipeline (geometry, then materials).

--mode sample with stage=geo2mat: materials for the geometry of geo2mat.geometry (an .npz of omages [N, S, S, 4 or
  12] in [0, 1], key 'omages', optional 'labels', e.g. a null2geo run's samples/omages.npz) or of the first
  sample.num_samples shapes of config.data (data.split='val' for held-out shapes); the materials of data shapes are
  compared with theirs (summary 'material_mae'). Writes <workdir>/samples/.
--mode n2g2m: null2geo's geometry from n2g2m.null2geo_workdir (sample.*: steps, CFG, labels, seed), binarised as the
  loader binarises data (occupancy >= 0.5, background -1), then geo2mat's materials from n2g2m.geo2mat_workdir
  (geo2mat.*), then meshes. The model shapes are this config's model (DiT) and unet (U-Net) sections, so use the
  config (variant) both runs trained with. Writes <workdir>/n2g2m/.

Either output folder holds:
  omages.npz        omages float32 [N, S, S, 12] in [0, 1] (normals 0 where the geometry came without), labels [N]
  meshes/<i>.obj    with <i>.mtl, <i>_albedo.png, <i>_roughness.png, <i>_metalness.png, and <i>.glb (PBR); objects
                    whose omage decodes to no triangle are skipped and listed as empty
  preview.png       per object: position (RGB) | albedo, side by side
  render.png        the meshes flat-shaded in their albedo (render.py), blank cells for the empty ones
  summary.json      checkpoint steps, seeds, labels, sampling seconds, face counts, the empty objects
"""
from __future__ import annotations

import json
import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from experiments.object_images import geo2mat_stage, sample
from experiments.object_images.data import to_model
from experiments.object_images.meshing import export_glb, export_obj, omage_to_mesh
from experiments.object_images.null2geo import GEOMETRY_CHANNELS, make_source
from experiments.object_images.omage import ALBEDO, METALNESS, NORMAL, NUM_CHANNELS, ROUGHNESS
from experiments.object_images.render import write_render_grid
from mmjax.weights import read_workdir_params

MATERIAL_GROUPS = {'albedo': ALBEDO, 'metalness': slice(METALNESS, METALNESS + 1),
                   'roughness': slice(ROUGHNESS, ROUGHNESS + 1)}


def write_objects(out_dir: str, omages: np.ndarray, labels: np.ndarray, summary: dict[str, Any], *,
                  render_size: int) -> dict[str, Any]:
  """Writes omages [N, S, S, 12] in [0, 1], their meshes, preview.png, render.png and summary.json (`summary` plus
  labels, faces and empty) into out_dir; returns the summary written."""
  meshes = [omage_to_mesh(o) for o in omages]
  faces = [len(m.faces) for m in meshes]
  result = {**summary, 'labels': np.asarray(labels).tolist(), 'faces': faces,
            'empty': [i for i, f in enumerate(faces) if f == 0]}
  if jax.process_index() != 0:
    return result
  os.makedirs(os.path.join(out_dir, 'meshes'), exist_ok=True)
  np.savez(os.path.join(out_dir, 'omages.npz'), omages=omages, labels=np.asarray(labels, np.int32))
  sample.write_preview(os.path.join(out_dir, 'preview.png'), omages)
  for i, mesh in enumerate(meshes):
    if faces[i]:
      export_obj(mesh, os.path.join(out_dir, 'meshes', f'{i:03d}.obj'))
      export_glb(mesh, os.path.join(out_dir, 'meshes', f'{i:03d}.glb'))
  write_render_grid(os.path.join(out_dir, 'render.png'), meshes, size=render_size)
  with open(os.path.join(out_dir, 'summary.json'), 'w') as f:
    json.dump(result, f, indent=1)
  return result


def _materials(config: ml_collections.ConfigDict, params: Any, geometry: np.ndarray, labels: np.ndarray
               ) -> tuple[np.ndarray, float]:
  """(materials [N, S, S, 5] in [-1, 1] for geometry [N, S, S, 4] in [-1, 1], seconds)."""
  start = time.perf_counter()
  materials = geo2mat_stage.draw_materials(geo2mat_stage.make_material_sampler(config), params, geometry, labels,
                                           config.sample.seed, config.sample.batch_size)
  return materials, time.perf_counter() - start


def _geometry_file(config: ml_collections.ConfigDict) -> tuple[np.ndarray, np.ndarray]:
  """(omages [N, S, S, C] in [-1, 1] after the loader transform, labels [N]) of the npz geo2mat.geometry."""
  path = config.geo2mat.geometry
  if not os.path.isfile(path):
    raise FileNotFoundError(f'config.geo2mat.geometry: {path} does not exist (an .npz with omages [N, S, S, 4 or 12] '
                            "in [0, 1] under 'omages', e.g. a null2geo run's samples/omages.npz)")
  with np.load(path) as npz:
    if 'omages' not in npz:
      raise ValueError(f"config.geo2mat.geometry: {path} has no 'omages' array (keys: {sorted(npz.files)})")
    omages = npz['omages']
    labels = npz['labels'] if 'labels' in npz else None
  if omages.ndim != 4 or omages.shape[-1] not in (GEOMETRY_CHANNELS, NUM_CHANNELS):
    raise ValueError(f'config.geo2mat.geometry: {path} holds omages of shape {omages.shape}, expected [N, S, S, 4 '
                     'or 12]')
  if labels is None:
    labels = sample.sample_labels(config, len(omages))
  return to_model(omages), np.asarray(labels, np.int32)


def materials_program(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """geo2mat --mode sample: materials for given geometry, from the workdir's checkpoint sample.step (-1: latest)."""
  s = config.sample
  params, info = read_workdir_params(workdir, geo2mat_stage.abstract_params(config),
                                     step=None if s.step < 0 else s.step)
  if config.geo2mat.geometry:
    omages, labels = _geometry_file(config)
    truth = None
  else:
    source = make_source(config, channels=NUM_CHANNELS)
    examples = [source[i] for i in range(min(s.num_samples, len(source)))]
    omages = np.stack([e['omage'] for e in examples])
    labels = np.asarray([e['label'] for e in examples], np.int32)
    truth = sample.to_unit(omages)
  geometry = omages[..., :GEOMETRY_CHANNELS]
  normals = omages[..., NORMAL] if omages.shape[-1] == NUM_CHANNELS else None
  materials, seconds = _materials(config, params, geometry, labels)
  out = sample.to_unit(geo2mat_stage.assemble(geometry, materials, normals))
  summary = {'step': info.step, 'ema': info.ema, 'seed': s.seed, 'num_steps': config.geo2mat.num_steps,
             'geometry': config.geo2mat.geometry or f'data ({config.data.source}, split {config.data.split})',
             'sampling_seconds': seconds}
  if truth is not None:  # mean absolute error in [0, 1] units over the occupied pixels
    occupied = truth[..., 3] > 0.5
    summary['material_mae'] = {k: float(np.abs(out[..., c] - truth[..., c])[occupied].mean())
                               for k, c in MATERIAL_GROUPS.items()}
  out_dir = os.path.join(workdir, 'samples')
  result = write_objects(out_dir, out, labels, summary, render_size=config.n2g2m.render_size)
  logging.info('object_images geo2mat: materials for %d objects (step %d) in %.1f s', len(labels), info.step, seconds)
  return {**result, 'out_dir': out_dir}


def n2g2m_program(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """--mode n2g2m: sample.num_samples objects, geometry by null2geo then materials by geo2mat, meshed."""
  n, s = config.n2g2m, config.sample
  for key in ('null2geo_workdir', 'geo2mat_workdir'):
    if not n[key]:
      raise ValueError(f'config.n2g2m.{key} is empty: --mode n2g2m reads a trained {key.split("_")[0]} run '
                       f'(--config.n2g2m.{key}=DIR)')
  geo_params, geo_info = read_workdir_params(n.null2geo_workdir, sample.abstract_params(config),
                                             step=None if s.step < 0 else s.step)
  mat_params, mat_info = read_workdir_params(n.geo2mat_workdir, geo2mat_stage.abstract_params(config))
  labels = sample.sample_labels(config, s.num_samples)
  start = time.perf_counter()
  geometry = to_model(sample.to_unit(sample.draw(sample.make_sampler(config), geo_params, labels, s.seed,
                                                 s.batch_size)))
  geometry_seconds = time.perf_counter() - start
  materials, material_seconds = _materials(config, mat_params, geometry, labels)
  omages = sample.to_unit(geo2mat_stage.assemble(geometry, materials))
  summary = {'null2geo_step': geo_info.step, 'geo2mat_step': mat_info.step, 'geo2mat_ema': mat_info.ema,
             'seed': s.seed, 'null2geo_steps': s.num_steps, 'cfg_scale': s.cfg_scale,
             'geo2mat_steps': config.geo2mat.num_steps, 'geometry_seconds': geometry_seconds,
             'material_seconds': material_seconds}
  out_dir = os.path.join(workdir, 'n2g2m')
  result = write_objects(out_dir, omages, labels, summary, render_size=n.render_size)
  logging.info('object_images n2g2m: %d objects in %.1f + %.1f s, %d empty meshes', len(labels), geometry_seconds,
               material_seconds, len(result['empty']))
  return {**result, 'out_dir': out_dir}
