"""Safetensors checkpoints as Sources: HF and diffusers folders (key map from their config.json) and files of a
named layout (key map from the target's shapes)."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax

from mmjax.weights.key_map import KeyMap, ModelSpec, ParamPath, Shapes, Target
from mmjax.weights.registry import layout, spec_for_config
from mmjax.weights.safetensors_io import WeightFiles, read_json_object, read_tensors, stored_tensors, weight_files
from mmjax.weights.source import Source, WeightsFileError, place, preview


class SafetensorsSource(Source):
  """The tensors of `weights` mapped to flax paths by `key_map`.

  The files must match the key map exactly (ignored names aside): a folder whose weights disagree with its own
  config.json is broken whatever the target, so that is checked here, naming the missing and unexpected tensors.
  """

  def __init__(self, weights: WeightFiles, key_map: KeyMap, where: str, described_by: str):
    self.where = where
    self._key_map = key_map
    stored = stored_tensors(weights)
    canonical: dict[str, str] = {}
    for name in stored:
      if key_map.canonical(name) in canonical:
        raise ValueError(f'{where}: tensors {canonical[key_map.canonical(name)]!r} and {name!r} are the same '
                         'parameter.')
      canonical[key_map.canonical(name)] = name
    missing = sorted(set(key_map.targets) - set(canonical))
    extra = sorted(canonical[n] for n in canonical if n not in key_map.targets and not key_map.is_ignored(n))
    if missing or extra:
      raise ValueError(f'{where}: the weights do not match {described_by}. Missing tensors: {preview(missing)}. '
                       f'Unexpected tensors: {preview(extra)}.')
    # flax path -> (canonical name, name in the file, where it is stored)
    self._tensors = {target.path: (name, canonical[name], stored[canonical[name]])
                     for name, target in key_map.targets.items()}
    self._sharded = len(weights.files) > 1

  @property
  def paths(self) -> frozenset[ParamPath]:
    return frozenset(self._tensors)

  def name(self, path: ParamPath) -> str:
    _, name, tensor = self._tensors[path]
    return f'{name} ({tensor.file.name})' if self._sharded else name

  def _target(self, path: ParamPath) -> Target:
    return self._key_map.targets[self._tensors[path][0]]

  def misshapen(self, wanted: Mapping[ParamPath, jax.ShapeDtypeStruct]) -> list[str]:
    lines = []
    for path, value in wanted.items():
      _, name, tensor = self._tensors[path]
      need = self._target(path).transform.hf_shape(tuple(value.shape))
      if tensor.shape != need:
        lines.append(f'tensor {name} has shape {tensor.shape}; the config needs {need}')
    return lines

  def read(self, wanted: Mapping[ParamPath, jax.ShapeDtypeStruct]) -> dict[ParamPath, jax.Array]:
    by_name = {self._tensors[path][1]: path for path in wanted}
    out = {}
    for name, array in read_tensors({name: self._tensors[path][2].file for name, path in by_name.items()}):
      path = by_name[name]
      out[path] = place(self._target(path).transform.to_flax(array, tuple(wanted[path].shape)), wanted[path])
    return out


def read_config(path: Path) -> dict[str, Any]:
  """The config.json of an HF or diffusers folder (`path`: the folder or the file itself).

  Raises FileNotFoundError naming the folder when it has none, WeightsFileError naming the file (and the line and
  column) when it is not a JSON object.
  """
  config_file = path if path.is_file() else path / 'config.json'
  if not config_file.is_file():
    raise FileNotFoundError(f'{config_file.parent} has no {config_file.name}.')
  return read_json_object(config_file)


def folder_source(directory: Path) -> tuple[SafetensorsSource, ModelSpec, Any]:
  """(source, spec, model config) of an HF (`model_type`) or diffusers (`_class_name`) folder."""
  hf_config = read_config(directory)
  config_file = directory / 'config.json'
  spec = spec_for_config(hf_config, str(config_file))
  try:
    config = spec.config_cls.from_hf_dict(hf_config)
  except ValueError as e:  # the config classes name the model, not the file
    raise WeightsFileError(f'{config_file}: {e}') from None
  weights = weight_files(directory)
  where = str(weights.files[0]) if len(weights.files) == 1 else f'{directory} ({len(weights.files)} shards)'
  return SafetensorsSource(weights, spec.key_map(config), where, 'config.json'), spec, config


def layout_source(path: Path, layout_name: str, shapes: Shapes) -> SafetensorsSource:
  """The source of a .safetensors file (or a folder's weight files) in the registered layout `layout_name`, whose
  key map follows the shapes (flax path -> shape, in the file's own path space) the target wants."""
  weights = WeightFiles([path]) if path.is_file() else weight_files(path)
  where = str(weights.files[0]) if len(weights.files) == 1 else f'{path} ({len(weights.files)} shards)'
  return SafetensorsSource(weights, layout(layout_name)(shapes), where, f'the {layout_name!r} layout of the model')
