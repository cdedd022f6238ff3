"""make_pipeline / make_eval_pipeline: determinism, epochs, per-process sharding, resume, remainders."""
import json

import grain
import numpy as np
import pytest

from mmjax.data import iterator_state_to_json, make_eval_pipeline, make_iterator, make_pipeline, stack_examples


def _source(n: int) -> list[dict[str, np.ndarray]]:
  return [{"id": np.asarray(i, np.int32), "feat": np.full(3, i, np.float32)} for i in range(n)]


def _ids(ds: grain.MapDataset, num_batches: int) -> list[np.ndarray]:
  it = make_iterator(ds)
  return [next(it)["id"] for _ in range(num_batches)]


class _AddNoise(grain.transforms.RandomMap):

  def random_map(self, element, rng):
    return {**element, "feat": element["feat"] + rng.standard_normal(3).astype(np.float32)}


def test_same_seed_same_batches_and_batch_layout():
  a = _ids(make_pipeline(_source(50), global_batch_size=8, seed=3), 10)
  b = _ids(make_pipeline(_source(50), global_batch_size=8, seed=3), 10)
  np.testing.assert_array_equal(a, b)
  batch = make_pipeline(_source(50), global_batch_size=8, seed=3)[0]
  assert batch["id"].shape == (8,) and batch["id"].dtype == np.int32
  assert batch["feat"].shape == (8, 3) and batch["feat"].dtype == np.float32
  np.testing.assert_array_equal(batch["feat"][:, 0], batch["id"])


def test_different_seeds_differ():
  # Seeds 0 and 1 must not replay each other one epoch apart (grain adds the epoch to its seed).
  a = np.concatenate(_ids(make_pipeline(_source(40), global_batch_size=8, seed=0), 10))
  b = np.concatenate(_ids(make_pipeline(_source(40), global_batch_size=8, seed=1), 10))
  assert not np.array_equal(a[:40], b[:40])
  assert not np.array_equal(a[40:], b[:40])


def test_every_example_once_per_epoch_and_epochs_reshuffled():
  ids = np.concatenate(_ids(make_pipeline(_source(40), global_batch_size=8, seed=0), 15))
  epochs = ids.reshape(3, 40)
  for epoch in epochs:
    np.testing.assert_array_equal(np.sort(epoch), np.arange(40))
  assert not np.array_equal(epochs[0], epochs[1])
  assert not np.array_equal(epochs[0], np.arange(40))


def test_no_shuffle_keeps_source_order():
  ids = np.concatenate(_ids(make_pipeline(_source(12), global_batch_size=4, seed=0, shuffle=False), 6))
  np.testing.assert_array_equal(ids, np.tile(np.arange(12), 2))


