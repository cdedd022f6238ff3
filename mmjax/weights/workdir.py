"""The one reader of orbax parameters: an mmjax params checkpoint (`params/` [+ config.json and tokenizer files])
and the latest parameters of a trainer workdir, the EMA where the run kept one.

Reading never writes: no CheckpointManager is made (it would create directories and clean up temporary ones);
the step's `state` item is opened with a PyTreeCheckpointer and only the wanted arrays are restored, each onto its
target sharding.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from flax.traverse_util import flatten_dict, unflatten_dict

from mmjax.weights.key_map import ParamPath
from mmjax.weights.safetensors_io import read_json_object
from mmjax.weights.source import Source, WeightsFileError, WeightsMismatchError, fill, preview

EMA_KEYS = ('ema', 'ema_params')  # where a train state keeps its EMA (the first present wins)
_FINISHED = '_METADATA'  # orbax writes it into an item directory before the step is renamed into place


class WorkdirStep(NamedTuple):
  """Which parameters a workdir read returned: the step, its `state` directory, and whether (part of) them came
  from the EMA."""
  step: int
  path: epath.Path
  ema: bool


class OrbaxSource(Source):
  """The arrays of an orbax PyTree checkpoint item, by flax path.

  locations: flax path -> path of the array in the checkpoint tree (a train state keeps its params under
  'params' and its EMA under 'ema' or 'ema_params'). `stored` gives every parameter's saved shape and dtype.
  """

  def __init__(self, directory: epath.Path, locations: Mapping[ParamPath, ParamPath],
               metadata: Mapping[ParamPath, Any], where: str):
    self.where = where
    self._directory = directory
    self._locations = dict(locations)
    self.stored = {path: jax.ShapeDtypeStruct(tuple(metadata[loc].shape), metadata[loc].dtype)
                   for path, loc in self._locations.items()}

  @property
  def paths(self) -> frozenset[ParamPath]:
    return frozenset(self._locations)

  def misshapen(self, wanted: Mapping[ParamPath, jax.ShapeDtypeStruct]) -> list[str]:
    return [f'{"/".join(path)}: {self.stored[path].shape} in the checkpoint vs {tuple(value.shape)} in the model'
            for path, value in wanted.items() if tuple(self.stored[path].shape) != tuple(value.shape)]

  def read(self, wanted: Mapping[ParamPath, jax.ShapeDtypeStruct]) -> dict[ParamPath, jax.Array]:
    default = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    item = unflatten_dict({self._locations[path]: jax.ShapeDtypeStruct(value.shape, value.dtype,
                                                                       sharding=value.sharding or default)
                           for path, value in wanted.items()})
    with ocp.PyTreeCheckpointer() as ckptr:
      restored = ckptr.restore(self._directory, args=ocp.args.PyTreeRestore(
          item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item), partial_restore=True))
    flat = flatten_dict(restored)
    return {path: flat[self._locations[path]] for path in wanted}


def as_path(path: str | os.PathLike) -> epath.Path:
  """An absolute path (orbax needs one); URLs such as gs://bucket/run are absolute already."""
  return epath.Path(path if '://' in str(path) else os.path.abspath(path))


def _metadata(directory: epath.Path) -> dict[str, Any]:
  """The stored tree (nested dicts of array metadata: shape, dtype) of the orbax PyTree item at `directory`.

  Raises FileNotFoundError when the directory is absent, WeightsFileError naming it when its _METADATA is missing
  or not orbax's JSON, or orbax cannot read its array metadata (deleted or damaged array files).
  """
  if not directory.is_dir():
    raise FileNotFoundError(f'{directory} does not exist or is not a directory.')
  if not (directory / _FINISHED).is_file():
    raise WeightsFileError(f'{directory} has no {_FINISHED}: the save that wrote it did not finish, or it was '
                           'copied in part.')
  if not isinstance(read_json_object(directory / _FINISHED).get('tree_metadata'), dict):
    raise WeightsFileError(f'{directory / _FINISHED} holds no orbax tree_metadata; the checkpoint is damaged.')
  with ocp.PyTreeCheckpointer() as ckptr:
    item = ckptr.metadata(directory).item_metadata
  if item is None:
    raise WeightsFileError(f'{directory}: orbax cannot read its array metadata (array files deleted or damaged).')
  return item.tree


