"""Checkpointable iterators over batch pipelines, with their state as JSON.

A pipeline from `make_pipeline` is a MapDataset of batches, so an iterator's whole state is
`{"next_index": n}`: the number of batches it has returned, which is also the global step (see
`pipeline.py`). Saving that after step n and restoring it into a fresh iterator over the same
pipeline yields bitwise the same batches n, n+1, ... as the uninterrupted run.
"""
import json

import grain


def make_iterator(ds: grain.MapDataset, *, state_json: str | None = None, num_threads: int = 4,
                  prefetch_batches: int = 8) -> grain.DatasetIterator:
  """Iterator over the batches of `ds`, read by `num_threads` threads, `prefetch_batches` ahead.

  `iter(ds)` works too, with grain's defaults (16 threads and a 500-element buffer, which for a
  dataset of batches means up to 500 batches in memory); this bounds the buffer instead.

  Args:
    ds: pipeline from `make_pipeline` or `make_eval_pipeline`.
    state_json: a state from `iterator_state_to_json` to resume from; None starts at batch 0.
    num_threads: reader threads; 0 reads in the calling thread.
    prefetch_batches: batches read ahead; 0 disables prefetching.
  """
  options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch_batches)
  it = iter(ds.to_iter_dataset(options))
  if state_json is not None:
    try:
      state = json.loads(state_json)
    except json.JSONDecodeError as e:
      raise ValueError(f"iterator state is not valid JSON: {e}: {state_json[:200]!r}") from e
    expected = it.get_state()
    if not isinstance(state, dict) or state.keys() != expected.keys():
      raise ValueError(f"iterator state {state_json[:200]!r} does not fit this pipeline, whose "
                       f"iterator state looks like {json.dumps(expected)}")
    it.set_state(state)
  return it


def iterator_state_to_json(it: grain.DatasetIterator) -> str:
  """The state of `it` as a JSON string, for `make_iterator(ds, state_json=...)`."""
  state = it.get_state()
  try:
    return json.dumps(state, sort_keys=True)
  except TypeError as e:
    raise TypeError(f"iterator state {state!r} of {type(it).__name__} is not JSON-serialisable: "
                    f"{e}") from e