@pytest.mark.parametrize("process_count", [2, 4])
def test_process_shards_are_disjoint_and_form_the_global_batch(process_count):
  global_ids = _ids(make_pipeline(_source(32), global_batch_size=8, seed=5), 8)
  local_ids = [
      _ids(make_pipeline(_source(32), global_batch_size=8, seed=5, process_index=p,
                         process_count=process_count), 8)
      for p in range(process_count)
  ]
  for step in range(8):
    pieces = [local_ids[p][step] for p in range(process_count)]
    assert all(len(piece) == 8 // process_count for piece in pieces)
    np.testing.assert_array_equal(np.concatenate(pieces), global_ids[step])
  # Over the first epoch (4 steps) the processes read disjoint examples that cover the source.
  per_process = [set(np.concatenate(ids[:4]).tolist()) for ids in local_ids]
  assert sum(len(ids) for ids in per_process) == 32
  assert set().union(*per_process) == set(range(32))


def test_random_transform_is_deterministic_and_independent_of_process_count():
  def batches(seed, process_index=0, process_count=1):
    ds = make_pipeline(_source(20), global_batch_size=4, seed=seed, transform=_AddNoise(),
                       process_index=process_index, process_count=process_count)
    it = make_iterator(ds)
    return [next(it) for _ in range(10)]

  single = batches(0)
  feats = [b["feat"] for b in single]
  np.testing.assert_array_equal(feats, [b["feat"] for b in batches(0)])
  assert not np.allclose(feats, [b["feat"] for b in batches(1)])
  halves = [batches(0, p, 2) for p in range(2)]
  for step in range(10):
    np.testing.assert_array_equal(
        np.concatenate([halves[0][step]["feat"], halves[1][step]["feat"]]), feats[step])
  # The second epoch draws fresh noise for every example.
  ids = np.concatenate([b["id"] for b in single])
  noise = np.concatenate(feats)[:, 0] - ids
  first, second = (dict(zip(ids[e * 20:(e + 1) * 20], noise[e * 20:(e + 1) * 20])) for e in (0, 1))
  assert all(first[i] != second[i] for i in range(20))


@pytest.mark.parametrize("use_transform", [False, True])
def test_resume_from_json_state_gives_bitwise_same_batches(use_transform):
  def pipeline():
    return make_pipeline(_source(23), global_batch_size=6, seed=11,
                         transform=_AddNoise() if use_transform else None)

  it = make_iterator(pipeline())
  for _ in range(7):
    next(it)
  state = iterator_state_to_json(it)
  expected = [next(it) for _ in range(6)]
  resumed = make_iterator(pipeline(), state_json=state)
  for want in expected:
    got = next(resumed)
    for key in want:
      assert got[key].tobytes() == want[key].tobytes()


def test_plain_iter_state_is_json_and_restores():
  ds = make_pipeline(_source(10), global_batch_size=4, seed=2)
  it = iter(ds)
  for _ in range(4):
    next(it)
  state = json.dumps(it.get_state())
  expected = next(it)["id"]
  fresh = iter(ds)
  fresh.set_state(json.loads(state))
  np.testing.assert_array_equal(next(fresh)["id"], expected)


def test_state_restores_across_process_counts():
  it = make_iterator(make_pipeline(_source(30), global_batch_size=8, seed=4))
  for _ in range(5):
    next(it)
  state = iterator_state_to_json(it)
  expected = next(it)["id"]
  halves = [next(make_iterator(make_pipeline(_source(30), global_batch_size=8, seed=4,
                                             process_index=p, process_count=2), state_json=state))
            for p in range(2)]
  np.testing.assert_array_equal(np.concatenate([h["id"] for h in halves]), expected)


def test_bad_state_is_rejected():
  ds = make_pipeline(_source(10), global_batch_size=2, seed=0)
  with pytest.raises(ValueError, match="not valid JSON"):
    make_iterator(ds, state_json="{next_index")
  with pytest.raises(ValueError, match="does not fit"):
    make_iterator(ds, state_json='{"epoch": 3}')


def test_drop_remainder_drops_the_short_final_batch():
  ds = make_pipeline(_source(42), global_batch_size=8, seed=0, repeat=False)
  batches = [b["id"] for b in make_iterator(ds)]
  assert len(ds) == len(batches) == 5
  ids = np.concatenate(batches)
  assert len(ids) == 40 and len(set(ids.tolist())) == 40


def test_keep_remainder_yields_every_example_once():
  ds = make_pipeline(_source(42), global_batch_size=8, seed=0, repeat=False, drop_remainder=False)
  batches = [b["id"] for b in make_iterator(ds)]
  assert [len(b) for b in batches] == [8] * 5 + [2]
  np.testing.assert_array_equal(np.sort(np.concatenate(batches)), np.arange(42))


def test_keep_remainder_splits_the_final_batch_across_processes():
  def ids(**layout):
    ds = make_pipeline(_source(44), global_batch_size=8, seed=0, repeat=False,
                       drop_remainder=False, **layout)
    return [b["id"] for b in make_iterator(ds)]

  single = ids()
  halves = [ids(process_index=p, process_count=2) for p in range(2)]
  assert [len(b) for b in halves[0]] == [4] * 5 + [2]
  for step, want in enumerate(single):
    np.testing.assert_array_equal(np.concatenate([halves[0][step], halves[1][step]]), want)
  with pytest.raises(ValueError, match="do not split evenly"):
    make_pipeline(_source(43), global_batch_size=8, seed=0, repeat=False, drop_remainder=False,
                  process_index=0, process_count=2)


def test_bad_arguments_raise_clear_errors():
  with pytest.raises(ValueError, match="multiple of process_count=4"):
    make_pipeline(_source(40), global_batch_size=10, seed=0, process_index=0, process_count=4)
  with pytest.raises(ValueError, match="multiple of process_count=4"):
    make_eval_pipeline(_source(40), global_batch_size=10, process_index=0, process_count=4)
  with pytest.raises(ValueError, match="process_index"):
    make_pipeline(_source(40), global_batch_size=8, seed=0, process_index=2, process_count=2)
  with pytest.raises(ValueError, match="fewer than global_batch_size"):
    make_pipeline(_source(5), global_batch_size=8, seed=0, repeat=False)
  with pytest.raises(ValueError, match="empty"):
    make_pipeline([], global_batch_size=8, seed=0)
  with pytest.raises(ValueError, match="seed"):
    make_pipeline(_source(5), global_batch_size=1, seed=-1)


def test_stack_examples_names_the_mismatched_key():
  examples = [{"image": np.zeros((4, 4, 3), np.float32)}, {"image": np.zeros((5, 4, 3), np.float32)}]
  with pytest.raises(ValueError, match=r"'image'.*different shapes.*\(4, 4, 3\).*\(5, 4, 3\)"):
    stack_examples(examples)
  with pytest.raises(ValueError, match="different keys"):
    stack_examples([{"a": np.zeros(1)}, {"b": np.zeros(1)}])
  with pytest.raises(ValueError, match="different dtypes"):
    stack_examples([{"a": np.zeros(1, np.int32)}, {"a": np.zeros(1, np.float32)}])


@pytest.mark.parametrize("process_count", [1, 2, 4])
def test_eval_pipeline_counts_every_example_exactly_once(process_count):
  real_ids, num_batches = [], set()
  for p in range(process_count):
    ds = make_eval_pipeline(_source(37), global_batch_size=8, process_index=p,
                            process_count=process_count)
    batches = list(make_iterator(ds))
    num_batches.add(len(batches))
    for batch in batches:
      assert batch["mask"].shape == (8 // process_count,) and batch["mask"].dtype == np.float32
      real = batch["mask"] == 1
      real_ids.extend(batch["id"][real].tolist())
      assert not batch["feat"][~real].any()
  assert num_batches == {5}
  assert sorted(real_ids) == list(range(37))


def test_eval_pipeline_keeps_source_order_and_rejects_mask_key():
  batches = list(make_iterator(make_eval_pipeline(_source(10), global_batch_size=4)))
  np.testing.assert_array_equal(np.concatenate([b["id"] for b in batches])[:10], np.arange(10))
  np.testing.assert_array_equal(batches[-1]["mask"], [1, 1, 0, 0])
  with pytest.raises(ValueError, match="'mask'"):
    make_eval_pipeline([{"mask": np.zeros(1)}], global_batch_size=1)[0]
