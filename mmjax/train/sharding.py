"""Logical-to-mesh rules and the shardings of a train state.

Every parameter carries logical axis names (see mmjax.nn); one table maps them to mesh
axes. The table lives in the config (`config.sharding_rules`), so FSDP and tensor
parallelism are a config change.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

# logical axis -> mesh axis (or tuple of mesh axes, or None for replicated).
DEFAULT_RULES: dict[str, Any] = {
    'batch': ('data', 'fsdp'),
    'length': None,
    'embed': 'fsdp',
    'mlp': 'tensor',
    'heads': 'tensor',
    'kv_heads': 'tensor',
    'head_dim': None,
    'vocab': 'tensor',
    'conv_h': None,
    'conv_w': None,
    'conv_in': None,
    'norm': None,
}


def rules_from_config(rules: Mapping[str, Any], mesh: Mesh) -> tuple[tuple[str, Any], ...]:
  """Turns the config table into flax's rule tuples, dropping mesh axes the mesh lacks."""
  out = []
  for logical, target in rules.items():
    axes = (target,) if isinstance(target, str) else tuple(target or ())
    axes = tuple(a for a in axes if a in mesh.axis_names)
    out.append((logical, axes if len(axes) > 1 else (axes[0] if axes else None)))
  return tuple(out)


def logical_shardings(boxed_tree: Any, mesh: Mesh, rules) -> Any:
  """NamedShardings for a tree whose leaves may be flax `LogicallyPartitioned` boxes.

  Unboxed leaves are replicated. A dimension whose size a rule's mesh axes do not divide is
  replicated over the axes that do not fit (e.g. 14 heads over tensor=4), so one rule table serves
  every model size.
  """
  specs = nn.get_partition_spec(boxed_tree)
  shardings = nn.logical_to_mesh_sharding(specs, mesh, rules)
  values = jax.tree.map(lambda b: b.value if isinstance(b, nn.meta.AxisMetadata) else b, boxed_tree,
                        is_leaf=lambda b: isinstance(b, nn.meta.AxisMetadata))  # unbox() would constrain
  return jax.tree.map(lambda s, v: fit_sharding(s, getattr(v, 'shape', ())), shardings, values,
                      is_leaf=lambda x: isinstance(x, NamedSharding))


def fit_sharding(sharding: NamedSharding, shape: tuple[int, ...]) -> NamedSharding:
  """`sharding` without the mesh axes that do not divide their dimension of `shape` (those are replicated)."""
  sizes = dict(zip(sharding.mesh.axis_names, sharding.mesh.axis_sizes))
  spec, changed = [], False
  for size, entry in zip(shape, sharding.spec):
    axes = (entry,) if isinstance(entry, str) else tuple(entry or ())
    kept, ways = [], 1
    for axis in axes:
      if size % (ways * sizes[axis]) == 0:
        kept.append(axis)
        ways *= sizes[axis]
    changed |= len(kept) < len(axes)
    spec.append(tuple(kept) if len(kept) > 1 else (kept[0] if kept else None))
  if not changed:
    return sharding
  return NamedSharding(sharding.mesh, P(*spec, *sharding.spec[len(spec):]))


def batch_sharding(mesh: Mesh, rules) -> NamedSharding:
  """Sharding of the leading (batch) dimension of input batches."""
  axes = dict(rules).get('batch')
  return NamedSharding(mesh, P(axes))


def partition_specs_json(shardings: Any) -> str:
  """A stable JSON of `{param_path: PartitionSpec}` for golden-file tests."""
  flat = jax.tree_util.tree_flatten_with_path(shardings, is_leaf=lambda x: isinstance(x, NamedSharding))[0]
  table = {}
  for path, s in flat:
    key = '/'.join(_key_name(k) for k in path)
    table[key] = [list(a) if isinstance(a, tuple) else a for a in s.spec]
  return json.dumps(table, indent=1, sort_keys=True)


def _key_name(k) -> str:
  for attr in ('key', 'name', 'idx'):
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k)
