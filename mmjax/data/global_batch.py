"""Assemble process-local numpy batches into global, sharded jax.Arrays."""
from collections.abc import Mapping

import jax
import numpy as np


def make_global_batch(
    local_batch: Mapping[str, np.ndarray],
    sharding: jax.sharding.Sharding | Mapping[str, jax.sharding.Sharding],
) -> dict[str, jax.Array]:
  """Places this process's local batch as its part of a global batch.

  Every process holds different examples (see `pipeline.py`), so leaf [L, ...] becomes a global
  array [L * process_count, ...] whose rows [p*L, (p+1)*L) come from process p.

  Args:
    local_batch: dict of arrays [L, ...], all with the same leading batch size L.
    sharding: one sharding for every leaf, e.g. `NamedSharding(mesh, P('data'))`: its spec names
      the mesh axes of the batch dimension and leaves the other dimensions replicated; or a dict
      with one sharding per key of `local_batch`.

  Returns:
    dict of jax.Array [L * process_count, ...] with the given shardings.
  """
  if isinstance(sharding, Mapping):
    if sharding.keys() != local_batch.keys():
      raise ValueError(f"sharding keys {sorted(sharding)} differ from batch keys "
                       f"{sorted(local_batch)}")
    shardings = sharding
  else:
    shardings = {key: sharding for key in local_batch}
  local_batch = {key: np.asarray(value) for key, value in local_batch.items()}
  for key, value in local_batch.items():
    if value.ndim == 0:
      raise ValueError(f"batch leaf {key!r} is a scalar; every leaf needs a leading batch dimension")
  sizes = {key: value.shape[0] for key, value in local_batch.items()}
  if len(set(sizes.values())) > 1:
    raise ValueError(f"batch leaves have different leading (batch) sizes: {sizes}")
  process_count = jax.process_count()
  global_batch = {}
  for key, value in local_batch.items():
    global_shape = (value.shape[0] * process_count, *value.shape[1:])
    try:
      global_batch[key] = jax.make_array_from_process_local_data(shardings[key], value, global_shape)
    except ValueError as e:
      raise ValueError(f"cannot place batch leaf {key!r} (local shape {value.shape}, global shape "
                       f"{global_shape}) with {shardings[key]}: {e}") from e
  return global_batch
