"""LLaVA-NeXT / OneVision YAML data mixtures: several LLaVA JSON datasets, each subsampled.

    datasets:
      - json_path: mix.json            # relative to the YAML file's folder, or absolute
        sampling_strategy: first:10%   # all | first:N | end:N | random:N, N a count or "K%"

Per dataset, as the original trainer (LLaVA-NeXT `LazySupervisedDataset`) does: a missing strategy
is 'all'; "K%" means ceil(K * size / 100) examples; 'first' keeps the first N entries, 'end' the
last N, 'random' N entries of a shuffled copy, in shuffled order. Differences, all raised as errors
where the original silently does something else: the original treats any strategy without ':'
(e.g. a bare '10%') and unknown names as 'all'; N (or K%) above the dataset size takes the whole
dataset (here an error unless `cap_counts=True`); N = 0 takes nothing, or everything for 'end:0'
(Python's [-0:]). The original shuffles with the process-global `random` state; here 'random'
uses numpy's default_rng([seed, position of the dataset in the YAML]), so a selection is
reproducible and does not change when datasets are added after it.
"""
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from absl import logging

from mmjax.data.llava_json import LlavaJsonSource

STRATEGIES = ("all", "first", "end", "random")
_KEYS = ("json_path", "sampling_strategy")
_AMOUNT = re.compile(r"(\d+)(%?)")


def sample_indices(strategy: str, size: int, rng: np.random.Generator, *,
                   cap_counts: bool = False) -> np.ndarray:
  """Indices int64 [N] into a dataset of `size` entries selected by `strategy`.

  Raises:
    ValueError: unknown strategy or malformed amount; an amount of 0; an amount above `size`
      unless `cap_counts` (then the whole dataset is taken, as the original trainer does).
  """
  if not isinstance(strategy, str):
    raise ValueError(f"sampling_strategy must be a string, got {strategy!r}")
  if strategy == "all":
    return np.arange(size, dtype=np.int64)
  name, sep, amount = strategy.partition(":")
  if not sep or name not in STRATEGIES[1:]:
    raise ValueError(f"unknown sampling_strategy {strategy!r}; expected 'all', 'first:N', 'end:N' "
                     "or 'random:N' with N a count or 'K%' (the original trainer would silently "
                     "take the whole dataset)")
  match = _AMOUNT.fullmatch(amount.strip())
  if match is None:
    raise ValueError(f"sampling_strategy {strategy!r}: N must be a whole number or a whole "
                     "percentage like '10%'")
  n = int(match[1])
  if match[2]:
    n = math.ceil(n * size / 100)
  if n == 0:
    raise ValueError(f"sampling_strategy {strategy!r} selects no examples of {size}; remove the "
                     "dataset instead (the original trainer takes none, or all for 'end:0')")
  if n > size:
    if not cap_counts:
      raise ValueError(f"sampling_strategy {strategy!r} asks for {n} examples but the dataset has "
                       f"{size}; the original trainer silently takes all {size} "
                       "(pass cap_counts=True to do the same)")
    logging.warning("sampling_strategy %r asks for %d examples of %d; taking all", strategy, n,
                    size)
    n = size
  if name == "first":
    return np.arange(n, dtype=np.int64)
  if name == "end":
    return np.arange(size - n, size, dtype=np.int64)
  return rng.permutation(size)[:n].astype(np.int64)


@dataclass(frozen=True)
class MixturePart:
  """One dataset of a mixture: its source and the selected indices int64 [N] into it."""
  json_path: Path
  sampling_strategy: str
  source: LlavaJsonSource
  indices: np.ndarray


class MixtureSource:
  """The concatenation of the selected examples of each part, for grain."""

  def __init__(self, parts: list[MixturePart]):
    self.parts = parts
    self._ends = np.cumsum([len(p.indices) for p in parts])

  def __len__(self) -> int:
    return int(self._ends[-1]) if len(self._ends) else 0

  def __getitem__(self, index: int) -> dict:
    if not 0 <= index < len(self):
      raise IndexError(f"mixture index {index} out of range for {len(self)} examples")
    k = int(np.searchsorted(self._ends, index, side="right"))
    start = int(self._ends[k - 1]) if k else 0
    part = self.parts[k]
    return part.source[int(part.indices[index - start])]

  def __repr__(self) -> str:
    return f"MixtureSource({len(self.parts)} datasets, {len(self)} examples)"


def _read_yaml(path: Path) -> list[dict]:
  if not path.is_file():
    raise FileNotFoundError(f"mixture YAML {path} does not exist")
  try:
    data = yaml.safe_load(path.read_text())
  except yaml.YAMLError as e:
    raise ValueError(f"{path}: not valid YAML: {e}") from None
  datasets = data.get("datasets") if isinstance(data, dict) else None
  if not isinstance(datasets, list) or not datasets:
    raise ValueError(f"{path}: expected a top-level 'datasets' list with at least one entry")
  for k, d in enumerate(datasets):
    if not isinstance(d, dict) or not isinstance(d.get("json_path"), str):
      raise ValueError(f"{path}: datasets[{k}] needs a 'json_path' string, got {d!r}")
    unknown = sorted(set(d) - set(_KEYS))
    if unknown:
      raise ValueError(f"{path}: datasets[{k}] has unknown keys {unknown}; allowed: {list(_KEYS)}")
  return datasets


def load_mixture(yaml_path: str | os.PathLike, seed: int, *, cap_counts: bool = False,
                 **source_kwargs) -> MixtureSource:
  """Reads a mixture YAML and its datasets; returns their selected examples, concatenated.

  Args:
    yaml_path: the mixture file; relative `json_path`s are relative to its folder.
    seed: seeds the 'random' strategies (see the module docstring).
    cap_counts: let counts above a dataset's size take the whole dataset instead of failing.
    **source_kwargs: passed to each `LlavaJsonSource` (image_root, video_root, max_frames).

  Raises:
    FileNotFoundError: the YAML, or JSON files it lists (all named at once), do not exist.
    ValueError: malformed YAML, unknown keys or strategies, impossible counts (named by entry).
  """
  yaml_path = Path(yaml_path)
  datasets = _read_yaml(yaml_path)
  paths = [yaml_path.parent / d["json_path"] for d in datasets]
  missing = [f"datasets[{k}]: {p}" for k, p in enumerate(paths) if not p.is_file()]
  if missing:
    raise FileNotFoundError(f"{yaml_path}: {len(missing)} dataset file(s) missing:\n  "
                            + "\n  ".join(missing))
  parts = []
  for k, (d, json_path) in enumerate(zip(datasets, paths)):
    strategy = d.get("sampling_strategy", "all")
    source = LlavaJsonSource(json_path, **source_kwargs)
    try:
      indices = sample_indices(strategy, len(source), np.random.default_rng([seed, k]),
                               cap_counts=cap_counts)
    except ValueError as e:
      raise ValueError(f"{yaml_path}: datasets[{k}] ({json_path}): {e}") from None
    logging.info("mixture %s: %d of %d examples from %s (%s)", yaml_path, len(indices),
                 len(source), json_path, strategy)
    parts.append(MixturePart(json_path, strategy, source, indices))
  return MixtureSource(parts)
