"""Sharded generation: parameters by the training rules (tensor parallel), KV-cache rows over the data axes.

With a mesh, `prefill` (and so `generate`, `stream`, `beam_search`) places the parameters by their logical axis
names and a logical-to-mesh rule table (`mmjax.train.sharding.DEFAULT_RULES` by default: heads, kv_heads, mlp and
vocab over 'tensor', embed over 'fsdp'), and the cache with its rows over the rules' batch axes and its KV heads
over theirs (a `KVCache` names its own axes, `partition_specs`, in either layout). The jitted engine functions
then follow their inputs' shardings (the compiler propagates them through the decode loop). A dimension that a mesh
axis does not divide stays replicated over that axis, so one table serves every model size and batch bucket.
"""
import functools
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mmjax.generate.adapters import DecoderAdapter


def place_params(adapter: DecoderAdapter, params: Any, mesh: Mesh, rules: Mapping[str, Any] | None = None) -> Any:
  """params placed on the mesh by the logical axis names of the adapter's flax `module`."""
  return jax.device_put(params, _param_shardings(adapter, mesh, _rules(rules, mesh)))


def place_cache(cache: Any, mesh: Mesh, rules: Mapping[str, Any] | None = None) -> Any:
  """A cache placed on the mesh: rows over the batch axes and KV heads over the kv_heads axes, as a cache with
  `partition_specs(rows, kv_heads)` (a `KVCache`) names them; any other cache by its leaves' leading (row) axis."""
  from mmjax.train.sharding import fit_sharding
  table = dict(_rules(rules, mesh))
  if hasattr(cache, 'partition_specs'):
    specs = cache.partition_specs(table.get('batch'), table.get('kv_heads'))
  else:
    specs = jax.tree.map(lambda leaf: P(table.get('batch'), *[None] * (leaf.ndim - 1)), cache)

  def place(leaf: jax.Array, spec: P) -> jax.Array:
    return jax.device_put(leaf, fit_sharding(NamedSharding(mesh, spec), leaf.shape))

  return jax.tree.map(place, cache, specs)


def _rules(rules: Mapping[str, Any] | None, mesh: Mesh) -> tuple[tuple[str, Any], ...]:
  # Imported on use: mmjax.train's package imports the trainer and data pipelines (a second of import time).
  from mmjax.train.sharding import DEFAULT_RULES, rules_from_config
  return rules_from_config(DEFAULT_RULES if rules is None else rules, mesh)


@functools.lru_cache(maxsize=16)
def _param_shardings(adapter: DecoderAdapter, mesh: Mesh, rules: tuple[tuple[str, Any], ...]) -> Any:
  module = getattr(adapter, 'module', None)
  if module is None:
    raise ValueError(f'generation on a mesh shards parameters by the logical axis names of the adapter\'s flax '
                     f'`module`; {type(adapter).__name__} has none.')
  from mmjax.train.sharding import logical_shardings
  boxed = jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32)))['params']
  return logical_shardings(boxed, mesh, rules)
