"""`from_pretrained` / `save_pretrained`: a local HF model directory <-> (flax module, params, config).

Supported HF model types are those in `registry.MODEL_SPECS`. Import streams tensors one at a time: each is
converted to the flax layout and dtype and placed on its target sharding before the next is read.
"""
import functools
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict
from jax.sharding import Mesh, Sharding
from jax.typing import DTypeLike

from mmjax.weights.key_map import KeyMap, Transform
from mmjax.weights.registry import MODEL_SPECS, model_type_of, spec_for_model_type
from mmjax.weights.safetensors_io import iter_tensors, nbytes, tensor_names, weight_files, write_tensors

# Logical axis -> mesh axis (or axes, or None), as a mapping or as flax's sequence of pairs.
Rules = Mapping[str, Any] | Sequence[tuple[str, Any]]
ParamPath = tuple[str, ...]


def from_pretrained(path: str | os.PathLike, dtype: DTypeLike = jnp.float32, *, mesh: Mesh | None = None,
                    rules: Rules | None = None) -> tuple[nn.Module, dict[str, Any], Any]:
  """Loads an HF directory (config.json + model.safetensors or a sharded index).

  Args:
    path: the directory.
    dtype: parameter dtype, also the module's compute dtype (`module.clone(dtype=...)` changes the latter).
    mesh: when given, each parameter is placed with the NamedSharding its logical axis names map to under
      `rules` (None: the rules of an enclosing `nn.logical_axis_rules` context); otherwise on the default device.

  Returns:
    (module, params, config): `module.apply({'params': params}, ...)` runs the model.

  Raises:
    FileNotFoundError: no config.json, or no safetensors weights (pickle-only directories included).
    ValueError: unsupported model_type or config; missing, unexpected or misshapen tensors (all named).
  """
  directory = Path(path)
  config_file = directory / 'config.json'
  if not config_file.is_file():
    raise FileNotFoundError(f'{directory} has no config.json.')
  if rules is not None and mesh is None:
    raise ValueError('rules place parameters on a mesh; pass mesh as well.')
  hf_config = json.loads(config_file.read_text())
  spec = spec_for_model_type(hf_config.get('model_type'), str(config_file))
  config = spec.config_cls.from_hf_dict(hf_config)
  module = spec.build(config, dtype)
  abstract = jax.eval_shape(module.init, jax.random.key(0), *spec.example_inputs(config))['params']
  shapes = flatten_dict(nn.unbox(abstract))
  shardings = {} if mesh is None else _shardings(abstract, mesh, rules)
  key_map = spec.key_map(config)
  _check_covers(key_map, set(shapes))
  files = weight_files(directory)
  _check_names(directory, key_map, tensor_names(files))
  flat = {}
  for name, array in iter_tensors(files):
    name = key_map.canonical(name)
    if key_map.is_ignored(name):
      continue
    target = key_map.targets[name]
    shape = shapes[target.path].shape
    if array.shape != target.transform.hf_shape(shape):
      raise ValueError(f'{directory}: tensor {name} has shape {array.shape}; the config needs '
                       f'{target.transform.hf_shape(shape)}.')
    flat[target.path] = _place(target.transform.to_flax(array, shape).astype(np.dtype(dtype)),
                               shardings.get(target.path))
  return module, unflatten_dict(flat), config


def save_pretrained(path: str | os.PathLike, module_or_config: nn.Module | Any, params: Mapping[str, Any], *,
                    max_shard_size: int = 5 * 2 ** 30) -> None:
  """Writes config.json and the weights (in the params' dtype) as an HF directory that transformers loads.

  params: the tree `from_pretrained` returns or `init(...)['params']` (boxed or not; a {'params': ...} wrapper is
  accepted). Above max_shard_size bytes the weights are split into shards with model.safetensors.index.json.
  Arrays must be fully addressable (one process); sharded arrays are gathered tensor by tensor.
  """
  config = module_or_config.config if isinstance(module_or_config, nn.Module) else module_or_config
  key_map = MODEL_SPECS[model_type_of(config)].key_map(config)
  params = nn.unbox(params)
  if set(params) == {'params'}:
    params = params['params']
  flat = flatten_dict(params)
  expected = {target.path for target in key_map.targets.values()}
  missing, extra = sorted(expected - set(flat)), sorted(set(flat) - expected)
  if missing or extra:
    raise ValueError(f'params do not match the {type(config).__name__}: missing {_preview(map("/".join, missing))}; '
                     f'unexpected {_preview(map("/".join, extra))}.')
  partial = ['/'.join(p) for p, v in flat.items() if isinstance(v, jax.Array) and not v.is_fully_addressable]
  if partial:
    raise ValueError(f'save_pretrained needs fully addressable arrays (one process); not: {_preview(partial)}.')
  directory = Path(path)
  directory.mkdir(parents=True, exist_ok=True)
  (directory / 'config.json').write_text(json.dumps(config.to_hf_dict(), indent=2, sort_keys=True))
  entries = [(name, nbytes(flat[t.path].shape, flat[t.path].dtype),
              functools.partial(_to_hf, flat[t.path], t.transform)) for name, t in key_map.targets.items()]
  write_tensors(directory, entries, max_shard_size)


def _shardings(abstract: Any, mesh: Mesh, rules: Rules | None) -> dict[ParamPath, Sharding]:
  """Flat {param path: NamedSharding} from the parameters' logical axis names."""
  if isinstance(rules, Mapping):
    rules = tuple(rules.items())
  return flatten_dict(nn.logical_to_mesh_sharding(nn.get_partition_spec(abstract), mesh, rules))


def _place(value: np.ndarray, sharding: Sharding | None) -> jax.Array:
  if sharding is None:
    return jnp.asarray(value)
  # Each device receives only its slice of the host array (this also works when devices span processes).
  return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])


def _to_hf(value: jax.Array | np.ndarray, transform: Transform) -> np.ndarray:
  return transform.to_hf(np.asarray(jax.device_get(value)))


def _check_covers(key_map: KeyMap, paths: set[ParamPath]) -> None:
  """The key map and the module must name the same parameters (a bug in this package otherwise)."""
  mapped = {target.path for target in key_map.targets.values()}
  if mapped != paths:
    raise RuntimeError(f'key map and module disagree: unmapped params {_preview(map("/".join, paths - mapped))}; '
                       f'mapped but absent {_preview(map("/".join, mapped - paths))}.')


def _check_names(directory: Path, key_map: KeyMap, found: Mapping[str, Path]) -> None:
  """ValueError naming every tensor the config needs but the files lack, and every unexpected one."""
  canonical: dict[str, str] = {}
  for name in found:
    if key_map.canonical(name) in canonical:
      raise ValueError(f'{directory}: tensors {canonical[key_map.canonical(name)]!r} and {name!r} are the same '
                       'parameter.')
    canonical[key_map.canonical(name)] = name
  missing = sorted(set(key_map.targets) - set(canonical))
  extra = sorted(canonical[n] for n in canonical if n not in key_map.targets and not key_map.is_ignored(n))
  if missing or extra:
    raise ValueError(f'{directory}: the weights do not match config.json. Missing tensors: {_preview(missing)}. '
                     f'Unexpected tensors: {_preview(extra)}.')


def _preview(names: Any, limit: int = 20) -> str:
  names = list(names)
  shown = ', '.join(names[:limit]) or 'none'
  return shown + (f' and {len(names) - limit} more' if len(names) > limit else '')
