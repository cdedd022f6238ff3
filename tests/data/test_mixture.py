"""YAML data mixtures: sampling strategies, determinism, and errors."""
import json

import numpy as np
import pytest
import yaml

from mmjax.data.mixture import MixtureSource, load_mixture, sample_indices


def _rng(seed=0):
  return np.random.default_rng(seed)


@pytest.mark.parametrize("strategy, expected", [
    ("all", list(range(10))), ("first:3", [0, 1, 2]), ("end:3", [7, 8, 9]),
    ("first:25%", [0, 1, 2]),  # ceil(2.5)
    ("end:10%", [9]), ("first:100%", list(range(10))), ("first:10", list(range(10))),
])
def test_ordered_strategies(strategy, expected):
  got = sample_indices(strategy, 10, _rng())
  assert got.dtype == np.int64 and got.tolist() == expected


def test_random_strategy_is_a_seeded_subset():
  a = sample_indices("random:4", 10, _rng(1))
  assert len(a) == 4 and len(set(a.tolist())) == 4 and set(a.tolist()) <= set(range(10))
  np.testing.assert_array_equal(a, sample_indices("random:4", 10, _rng(1)))
  assert len(sample_indices("random:50%", 9, _rng())) == 5
  picks = {tuple(sample_indices("random:4", 10, _rng(s))) for s in range(5)}
  assert len(picks) > 1


@pytest.mark.parametrize("strategy, message", [
    ("sample:3", "unknown sampling_strategy 'sample:3'"),
    ("10%", "unknown sampling_strategy '10%'.*whole dataset"),
    ("first:x", "N must be a whole number"), ("first:2.5%", "N must be a whole number"),
    ("first:0", "selects no examples"), ("end:0%", "all for 'end:0'"),
    ("first:11", "asks for 11 examples but the dataset has 10; the original trainer silently"),
    ("random:101%", "asks for 11 examples"), (5, "must be a string"),
])
def test_bad_strategies(strategy, message):
  with pytest.raises(ValueError, match=message):
    sample_indices(strategy, 10, _rng())


def test_cap_counts_takes_the_whole_dataset():
  assert sample_indices("end:11", 10, _rng(), cap_counts=True).tolist() == list(range(10))
  capped = sample_indices("random:20", 10, _rng(), cap_counts=True)
  assert sorted(capped.tolist()) == list(range(10))


def _dataset(path, prefix, n):
  path.parent.mkdir(parents=True, exist_ok=True)
  entries = [{"id": f"{prefix}{i}", "conversations": [{"from": "human", "value": "q"},
                                                      {"from": "gpt", "value": "a"}]}
             for i in range(n)]
  path.write_text(json.dumps(entries))


def _yaml(path, datasets):
  path.write_text(yaml.safe_dump({"datasets": datasets}))
  return path


@pytest.fixture
def data(tmp_path):
  _dataset(tmp_path / "data" / "a.json", "a", 10)
  _dataset(tmp_path / "data" / "b.json", "b", 8)
  _dataset(tmp_path / "data" / "c.json", "c", 20)
  return tmp_path


def _ids(source):
  return [source[i]["id"] for i in range(len(source))]


def test_load_mixture_concatenates_selected_examples(data):
  path = _yaml(data / "mix.yaml", [
      {"json_path": "data/a.json", "sampling_strategy": "first:30%"},
      {"json_path": "data/b.json"},
      {"json_path": str(data / "data" / "c.json"), "sampling_strategy": "random:5"}])
  mix = load_mixture(path, seed=0)
  assert isinstance(mix, MixtureSource) and len(mix) == 3 + 8 + 5
  ids = _ids(mix)
  assert ids[:11] == ["a0", "a1", "a2"] + [f"b{i}" for i in range(8)]
  assert len(set(ids[11:])) == 5 and all(i.startswith("c") for i in ids[11:])
  assert [len(p.indices) for p in mix.parts] == [3, 8, 5]
  assert mix.parts[1].sampling_strategy == "all"
  assert _ids(load_mixture(path, seed=0)) == ids
  assert {tuple(_ids(load_mixture(path, seed=s))[11:]) for s in range(1, 5)} - {tuple(ids[11:])}
  with pytest.raises(IndexError):
    mix[len(mix)]


def test_random_selection_does_not_depend_on_later_datasets(data):
  one = [{"json_path": "data/c.json", "sampling_strategy": "random:50%"}]
  short = load_mixture(_yaml(data / "one.yaml", one), seed=3)
  longer = load_mixture(_yaml(data / "two.yaml", one + [{"json_path": "data/a.json"}]), seed=3)
  assert _ids(longer)[:10] == _ids(short)


def test_missing_json_files_are_all_named(data):
  path = _yaml(data / "mix.yaml", [{"json_path": "data/gone1.json"}, {"json_path": "data/a.json"},
                                   {"json_path": "data/gone2.json"}])
  with pytest.raises(FileNotFoundError, match=r"(?s)2 dataset file.*\[0\].*gone1.*\[2\].*gone2"):
    load_mixture(path, seed=0)


def test_yaml_errors(data):
  bad_strategy = _yaml(data / "s.yaml", [
      {"json_path": "data/a.json"}, {"json_path": "data/b.json", "sampling_strategy": "top:3"}])
  with pytest.raises(ValueError, match=r"s.yaml: datasets\[1\] \(.*b.json\): unknown sampling"):
    load_mixture(bad_strategy, seed=0)
  too_many = _yaml(data / "n.yaml", [{"json_path": "data/b.json", "sampling_strategy": "first:9"}])
  with pytest.raises(ValueError, match="asks for 9 examples but the dataset has 8"):
    load_mixture(too_many, seed=0)
  assert len(load_mixture(too_many, seed=0, cap_counts=True)) == 8
  extra = _yaml(data / "k.yaml", [{"json_path": "data/a.json", "weight": 2}])
  with pytest.raises(ValueError, match=r"datasets\[0\] has unknown keys \['weight'\]"):
    load_mixture(extra, seed=0)
  (data / "e.yaml").write_text("datasets: []\n")
  with pytest.raises(ValueError, match="e.yaml: expected a top-level 'datasets' list"):
    load_mixture(data / "e.yaml", seed=0)
  (data / "p.yaml").write_text("datasets:\n  - sampling_strategy: all\n")
  with pytest.raises(ValueError, match=r"datasets\[0\] needs a 'json_path'"):
    load_mixture(data / "p.yaml", seed=0)
  with pytest.raises(FileNotFoundError, match="absent.yaml"):
    load_mixture(data / "absent.yaml", seed=0)