def params_checkpoint_source(directory: str | os.PathLike) -> OrbaxSource:
  """The source of an mmjax params checkpoint (`directory/params`, as `launch.py --mode convert` writes)."""
  params = as_path(directory) / 'params'
  metadata = flatten_dict(_metadata(params))
  return OrbaxSource(params, {path: path for path in metadata}, metadata, str(params))


def finished_steps(workdir: str | os.PathLike) -> list[int]:
  """The steps under workdir/checkpoints whose train state was completely written, oldest first.

  Temporary directories of a save in progress (non-numeric names) and numeric directories without a finished
  `state` item (emptied or partly copied) are passed over, the latter with a warning naming them.
  """
  checkpoints = as_path(workdir) / 'checkpoints'
  if not checkpoints.is_dir():
    raise FileNotFoundError(f'{workdir} is not a trainer workdir: it has no checkpoints/ directory.')
  steps = []
  for entry in checkpoints.iterdir():
    if not entry.name.isdigit():
      continue
    if (entry / 'state' / _FINISHED).exists():
      steps.append(int(entry.name))
    else:
      logging.warning('Passing over %s: it holds no finished train state (no state/%s).', entry, _FINISHED)
  return sorted(steps)


def workdir_source(workdir: str | os.PathLike, step: int | None = None) -> tuple[OrbaxSource, WorkdirStep]:
  """The params of `step` (default: the latest finished one) of a trainer workdir, with the EMA in place of every
  parameter it averages."""
  steps = finished_steps(workdir)
  if step is None:
    if not steps:
      raise FileNotFoundError(f'{as_path(workdir) / "checkpoints"} holds no finished checkpoint.')
    step = steps[-1]
  elif step not in steps:
    raise FileNotFoundError(f'{as_path(workdir) / "checkpoints"} has no finished step {step}; it has '
                            f'{preview(steps)}.')
  state = as_path(workdir) / 'checkpoints' / str(step) / 'state'
  tree = _metadata(state)
  if 'params' not in tree:
    raise WeightsMismatchError(f'{state} holds no params (it has {preview(sorted(tree))}).')
  metadata = {('params', *path): meta for path, meta in flatten_dict(tree['params']).items()}
  locations = {path[1:]: path for path in metadata}
  ema_key = next((key for key in EMA_KEYS if key in tree), None)
  if ema_key is not None:
    ema = {path: meta for path, meta in flatten_dict(tree[ema_key]).items()}
    stray = sorted('/'.join(path) for path in ema if path not in locations)
    if stray:
      raise WeightsMismatchError(f'{state}: the EMA ({ema_key}) holds parameters the params do not: '
                                 f'{preview(stray)}.')
    for path, meta in ema.items():
      metadata[(ema_key, *path)] = meta
      locations[path] = (ema_key, *path)
  source = OrbaxSource(state, locations, metadata, f'{state} ({"EMA" if ema_key else "params"} of step {step})')
  return source, WorkdirStep(step, state, ema_key is not None)


def read_workdir_params(workdir: str | os.PathLike, abstract: Any = None, *,
                        step: int | None = None) -> tuple[dict[str, Any], WorkdirStep]:
  """The parameters of a trainer workdir's latest finished step (or `step`): the EMA where the run kept one.

  abstract: the model's parameter tree of jax.ShapeDtypeStruct (dtypes and shardings of the result; None
    sharding: the default device). Every parameter must be in the checkpoint with its shape, and the checkpoint
    must hold no other. None: every stored parameter as saved, on the default device.

  Returns (params, WorkdirStep). Raises FileNotFoundError without a finished step, WeightsMismatchError naming
  every missing, unexpected or misshapen parameter.
  """
  source, info = workdir_source(workdir, step)
  wanted = source.stored if abstract is None else flatten_dict(abstract)
  params = unflatten_dict(fill(source, wanted))
  logging.info('Read the %s of step %d of %s.', 'EMA' if info.ema else 'params', info.step, workdir)
  return params, info
