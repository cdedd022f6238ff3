"""Grain pipelines: shuffled, repeated, per-process sharded training batches and padded eval batches.

Sharding scheme. Let G = global_batch_size, P = process_count and L = G // P. A pipeline defines one
global stream of examples (the source, optionally in a seeded shuffle that is redrawn every epoch,
optionally repeated). Global batch n is stream positions [n*G, (n+1)*G); process p reads positions
[n*G + p*L, n*G + (p+1)*L) as its local batch n. Concatenating the local batches n of processes
0..P-1 in order gives global batch n. Local batch n is therefore global step n on every process, and
an iterator state (the number of batches read) means the same thing for any process count.
"""
import functools
import math
from collections.abc import Callable, Mapping, Sequence

import grain
import jax
import numpy as np

Example = dict[str, np.ndarray]
Transform = grain.transforms.Map | grain.transforms.RandomMap | Callable[[Example], Example]
Source = grain.sources.RandomAccessDataSource | grain.MapDataset

# Purposes mixed into the user seed so that the shuffle and the random transform draw from
# unrelated streams, and seed s + 1 does not replay seed s shifted by one epoch (grain folds the
# epoch into the shuffle seed by addition).
_SHUFFLE_PURPOSE = 0
_TRANSFORM_PURPOSE = 1


def make_pipeline(
    source: Source,
    *,
    global_batch_size: int,
    seed: int,
    shuffle: bool = True,
    repeat: bool = True,
    drop_remainder: bool = True,
    transform: Transform | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
) -> grain.MapDataset:
  """Training pipeline: source -> shuffle -> repeat -> transform -> this process's batches.

  Args:
    source: random-access source (`__len__`, `__getitem__`) of examples, each a dict of numpy arrays.
    global_batch_size: G, examples per step summed over all processes.
    seed: non-negative int; fixes the shuffle order of every epoch and the random transform.
    shuffle: shuffle the examples, with a different order each epoch.
    repeat: repeat forever; otherwise one pass.
    drop_remainder: without `repeat`, drop the final global batch if it has R < G examples.
      Keeping it gives each process R / P consecutive ones and raises if P does not divide R;
      `make_eval_pipeline` pads instead and always sees every example exactly once.
    transform: per-example transform applied after shuffling. A `grain.transforms.RandomMap` gets an
      `np.random.Generator` seeded by (seed, position in the global stream), so it is the same on
      resume and for any process count; a `grain.transforms.Map` or a plain callable
      `example -> example` is applied as is.
    process_index: this process, default `jax.process_index()`.
    process_count: number of processes, default `jax.process_count()`.

  Returns:
    MapDataset whose item n is this process's local batch n: a dict of arrays [L, ...] with
    L = G // process_count. Iterate it with `make_iterator` (checkpointable); it is infinite when
    `repeat`, otherwise it has floor(N / G) batches (ceil with `drop_remainder=False`).
  """
  process_index, process_count = _process_layout(process_index, process_count)
  local_batch_size = _local_batch_size(global_batch_size, process_count)
  _check_seed(seed)
  ds = _as_map_dataset(source)
  num_examples = len(ds)
  remainder = num_examples % global_batch_size
  if shuffle:
    ds = ds.shuffle(_derived_seed(seed, _SHUFFLE_PURPOSE))
  if repeat:
    ds = ds.repeat()
  elif drop_remainder:
    if num_examples < global_batch_size:
      raise ValueError(
          f"source has {num_examples} examples, fewer than global_batch_size={global_batch_size}: "
          "with drop_remainder=True and repeat=False the pipeline would yield no batch")
    ds = ds.slice(slice(0, num_examples - remainder))
  elif process_count > 1 and remainder % process_count:
    raise ValueError(
        f"the final global batch has {remainder} examples, which do not split evenly across "
        f"{process_count} processes; use drop_remainder=True, or make_eval_pipeline, which pads "
        "the final batch and masks the padding")
  ds = _apply_transform(ds, transform, seed)
  if not repeat and not drop_remainder and remainder:
    return _split_final_batch(ds, num_examples, global_batch_size, process_index, process_count)
  ds = ds.batch(local_batch_size, batch_fn=stack_examples)
  return ds.slice(slice(process_index, None, process_count))


def make_eval_pipeline(
    source: Source,
    *,
    global_batch_size: int,
    transform: Transform | None = None,
    seed: int = 0,
    process_index: int | None = None,
    process_count: int | None = None,
) -> grain.MapDataset:
  """Evaluation pipeline: one pass over `source` in source order, padded to whole global batches.

  The stream is the source followed by padding up to a multiple of G; padding examples are zeros
  shaped like real ones. Every batch carries `mask`, float32 [L]: 1 for a real example, 0 for
  padding, so summing `mask` over all batches of all processes gives len(source) exactly.

  Args:
    source: random-access source of examples (dicts of numpy arrays without a `mask` key).
    global_batch_size: G, examples per step summed over all processes.
    transform: per-example transform, as in `make_pipeline` (a RandomMap is seeded with `seed`).
    seed: non-negative int, only used by a random transform.
    process_index: this process, default `jax.process_index()`.
    process_count: number of processes, default `jax.process_count()`.

  Returns:
    MapDataset of ceil(N / G) local batches, dicts of arrays [L, ...] plus `mask` [L].
  """
  process_index, process_count = _process_layout(process_index, process_count)
  local_batch_size = _local_batch_size(global_batch_size, process_count)
  _check_seed(seed)
  ds = _apply_transform(_as_map_dataset(source), transform, seed)
  num_examples = len(ds)
  num_batches = math.ceil(num_examples / global_batch_size)
  num_padded = num_batches * global_batch_size
  # Padding re-reads real examples (from the second pass) only to copy their shapes and dtypes.
  ds = ds.repeat(math.ceil(num_padded / num_examples), reseed_each_epoch=False)
  ds = ds.slice(slice(0, num_padded))
  ds = ds.map_with_index(functools.partial(_mask_padding, num_examples=num_examples))
  ds = ds.batch(local_batch_size, batch_fn=stack_examples)
  return ds.slice(slice(process_index, None, process_count))


