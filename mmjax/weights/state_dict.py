"""Flat torch state dicts (tensor name -> array) as weight sources: the released .pth files of torchvision, timm
and original repositories (VGGish, PVT), or the same tensors in a .safetensors file.

A .pth/.pt/.bin file is read with `torch.load(weights_only=True)`, which unpickles tensors and plain containers only
(no arbitrary code), and only when torch is installed; without torch, convert it to safetensors where torch is.
`load_state_dict` matches the tensors against a model through a KeyMap and `mmjax.weights.source.fill`, so missing,
unexpected and misshapen tensors are all named with the file.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

from mmjax.weights.key_map import KeyMap, ParamPath
from mmjax.weights.source import Source, WeightsFileError, fill, place, preview, unboxed

TORCH_SUFFIXES = ('.pth', '.pt', '.bin')
StateDict = Mapping[str, np.ndarray]


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """The tensors of a .safetensors file, or of a torch .pth/.pt/.bin state dict (weights_only; needs torch).

  A checkpoint that wraps its state dict ({'state_dict': ...} or {'model': ...}) is unwrapped.
  Raises FileNotFoundError for an absent file, WeightsFileError naming the file for anything unreadable.
  """
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f'{path}: no such weight file.')
  if path.suffix == '.safetensors':
    from safetensors import SafetensorError
    from safetensors.numpy import load_file
    try:
      return load_file(path)
    except SafetensorError as e:
      raise WeightsFileError(f'{path} is not a readable safetensors file: {e}.') from None
  if path.suffix not in TORCH_SUFFIXES:
    raise WeightsFileError(f'{path}: unknown weight file type; expected .safetensors or one of {TORCH_SUFFIXES}.')
  try:
    import torch
  except ImportError:
    raise WeightsFileError(f'{path} is a torch pickle and torch is not installed: install torch, or convert it to '
                           'safetensors where torch is.') from None
  try:
    state = torch.load(path, map_location='cpu', weights_only=True)
  except Exception as e:  # torch raises many types (UnpicklingError, RuntimeError, EOFError) for one bad file
    raise WeightsFileError(f'{path} could not be read with torch.load(weights_only=True): {e}') from None
  for wrapper in ('state_dict', 'model'):
    if isinstance(state, Mapping) and isinstance(state.get(wrapper), Mapping):
      state = state[wrapper]
  if not isinstance(state, Mapping):
    raise WeightsFileError(f'{path} holds a {type(state).__name__}, not a state dict of tensors.')
  not_tensors = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
  if not_tensors:
    raise WeightsFileError(f'{path}: entries {preview(not_tensors)} are not tensors.')
  return {k: v.detach().float().numpy() if v.is_floating_point() else v.numpy() for k, v in state.items()}


class StateDictSource(Source):
  """The tensors of a state dict mapped to flax paths by `key_map`; tensors the key map ignores are read past,
  those it neither maps nor ignores are unexpected."""

  def __init__(self, state: StateDict, key_map: KeyMap, where: str):
    self.where = where
    self._targets = key_map.targets
    self._state = state
    unknown = sorted(n for n in state if n not in key_map.targets and not key_map.is_ignored(n))
    if unknown:
      raise WeightsFileError(f'{where}: unexpected tensors {preview(unknown)} (not in the key map).')
    self._names = {t.path: name for name, t in key_map.targets.items() if name in state}

  @property
  def paths(self) -> frozenset[ParamPath]:
    return frozenset(self._names)

  def name(self, path: ParamPath) -> str:
    return self._names[path]

  def misshapen(self, wanted: Mapping[ParamPath, jax.ShapeDtypeStruct]) -> list[str]:
    lines = []
    for path, value in wanted.items():
      name = self._names[path]
      need = self._targets[name].transform.hf_shape(tuple(value.shape))
      if tuple(self._state[name].shape) != need:
        lines.append(f'tensor {name} has shape {tuple(self._state[name].shape)}; the model needs {need}')
    return lines

  def read(self, wanted: Mapping[ParamPath, jax.ShapeDtypeStruct]) -> dict[ParamPath, jax.Array]:
    out = {}
    for path, value in wanted.items():
      name = self._names[path]
      array = self._targets[name].transform.to_flax(np.asarray(self._state[name]), tuple(value.shape))
      out[path] = place(array, value)
    return out


def load_state_dict(abstract: Any, state: StateDict, key_map: KeyMap, where: str = 'state dict') -> dict[str, Any]:
  """`abstract` (a tree of ShapeDtypeStructs or flax boxes of them, e.g. {'params': ..., 'batch_stats': ...})
  filled from `state` through `key_map`; WeightsMismatchError naming `where` and every mismatch."""
  wanted = flatten_dict(unboxed(abstract))
  return unflatten_dict(fill(StateDictSource(state, key_map, where), wanted))
