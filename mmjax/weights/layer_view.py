"""Scanned and unrolled layer layouts read from each other: a source's per-layer parameters (`layers_{i}/...`, HF
files, unrolled workdirs) seen stacked (`layers/...` [L, ...], what `nn.scan` keeps), or stacked ones seen per
layer. `fill` wraps a source in a `LayerView` where the wanted tree and the source disagree, so an HF folder
initialises a scanned model, a scanned run's workdir converts to HF, and either resumes into the other layout.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

import jax
import numpy as np

from mmjax.models.decoder import unstack_layers
from mmjax.weights.key_map import ParamPath
from mmjax.weights.source import Source, place

STACKED = 'layers'
_PER_LAYER = re.compile(r'layers_(\d+)')


def _split(path: ParamPath) -> tuple[ParamPath, int | None, ParamPath] | None:
  """(group, layer index or None when stacked, rest) at the first layer segment of `path`, or None."""
  for k, segment in enumerate(path):
    if segment == STACKED:
      return path[:k], None, path[k + 1:]
    match = _PER_LAYER.fullmatch(segment)
    if match:
      return path[:k], int(match.group(1)), path[k + 1:]
  return None


def _groups(paths: Iterable[ParamPath]) -> tuple[set[ParamPath], dict[ParamPath, int]]:
  """(groups holding stacked layers, {group: number of per-layer layers})."""
  stacked, per_layer = set(), {}
  for path in paths:
    split = _split(path)
    if split is None:
      continue
    group, index, _ = split
    if index is None:
      stacked.add(group)
    else:
      per_layer[group] = max(per_layer.get(group, 0), index + 1)
  return stacked, per_layer


class LayerView(Source):
  """`inner` with the layers of `to_stack` groups seen stacked and those of `to_unstack` groups seen per layer
  (counts: the number of layers of each to_unstack group)."""

  def __init__(self, inner: Source, to_stack: Mapping[ParamPath, int], to_unstack: Mapping[ParamPath, int]):
    self.inner, self.where = inner, inner.where
    self.to_stack, self.to_unstack = dict(to_stack), dict(to_unstack)
    self._paths: dict[ParamPath, list[ParamPath]] = {}  # view path -> the inner paths it reads
    for path in inner.paths:
      split = _split(path)
      if split is not None and split[0] in self.to_stack and split[1] is not None:
        self._paths.setdefault(split[0] + (STACKED,) + split[2], []).append(path)
      elif split is not None and split[0] in self.to_unstack and split[1] is None:
        for i in range(self.to_unstack[split[0]]):
          self._paths[split[0] + (f'layers_{i}',) + split[2]] = [path]
      else:
        self._paths[path] = [path]

  @property
  def paths(self) -> frozenset[ParamPath]:
    return frozenset(self._paths)

  def name(self, path: ParamPath) -> str:
    return self.inner.name(self._paths[path][0])

  def _inner_wanted(self, wanted: Mapping[ParamPath, jax.ShapeDtypeStruct]
                    ) -> tuple[dict[ParamPath, jax.ShapeDtypeStruct], list[str]]:
    """What to read from `inner` for `wanted` (host arrays, no sharding), and the layer-count problems."""
    out, problems = {}, []
    for path, value in wanted.items():
      split = _split(path)
      if split is not None and split[0] in self.to_stack and split[1] is None:
        layers = self._paths[path]
        if len(layers) != value.shape[0]:
          problems.append(f'{"/".join(path)}: the model stacks {value.shape[0]} layers, '
                          f'{self.where} holds {len(layers)}')
        for inner in layers:
          out[inner] = jax.ShapeDtypeStruct(value.shape[1:], value.dtype)
      elif split is not None and split[0] in self.to_unstack and split[1] is not None:
        (inner,) = self._paths[path]
        out[inner] = jax.ShapeDtypeStruct((self.to_unstack[split[0]], *value.shape), value.dtype)
      else:
        out[path] = jax.ShapeDtypeStruct(value.shape, value.dtype)
    return out, problems

  def misshapen(self, wanted: Mapping[ParamPath, jax.ShapeDtypeStruct]) -> list[str]:
    inner_wanted, problems = self._inner_wanted(wanted)
    return problems + self.inner.misshapen(inner_wanted)

  def read(self, wanted: Mapping[ParamPath, jax.ShapeDtypeStruct]) -> dict[ParamPath, jax.Array]:
    inner_wanted, _ = self._inner_wanted(wanted)
    arrays = self.inner.read(inner_wanted)
    out = {}
    for path, value in wanted.items():
      split = _split(path)
      if split is not None and split[0] in self.to_stack and split[1] is None:
        layers = sorted(self._paths[path], key=lambda p: _split(p)[1])
        out[path] = place(np.stack([np.asarray(arrays[p]) for p in layers]), value)
      elif split is not None and split[0] in self.to_unstack and split[1] is not None:
        out[path] = place(np.asarray(arrays[self._paths[path][0]])[split[1]], value)
      else:
        out[path] = place(np.asarray(arrays[path]), value)
    return out


def layer_view(source: Source, wanted_paths: Iterable[ParamPath], prefix: ParamPath = ()) -> Source:
  """`source` as `wanted_paths` (relative to `prefix`) lay out their layers: a `LayerView` where a group is stacked
  on one side and per layer on the other, else `source` itself."""
  wanted_stacked, wanted_per_layer = _groups(wanted_paths)
  source_stacked, source_per_layer = _groups(source.paths)
  to_stack = {prefix + g: source_per_layer[prefix + g] for g in wanted_stacked
              if prefix + g in source_per_layer and prefix + g not in source_stacked}
  to_unstack = {prefix + g: n for g, n in wanted_per_layer.items()
                if prefix + g in source_stacked and prefix + g not in source_per_layer}
  return LayerView(source, to_stack, to_unstack) if to_stack or to_unstack else source


def per_layer(params: Mapping) -> dict:
  """A parameter tree with every stacked `layers` subtree ([L, ...], a scanned model) split into layers_{i}: the
  layout HF files and the key maps use."""
  out = {key: per_layer(value) if isinstance(value, Mapping) and key != STACKED else value
         for key, value in params.items()}
  return unstack_layers(out) if isinstance(out.get(STACKED), Mapping) else out
