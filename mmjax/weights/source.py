"""A checkpoint seen as parameters addressed by flax path, and `fill`: reading the part of it that a model needs.

Every kind of checkpoint (HF, diffusers and layout-named safetensors, orbax params checkpoints, trainer workdirs)
is a `Source`; `fill` is the one place that matches a source against the parameters a model wants, names what is
missing, unexpected or misshapen, and then reads each wanted array straight onto its target sharding.
"""
from __future__ import annotations

import abc
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mmjax.weights.key_map import ParamPath


class WeightsMismatchError(ValueError):
  """A checkpoint's parameters do not fit the model: the message names every difference and the checkpoint."""


class WeightsFileError(ValueError):
  """A weight file, index, config.json or orbax checkpoint that is present but cannot be read (truncated, empty,
  not JSON, not safetensors, a pickle, an index that disagrees with its shards): the message names the file (and
  shard) and the problem. Absent files are FileNotFoundError."""


class Source(abc.ABC):
  """Parameters of one checkpoint by flax path (relative to the checkpoint model's root).

  where: the file or directory that error messages name.
  """
  where: str

  @property
  @abc.abstractmethod
  def paths(self) -> frozenset[ParamPath]:
    """Every parameter the checkpoint holds."""

  def name(self, path: ParamPath) -> str:
    """How an error names the stored parameter at `path` (e.g. its tensor name in the file)."""
    return '/'.join(path)

  @abc.abstractmethod
  def misshapen(self, wanted: Mapping[ParamPath, jax.ShapeDtypeStruct]) -> list[str]:
    """One line per parameter of `wanted` (all in `paths`) whose stored shape does not give the wanted one."""

  @abc.abstractmethod
  def read(self, wanted: Mapping[ParamPath, jax.ShapeDtypeStruct]) -> dict[ParamPath, jax.Array]:
    """The arrays at `wanted`'s paths in its dtypes, placed on its shardings (the default device where None)."""


def fill(source: Source, wanted: Mapping[ParamPath, jax.ShapeDtypeStruct], *, prefix: ParamPath = (),
         skip: Sequence[str] = (), exact: bool = True) -> dict[ParamPath, jax.Array]:
  """Reads `wanted` (target path -> shape, dtype, sharding) from the source's parameters under `prefix`.

  prefix: the part of the source to read, e.g. ('language_model',) of a LLaVA checkpoint; source parameters
    outside it are not read.
  skip: regexes (full match on '/'-joined paths relative to prefix) of source parameters to read past, e.g.
    'head/.*' when a tower is loaded without its pooling head.
  exact: a source parameter under prefix that `wanted` lacks (and skip does not name) is an error; with
    exact=False `wanted` selects a part of the source.

  Layers stacked on one side and per layer on the other (a scanned model, an HF file) are read across
  (`layer_view`).

  Raises WeightsMismatchError naming, with the source, every missing, unexpected and misshapen parameter.
  """
  from mmjax.weights.layer_view import layer_view  # layer_view builds on this module's Source
  source = layer_view(source, wanted, prefix)
  under = {path[len(prefix):]: path for path in source.paths if path[:len(prefix)] == prefix and path != prefix}
  if prefix and not under:
    tops = sorted({path[0] for path in source.paths})
    raise WeightsMismatchError(f'{source.where} has no parameters under {"/".join(prefix)!r}; its top-level '
                               f'subtrees are {preview(tops)}.')
  patterns = [re.compile(pattern) for pattern in skip]
  skipped = {path for path in under if any(p.fullmatch('/'.join(path)) for p in patterns)}
  unused = [p.pattern for p in patterns if not any(p.fullmatch('/'.join(path)) for path in under)]
  if unused:
    raise WeightsMismatchError(f'{source.where}: skip patterns {unused} match no parameter (paths relative to '
                               f'{"/".join(prefix) or "the root"!r}).')
  missing = sorted('/'.join(path) for path in wanted if path not in under or path in skipped)
  unexpected = sorted(source.name(under[path]) for path in under if path not in wanted and path not in skipped)
  problems = []
  if missing:
    problems.append(f'missing {len(missing)} parameters: {preview(missing)}')
  if unexpected and exact:
    problems.append(f'unexpected {len(unexpected)} parameters: {preview(unexpected)} (read a part of the source '
                    'with a prefix, or past parameters with skip)')
  if not missing:
    problems += source.misshapen({under[path]: value for path, value in wanted.items()})
  if problems:
    part = f' under {"/".join(prefix)!r}' if prefix else ''
    raise WeightsMismatchError(f'{source.where}{part} does not fit the model: ' + '; '.join(problems) + '.')
  arrays = source.read({under[path]: value for path, value in wanted.items()})
  return {path: arrays[under[path]] for path in wanted}


def place(value: np.ndarray, target: jax.ShapeDtypeStruct) -> jax.Array:
  """A host array as target.dtype on target.sharding (the default device when it has none); each device receives
  only its slice, which also works when the devices span processes."""
  value = value.astype(np.dtype(target.dtype))
  if target.sharding is None:
    return jnp.asarray(value)
  return jax.make_array_from_callback(value.shape, target.sharding, lambda index: value[index])


def parse_path(path: str | ParamPath) -> ParamPath:
  """'vision_tower/layers_0' (or a tuple) -> ('vision_tower', 'layers_0'); '' -> ()."""
  if isinstance(path, tuple):
    return path
  return tuple(part for part in path.split('/') if part)


def preview(names: Iterable[Any], limit: int = 20) -> str:
  """'a, b, c' (at most `limit`, then 'and N more'), or 'none'."""
  names = list(names)
  shown = ', '.join(map(str, names[:limit])) or 'none'
  return shown + (f' and {len(names) - limit} more' if len(names) > limit else '')


def unboxed(tree: Any) -> Any:
  """`tree` with flax metadata boxes (LogicallyPartitioned) replaced by their values (no sharding constraint)."""
  return jax.tree.map(lambda b: b.value if isinstance(b, nn.meta.AxisMetadata) else b, tree,
                      is_leaf=lambda b: isinstance(b, nn.meta.AxisMetadata))
