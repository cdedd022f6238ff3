"""Reads a benchmark's records (one dict per example, in file order) from JSON, JSONL or parquet."""
from __future__ import annotations

import json
import os


def read_records(path: str, list_keys: tuple[str, ...] = ()) -> list[dict]:
  """Records of `path`, chosen by extension: .json, .jsonl, .parquet.

  .json holds a list of objects, or an object whose value under one of `list_keys` is that list
  (e.g. ('eval',) for a split dump). .jsonl holds one object per line (blank lines are an error,
  so that line numbers stay example positions). .parquet needs pyarrow.
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path}: no such data file')
  ext = os.path.splitext(path)[1].lower()
  if ext == '.json':
    records = _read_json(path, list_keys)
  elif ext == '.jsonl':
    records = _read_jsonl(path)
  elif ext == '.parquet':
    records = _read_parquet(path)
  else:
    raise ValueError(f'{path}: unknown data format {ext!r}; expected .json, .jsonl or .parquet')
  bad = [i for i, r in enumerate(records) if not isinstance(r, dict)]
  if bad:
    raise ValueError(f'{path}: record {bad[0]} is a {type(records[bad[0]]).__name__}, not an object')
  return records


def read_json(path: str | os.PathLike) -> object:
  """The JSON value in `path`; ValueError naming the file when it is not valid JSON."""
  with open(path, encoding='utf-8') as f:
    try:
      return json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f'{path}: not valid JSON ({e})') from None


def read_json_list(path: str | os.PathLike, what: str) -> list:
  """The JSON list in `path` (of `what`, for the error that names the file when it holds something else)."""
  data = read_json(path)
  if not isinstance(data, list):
    raise ValueError(f'{path}: expected a JSON list of {what}, got {type(data).__name__}')
  return data


def _read_json(path: str, list_keys: tuple[str, ...]) -> list:
  data = read_json(path)
  if isinstance(data, dict):
    key = next((k for k in list_keys if isinstance(data.get(k), list)), None)
    if key is None:
      raise ValueError(f'{path}: expected a list of records'
                       + (f' or an object holding one under {list_keys}' if list_keys else ''))
    data = data[key]
  if not isinstance(data, list):
    raise ValueError(f'{path}: expected a list of records, got {type(data).__name__}')
  return data


def _read_jsonl(path: str) -> list:
  records = []
  with open(path, encoding='utf-8') as f:
    for n, line in enumerate(f, 1):
      try:
        records.append(json.loads(line))
      except json.JSONDecodeError as e:
        raise ValueError(f'{path}: line {n} is not a JSON object ({e})') from None
  return records


def _read_parquet(path: str) -> list:
  try:
    import pyarrow.parquet as pq
  except ImportError:
    raise ImportError(f'{path}: reading parquet needs pyarrow; run `pip install pyarrow`, '
                      'or convert the file to JSON/JSONL') from None
  return pq.read_table(path).to_pylist()
