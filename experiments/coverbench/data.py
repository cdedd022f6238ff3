"""Loads CoverBench from a local copy: JSON (a list, or {"eval": [...]}), JSONL or parquet.

Fields: `context` (str), `claim` (str), `label` (bool; 0/1 and 'true'/'false' are accepted), plus the
metadata columns of the release. Only `context`, `claim` and `label` are confirmed names, so the
source-dataset column is found by name: `source_field`, or with 'auto' the first of
AUTO_SOURCE_FIELDS present in every record.
"""
from __future__ import annotations

import dataclasses

from mmjax.evals.records import read_records

AUTO_SOURCE_FIELDS = ('source', 'dataset', 'source_dataset', 'dataset_name', 'dataset_id', 'origin')
_TRUE = ('true', '1', 'yes')
_FALSE = ('false', '0', 'no')


@dataclasses.dataclass(frozen=True)
class CoverBenchExample:
  """One claim. label: True when the context entails the claim; source: the source dataset, or ''."""
  context: str
  claim: str
  label: bool
  source: str = ''


def _label(value, where: str) -> bool:
  if isinstance(value, bool):
    return value
  if isinstance(value, int) and value in (0, 1):
    return bool(value)
  if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
    return value.strip().lower() in _TRUE
  raise ValueError(f'{where}: label must be a boolean (or 0/1, "true"/"false"), got {value!r}')


def find_source_field(records: list[dict], source_field: str) -> str:
  """The metadata column naming each record's source dataset ('' when 'auto' finds none)."""
  if source_field != 'auto':
    return source_field
  return next((f for f in AUTO_SOURCE_FIELDS if records and all(f in r for r in records)), '')


def load_coverbench(path: str, source_field: str = 'auto') -> tuple[list[CoverBenchExample], str]:
  """(examples in file order, the source column used or '')."""
  records = read_records(path, list_keys=('eval', 'data'))
  field = find_source_field(records, source_field)
  examples = []
  for i, r in enumerate(records):
    where = f'{path}: record {i}'
    missing = [k for k in ('context', 'claim', 'label') + ((field,) if field else ()) if k not in r]
    if missing:
      raise ValueError(f'{where}: missing field(s) {missing} (has {sorted(r)})')
    if not isinstance(r['context'], str) or not isinstance(r['claim'], str):
      raise ValueError(f'{where}: context and claim must be strings')
    examples.append(CoverBenchExample(r['context'], r['claim'], _label(r['label'], where),
                                      str(r[field]) if field else ''))
  return examples, field
