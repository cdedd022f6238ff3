"""`initial_params`: a model's starting parameters composed from checkpoints, the rest initialised randomly.

init_from is a source (the whole tree) or a mapping {key: source} (a dict or ConfigDict):
  key: a '/'-joined subtree path ('vision_tower', 'language_model/layers_0'): the source's root (or its `prefix`)
    fills that subtree; or else a regex (full match on a parameter path or any of its ancestors' paths, e.g.
    '(vision_tower|language_model)' or '.*/bias'): the matched parameters are read from the same paths of the
    source (under its `prefix`), whose other parameters are not read.
  source: a path (see mmjax.weights.load), or a mapping {'source': path, 'prefix': str, 'layout': str,
    'skip': regex or list of regexes} (see `load_into`).
Keys that match nothing, and keys whose parameters overlap, are errors. On the command line a mapping is written
'key=source;key=source' (`parse_spec`; a string naming an existing path is always that one source).

The parameters no key covers come from the model's random init without computing the rest of it: the init is
jitted with only those leaves as outputs, so XLA drops every other draw and never allocates the full tree.

  init_from = {'vision_tower': {'source': SIGLIP_DIR, 'skip': 'head/.*'}, 'language_model': QWEN2_DIR}
"""
from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
from absl import logging
from flax.traverse_util import flatten_dict, unflatten_dict

from mmjax.weights.key_map import ParamPath
from mmjax.weights.load import open_source
from mmjax.weights.source import fill, parse_path, preview, unboxed

InitFrom = str | Mapping[str, Any] | None
_ENTRY_KEYS = ('source', 'prefix', 'layout', 'skip')


@dataclasses.dataclass(frozen=True)
class _Part:
  """One init_from entry resolved against the model: the parameters it fills and where they come from.

  node: the subtree the source's root fills (None for a regex key: the source is read at the same paths).
  """
  key: str
  source: str
  prefix: ParamPath
  layout: str | None
  skip: tuple[str, ...]
  node: ParamPath | None
  leaves: tuple[ParamPath, ...]

  def load(self, abstract: Mapping[ParamPath, jax.ShapeDtypeStruct]) -> dict[ParamPath, jax.Array]:
    at = self.node if self.node is not None else ()
    wanted = {path[len(at):]: abstract[path] for path in self.leaves}
    shapes = {self.prefix + path: tuple(value.shape) for path, value in wanted.items()}
    source = open_source(self.source, layout=self.layout, shapes=shapes)
    loaded = fill(source, wanted, prefix=self.prefix, skip=self.skip, exact=self.node is not None)
    logging.info('init_from[%r]: %d parameters from %s', self.key, len(loaded), source.where)
    return {at + path: value for path, value in loaded.items()}


def initial_params(init_from: InitFrom, abstract_params: Any, init_fn: Callable[[jax.Array], Any],
                   rng: jax.Array) -> dict[str, Any]:
  """The starting parameters of a model (see the module docstring).

  init_from: '' or None (everything from init_fn), a source (the whole tree), or a mapping {key: source}.
  abstract_params: the parameter tree of jax.ShapeDtypeStruct (or flax boxes of them), whose shardings the
    result is placed on (the default device where a sharding is None); e.g. the trainer's param shardings.
  init_fn: rng -> the model's (boxed) parameter tree; traced, and run only for the parameters no source fills.
  rng: its key.

  Raises ValueError for a key that matches nothing, overlapping keys or a malformed entry;
  WeightsMismatchError naming every missing, unexpected or misshapen tensor of a source.
  """
  abstract = flatten_dict(unboxed(abstract_params))
  parts = resolve(init_from, abstract)
  values: dict[ParamPath, jax.Array] = {}
  for part in parts:
    values.update(part.load(abstract))
  rest = [path for path in abstract if path not in values]
  if rest:
    if parts:
      logging.info('init_from: %d of %d parameters initialised randomly (%s)', len(rest), len(abstract),
                   preview(sorted({'/'.join(path[:2]) for path in rest}), 8))
    values.update({parse_path(name): value for name, value in partial_init(init_fn, abstract, rest)(rng).items()})
  return unflatten_dict({path: values[path] for path in abstract})


