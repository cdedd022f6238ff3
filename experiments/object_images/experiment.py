"""Object Images: the programs launch.py runs for configs/object_images.py (see its docstring).

train / eval / compile are the trainer's over `make_experiment(config)`, whose model config.stage picks: null2geo
(the geometry DiT, null2geo.py) or geo2mat (the material U-Net, geo2mat_stage.py). encode converts GLB folders
(encode.py); sample draws from a trained workdir: geometry for null2geo (sample.py), materials for given geometry for
geo2mat (n2g2m.py); evaluate scores null2geo's samples (p-FID / p-KID); n2g2m chains two trained runs into textured
meshes (n2g2m.py).
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from experiments.object_images import geo2mat_stage, null2geo
from experiments.object_images.encode import encode_program
from experiments.object_images.n2g2m import materials_program, n2g2m_program
from experiments.object_images.sample import evaluate_program, sample_program
from mmjax.train import Experiment


def _check_stage(config: ml_collections.ConfigDict) -> None:
  if config.stage not in ('null2geo', 'geo2mat'):
    raise ValueError(f"config.stage={config.stage!r}: this experiment trains stage 'null2geo' or 'geo2mat'")


def sample_stage(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """--mode sample: null2geo's geometry (sample.py) or geo2mat's materials for given geometry (n2g2m.py)."""
  _check_stage(config)
  return (materials_program if config.stage == 'geo2mat' else sample_program)(config, workdir)


def evaluate_stage(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """--mode evaluate: p-FID / p-KID of a null2geo run (the paper scores geometry only)."""
  if config.stage != 'null2geo':
    raise ValueError(f"config.stage={config.stage!r}: --mode evaluate scores a null2geo run's geometry (p-FID / "
                     'p-KID on uncoloured point clouds); run it with stage=null2geo')
  return evaluate_program(config, workdir)


PROGRAMS = {'encode': encode_program, 'sample': sample_stage, 'evaluate': evaluate_stage, 'n2g2m': n2g2m_program}


def make_experiment(config: ml_collections.ConfigDict) -> Experiment:
  _check_stage(config)
  return (geo2mat_stage if config.stage == 'geo2mat' else null2geo).make_experiment(config)


def abstract_experiment(config: ml_collections.ConfigDict) -> tuple[Experiment, dict[str, jax.ShapeDtypeStruct]]:
  """The training experiment without data and the shapes of one global batch, for lowering the step ahead of time
  (mmjax.train.aot)."""
  _check_stage(config)
  if config.stage == 'geo2mat':
    return geo2mat_stage.experiment(config, None), geo2mat_stage.abstract_batch(config)
  b, s = config.batch_size, config.data.size
  batch = {'omage': jax.ShapeDtypeStruct((b, s, s, null2geo.GEOMETRY_CHANNELS), jnp.float32),
           'label': jax.ShapeDtypeStruct((b,), jnp.int32)}
  return null2geo.experiment(config, None), batch
