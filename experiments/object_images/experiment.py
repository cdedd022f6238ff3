"""Object Images: the programs launch.py runs for configs/object_images.py (see its docstring).

train / eval / compile are the trainer's over `make_experiment(config)` (config.stage picks the model: null2geo,
the geometry DiT); encode converts GLB folders (encode.py); sample and evaluate draw from a trained workdir
(sample.py).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from experiments.object_images import null2geo
from experiments.object_images.encode import encode_program
from experiments.object_images.sample import evaluate_program, sample_program
from mmjax.train import Experiment

PROGRAMS = {'encode': encode_program, 'sample': sample_program, 'evaluate': evaluate_program}


def _check_stage(config: ml_collections.ConfigDict) -> None:
  if config.stage != 'null2geo':
    raise ValueError(f"config.stage={config.stage!r}: this experiment trains stage 'null2geo'")


def make_experiment(config: ml_collections.ConfigDict) -> Experiment:
  _check_stage(config)
  return null2geo.make_experiment(config)


def abstract_experiment(config: ml_collections.ConfigDict) -> tuple[Experiment, dict[str, jax.ShapeDtypeStruct]]:
  """The training experiment without data and the shapes of one global batch, for lowering the step ahead of time
  (mmjax.train.aot)."""
  _check_stage(config)
  b, s = config.batch_size, config.data.size
  batch = {'omage': jax.ShapeDtypeStruct((b, s, s, null2geo.GEOMETRY_CHANNELS), jnp.float32),
           'label': jax.ShapeDtypeStruct((b,), jnp.int32)}
  return null2geo.experiment(config, None), batch