def stack_examples(examples: Sequence[Mapping[str, np.ndarray]]) -> Example:
  """Stacks examples (dicts of arrays [...]) into a batch (dict of arrays [B, ...]).

  Raises:
    TypeError: an example is not a dict of numeric or string arrays.
    ValueError: examples differ in keys, or a key differs in shape or dtype across examples.
  """
  first = examples[0]
  for i, example in enumerate(examples):
    if not isinstance(example, Mapping):
      raise TypeError(f"examples must be dicts of numpy arrays; example {i} of the batch is a "
                      f"{type(example).__name__}")
    if example.keys() != first.keys():
      raise ValueError(f"cannot batch examples with different keys: example 0 has "
                       f"{sorted(first)}, example {i} has {sorted(example)}")
  batch = {}
  for key in first:
    arrays = [np.asarray(example[key]) for example in examples]
    if arrays[0].dtype == object:
      raise TypeError(f"cannot batch {key!r}: values must be numeric or string arrays, got "
                      f"{type(first[key]).__name__}")
    shapes = list(dict.fromkeys(a.shape for a in arrays))
    dtypes = list(dict.fromkeys(_dtype_family(a.dtype) for a in arrays))
    for name, seen in (("shapes", shapes), ("dtypes", dtypes)):
      if len(seen) > 1:
        raise ValueError(
            f"cannot batch {key!r}: examples have different {name} {[str(s) for s in seen]}; "
            "make them uniform in the source or a transform (for images: "
            "ImageFolderSource(image_size=...))")
    batch[key] = np.stack(arrays)
  return batch


def _dtype_family(dtype: np.dtype) -> str:
  """The dtype, except that strings of any length are one family: np.stack pads them."""
  return {"U": "str", "S": "bytes"}.get(dtype.kind, str(dtype))


def _split_final_batch(ds: grain.MapDataset, num_examples: int, global_batch_size: int,
                       process_index: int, process_count: int) -> grain.MapDataset:
  """Full local batches, then this process's equal share of the short final global batch."""
  local_batch_size = global_batch_size // process_count
  num_full = num_examples - num_examples % global_batch_size
  full = ds.slice(slice(0, num_full)).batch(local_batch_size, batch_fn=stack_examples)
  full = full.slice(slice(process_index, None, process_count))
  share = (num_examples - num_full) // process_count
  start = num_full + process_index * share
  last = ds.slice(slice(start, start + share)).batch(share, batch_fn=stack_examples)
  return grain.MapDataset.concatenate([full, last])


def _mask_padding(index: int, example: Example, *, num_examples: int) -> Example:
  if "mask" in example:
    raise ValueError(f"examples already have a 'mask' key; the eval pipeline adds its own "
                     f"(keys: {sorted(example)})")
  is_real = index < num_examples
  out = {k: np.asarray(v) if is_real else np.zeros_like(v) for k, v in example.items()}
  out["mask"] = np.float32(is_real)
  return out


def _apply_transform(ds: grain.MapDataset, transform: Transform | None, seed: int) -> grain.MapDataset:
  if transform is None:
    return ds
  if isinstance(transform, grain.transforms.RandomMap):
    return ds.random_map(transform, seed=_derived_seed(seed, _TRANSFORM_PURPOSE))
  if isinstance(transform, grain.transforms.Map) or callable(transform):
    return ds.map(transform)
  raise TypeError(f"transform must be a grain.transforms.Map, a grain.transforms.RandomMap or a "
                  f"callable example -> example, got {type(transform).__name__}")


def _as_map_dataset(source: Source) -> grain.MapDataset:
  ds = source if isinstance(source, grain.MapDataset) else grain.MapDataset.source(source)
  if len(ds) == 0:
    raise ValueError(f"source {source!r} is empty")
  return ds


def _process_layout(process_index: int | None, process_count: int | None) -> tuple[int, int]:
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f"need 0 <= process_index < process_count, got process_index={process_index}, "
                     f"process_count={process_count}")
  return process_index, process_count


def _local_batch_size(global_batch_size: int, process_count: int) -> int:
  if global_batch_size < 1 or global_batch_size % process_count:
    raise ValueError(f"global_batch_size={global_batch_size} must be a positive multiple of "
                     f"process_count={process_count}")
  return global_batch_size // process_count


def _check_seed(seed: int) -> None:
  if not isinstance(seed, (int, np.integer)) or seed < 0:
    raise ValueError(f"seed must be a non-negative int, got {seed!r}")


def _derived_seed(seed: int, purpose: int) -> int:
  """A uint32 seed for one random stage, a hash of (seed, purpose)."""
  return int(np.random.SeedSequence([int(seed), purpose]).generate_state(1)[0])
