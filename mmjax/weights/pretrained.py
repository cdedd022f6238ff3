"""`from_pretrained` / `save_pretrained`: a local HF model directory <-> (flax module, params, config).

Supported model types are those in `registry.MODEL_SPECS` (and diffusers classes in `registry.DIFFUSERS_SPECS`).
Import streams tensors one at a time: each is converted to the flax layout and dtype and placed on its target
sharding before the next is read.
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
from jax.sharding import Mesh
from jax.typing import DTypeLike

from mmjax.weights.assets import copy_assets, with_special_tokens
from mmjax.weights.key_map import Transform
from mmjax.weights.layer_view import per_layer
from mmjax.weights.registry import spec_of
from mmjax.weights.safetensors_io import DIFFUSERS_BASENAME, HF_BASENAME, nbytes, write_tensors
from mmjax.weights.safetensors_source import folder_source, read_config
from mmjax.weights.source import fill, preview, unboxed

# Logical axis -> mesh axis (or axes, or None), as a mapping or as flax's sequence of pairs.
Rules = Mapping[str, Any] | Sequence[tuple[str, Any]]


def from_pretrained(path: str | os.PathLike, dtype: DTypeLike = jnp.float32, *, mesh: Mesh | None = None,
                    rules: Rules | None = None) -> tuple[nn.Module, dict[str, Any], Any]:
  """Loads an HF directory (config.json + model.safetensors or a sharded index; or a diffusers directory).

  Args:
    path: the directory.
    dtype: parameter dtype, also the module's compute dtype (`module.clone(dtype=...)` changes the latter).
    mesh: when given, each parameter is placed as the trainer places it: the NamedSharding its logical axis
      names map to under `rules` (None: the rules of an enclosing `nn.logical_axis_rules` context, else
      mmjax.train.sharding.DEFAULT_RULES; mesh axes the mesh lacks are dropped), replicated over any mesh axis
      that does not divide its dimension. Otherwise on the default device.

  Returns:
    (module, params, config): `module.apply({'params': params}, ...)` runs the model.

  Raises:
    FileNotFoundError: no config.json, no safetensors weights (pickle-only directories included), or a shard the
      index lists is absent.
    WeightsFileError (a ValueError): a config.json, index or weight file that cannot be read (not JSON, empty,
      truncated, not safetensors, a pickle, an index that disagrees with its shards), named with its shard.
    ValueError: unsupported model_type or config; missing, unexpected or misshapen tensors (all named).
  """
  if rules is not None and mesh is None:
    raise ValueError('rules place parameters on a mesh; pass mesh as well.')
  source, spec, config = folder_source(Path(path))
  module = spec.build(config, dtype)
  boxed = jax.eval_shape(module.init, jax.random.key(0), *spec.example_inputs(config))['params']
  abstract = unboxed(boxed)
  if mesh is not None:
    abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract,
                            _shardings(boxed, mesh, rules))
  return module, unflatten_dict(fill(source, flatten_dict(abstract))), config


def save_pretrained(path: str | os.PathLike, module_or_config: nn.Module | Any, params: Mapping[str, Any], *,
                    max_shard_size: int = 5 * 2 ** 30, assets_from: str | os.PathLike | None = None) -> None:
  """Writes config.json and the weights (in the params' dtype) as an HF directory that transformers loads.

  params: the tree `from_pretrained` returns or `init(...)['params']` (boxed or not; a {'params': ...} wrapper is
  accepted; a scanned model's stacked layers are written per layer). Above max_shard_size bytes the weights are
  split into shards with model.safetensors.index.json.
  Arrays must be fully addressable (one process); sharded arrays are gathered tensor by tensor.
  assets_from: a model folder (e.g. the one the params came from) whose tokenizer, processor, chat template and
  generation files are copied along, and whose config.json's bos/eos/pad token ids the written config.json keeps.
  """
  config = module_or_config.config if isinstance(module_or_config, nn.Module) else module_or_config
  key_map = spec_of(config).key_map(config)
  params = nn.unbox(params)
  if set(params) == {'params'}:
    params = params['params']
  flat = flatten_dict(per_layer(params))  # a scanned model's stacked layers as HF's per-layer tensors
  expected = {target.path for target in key_map.targets.values()}
  missing, extra = sorted(expected - set(flat)), sorted(set(flat) - expected)
  if missing or extra:
    raise ValueError(f'params do not match the {type(config).__name__}: missing {preview(map("/".join, missing))}; '
                     f'unexpected {preview(map("/".join, extra))}.')
  partial = ['/'.join(p) for p, v in flat.items() if isinstance(v, jax.Array) and not v.is_fully_addressable]
  if partial:
    raise ValueError(f'save_pretrained needs fully addressable arrays (one process); not: {preview(partial)}.')
  hf_config = config.to_hf_dict()
  if assets_from is not None and (Path(assets_from) / 'config.json').is_file():
    hf_config = with_special_tokens(hf_config, read_config(Path(assets_from)))
  directory = Path(path)
  directory.mkdir(parents=True, exist_ok=True)
  if assets_from is not None:
    copy_assets(assets_from, directory)
  (directory / 'config.json').write_text(json.dumps(hf_config, indent=2, sort_keys=True))
  entries = [(name, nbytes(flat[t.path].shape, flat[t.path].dtype),
              functools.partial(_to_hf, flat[t.path], t.transform)) for name, t in key_map.targets.items()]
  write_tensors(directory, entries, max_shard_size, DIFFUSERS_BASENAME if '_class_name' in hf_config else HF_BASENAME)


def _shardings(boxed: Any, mesh: Mesh, rules: Rules | None) -> Any:
  """The trainer's NamedShardings of a boxed parameter tree (mmjax.train.sharding.logical_shardings)."""
  # Imported here: mmjax.train imports this package (init_from), so a module-level import would be circular.
  from mmjax.train.sharding import DEFAULT_RULES, logical_shardings, rules_from_config  # noqa: PLC0415
  if rules is None:
    rules = nn.get_logical_axis_rules() or DEFAULT_RULES
  return logical_shardings(boxed, mesh, rules_from_config(dict(rules), mesh))


def _to_hf(value: jax.Array | np.ndarray, transform: Transform) -> np.ndarray:
  return transform.to_hf(np.asarray(jax.device_get(value)))
