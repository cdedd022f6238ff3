"""Response files: JSON lines of {"id": <position of the example in the data file>, "response": str}.

`read_responses` validates a finished file for scoring; `ResponseLog` is the append-only file a run
writes as it goes, so that a rerun skips the examples already answered.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence

from absl import logging


def format_ids(ids: Iterable[int]) -> str:
  """Sorted ids with runs collapsed: [0, 1, 2, 5, 7, 8] -> '0-2, 5, 7-8'."""
  out: list[str] = []
  run: list[int] = []
  for i in sorted(ids):
    if run and i == run[-1] + 1:
      run.append(i)
      continue
    if run:
      out.append(f'{run[0]}-{run[-1]}' if len(run) > 1 else str(run[0]))
    run = [i]
  if run:
    out.append(f'{run[0]}-{run[-1]}' if len(run) > 1 else str(run[0]))
  return ', '.join(out)


def _check_record(record, where: str) -> dict:
  if not isinstance(record, dict):
    raise ValueError(f'{where}: expected an object {{"id": int, "response": str}}')
  rid, response = record.get('id'), record.get('response')
  if isinstance(rid, bool) or not isinstance(rid, int):
    raise ValueError(f'{where}: "id" must be an integer (the example\'s position in the data '
                     f'file), got {rid!r}')
  if not isinstance(response, str):
    raise ValueError(f'{where}: "response" must be a string, got {type(response).__name__}')
  return record


def check_ids(records: Sequence[dict], n: int, path: str) -> None:
  """Raises one ValueError listing missing, duplicate and unknown ids (each must be in 0..n-1 once)."""
  seen: dict[int, int] = {}
  for r in records:
    seen[r['id']] = seen.get(r['id'], 0) + 1
  missing = [i for i in range(n) if i not in seen]
  duplicate = [i for i, c in seen.items() if c > 1 and 0 <= i < n]
  unknown = [i for i in seen if not 0 <= i < n]
  problems = []
  if missing:
    problems.append(f'missing ids ({len(missing)}): {format_ids(missing)}')
  if duplicate:
    problems.append(f'duplicate ids ({len(duplicate)}): {format_ids(duplicate)}')
  if unknown:
    problems.append(f'ids not in the data (0..{n - 1}) ({len(unknown)}): {format_ids(unknown)}')
  if problems:
    raise ValueError(f'{path}: response ids do not match the {n} examples of the data file; '
                     + '; '.join(problems))


def read_responses(path: str, n: int) -> list[dict]:
  """The records of a response file for a data file of `n` examples, sorted by id.

  Each line is an object with an integer "id" and a string "response" (other keys are kept).
  Raises ValueError naming the bad line, or listing every missing, duplicate or unknown id.
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path}: no such response file')
  records = []
  with open(path, encoding='utf-8') as f:
    for line_no, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f'{path}: line {line_no} is not JSON ({e})') from None
      records.append(_check_record(record, f'{path}: line {line_no}'))
  check_ids(records, n, path)
  return sorted(records, key=lambda r: r['id'])


class ResponseLog:
  """The append-only `responses.jsonl` of a run over `n` examples.

  Opening it reads the records already there. A last line cut short by an interrupted write is
  dropped (logged) and cut from the file; any other bad line, or an id outside 0..n-1 or seen twice,
  is an error, since the file then belongs to some other run.
  """

  def __init__(self, path: str, n: int):
    self.path = path
    self.done: dict[int, dict] = {}
    if not os.path.exists(path):
      return
    with open(path, 'rb') as f:
      lines = f.read().split(b'\n')
    good_bytes = 0
    for line_no, line in enumerate(lines, 1):
      if not line.strip():
        good_bytes += len(line) + 1
        continue
      try:
        record = _check_record(json.loads(line), f'{path}: line {line_no}')
      except (json.JSONDecodeError, UnicodeDecodeError):
        if line_no == len(lines):  # no newline yet: the write was interrupted
          logging.warning('%s: dropping a partial last line (an interrupted write)', path)
          with open(path, 'r+b') as f:
            f.truncate(good_bytes)
          break
        raise ValueError(f'{path}: line {line_no} is not JSON; remove the file to start over') from None
      if not 0 <= record['id'] < n or record['id'] in self.done:
        raise ValueError(f'{path}: line {line_no}: id {record["id"]} is outside 0..{n - 1} or '
                         'repeated; this file belongs to another run (use a new workdir)')
      self.done[record['id']] = record
      good_bytes += len(line) + 1

  def append(self, records: Sequence[dict]) -> None:
    """Writes `records` (each with "id" and "response") and syncs them to disk."""
    with open(self.path, 'a', encoding='utf-8') as f:
      for r in records:
        f.write(json.dumps(r, ensure_ascii=False) + '\n')
      f.flush()
      os.fsync(f.fileno())
    for r in records:
      self.done[r['id']] = r