def partial_init(init_fn: Callable[[jax.Array], Any], abstract: Mapping[ParamPath, jax.ShapeDtypeStruct],
                 paths: Sequence[ParamPath]) -> jax.stages.Wrapped:
  """A jitted rng -> {'/'-joined path: value} for `paths` only, as init_fn computes them, placed on abstract's
  shardings (`.lower(rng).compile()` shows the program).

  One jitted program whose outputs are these leaves: the draws of the other parameters are dead code that XLA
  removes, so neither their values nor the full tree are ever computed or allocated.
  """
  paths = list(paths)
  names = ['/'.join(path) for path in paths]
  default = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  shardings = {name: abstract[path].sharding or default for name, path in zip(names, paths)}

  def init(rng):
    flat = flatten_dict(nn.meta.unbox(init_fn(rng)))
    absent = [name for name, path in zip(names, paths) if path not in flat]
    if absent:
      raise ValueError(f'init_fn does not create the parameters {preview(absent)}.')
    return {name: flat[path] for name, path in zip(names, paths)}

  return jax.jit(init, out_shardings=shardings)


def resolve(init_from: InitFrom, abstract: Mapping[ParamPath, Any]) -> list[_Part]:
  """The entries of init_from matched against the model's parameter paths (see the module docstring)."""
  if not init_from:
    return []
  if isinstance(init_from, str):
    init_from = parse_spec(init_from)
  if isinstance(init_from, str) or not hasattr(init_from, 'items'):
    return [_Part('', str(init_from), (), None, (), (), tuple(abstract))]
  nodes = {path[:k] for path in abstract for k in range(1, len(path) + 1)}
  parts = []
  for key, value in init_from.items():
    source, prefix, layout, skip = _entry(key, value)
    node = parse_path(key)
    if node in nodes:
      leaves = tuple(path for path in abstract if path[:len(node)] == node)
    else:
      node = None
      try:
        pattern = re.compile(key)
      except re.error as e:
        raise ValueError(f'config.init_from key {key!r} is neither a parameter subtree nor a regex: {e}.') from None
      leaves = tuple(path for path in abstract
                     if any(pattern.fullmatch('/'.join(path[:k])) for k in range(1, len(path) + 1)))
      if not leaves:
        tops = sorted({path[0] for path in abstract})
        raise ValueError(f'config.init_from key {key!r} matches no parameter (subtrees at the top: '
                         f'{preview(tops)}).')
    parts.append(_Part(key, source, prefix, layout, skip, node, leaves))
  for i, a in enumerate(parts):
    for b in parts[i + 1:]:
      shared = sorted(set(a.leaves) & set(b.leaves))
      if shared:
        raise ValueError(f'config.init_from keys {a.key!r} and {b.key!r} overlap: both fill {len(shared)} '
                         f'parameters, e.g. {"/".join(shared[0])}.')
  return parts


def parse_spec(text: str) -> str | dict[str, str]:
  """'key=source;key=source' as {key: source}; any other string (a path, a URL, an existing file or folder whose
  name holds '=') as itself."""
  if '=' not in text or os.path.exists(text):
    return text
  out = {}
  for item in filter(None, (part.strip() for part in text.split(';'))):
    key, sep, source = item.partition('=')
    if not sep or not key.strip() or not source.strip():
      raise ValueError(f'config.init_from {text!r}: entry {item!r} is not key=source (the form is '
                       "'subtree=path;subtree=path', or one path).")
    out[key.strip()] = source.strip()
  return out


def _entry(key: str, value: Any) -> tuple[str, ParamPath, str | None, tuple[str, ...]]:
  """(source, prefix, layout, skip) of a mapping value: a path, or {'source', 'prefix', 'layout', 'skip'}."""
  if not hasattr(value, 'items'):
    return str(value), (), None, ()
  entry = dict(value.items())
  unknown = sorted(set(entry) - set(_ENTRY_KEYS))
  if unknown or not entry.get('source'):
    raise ValueError(f'config.init_from[{key!r}] must be a path or a mapping with a source and optionally '
                     f'prefix, layout and skip; got keys {sorted(entry)}.')
  skip = entry.get('skip') or ()
  skip = (skip,) if isinstance(skip, str) else tuple(skip)
  return str(entry['source']), parse_path(entry.get('prefix') or ''), entry.get('layout') or None, skip
