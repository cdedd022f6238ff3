"""Loads MMIU in its official layouts: the flat records of `all.json` / `all.parquet` / per-task
`metadata_info.json` lists, and InternVL's nested `mmiu.jsonl`.

Flat: {"task", "options", "question", "context", "input_image_path": [...], "output", "source", ...}.
Nested: {"task", "options", "input": {"question", "context", "input_image_path"},
         "output": {"output_text"}}.
Image paths are normalised ('./2D-spatial/t/x.jpg' -> '2D-spatial/t/x.jpg',
'../MMIU-Benchmark/t/x.jpg' -> 't/x.jpg') and later resolved against an image root.
"""
from __future__ import annotations

import dataclasses
import os

from experiments.mmiu.tasks import RELATION_OF_KEY, RELATIONS, paper_task
from mmjax.evals.choice import parse_options
from mmjax.evals.records import read_records


@dataclasses.dataclass(frozen=True)
class MMIUExample:
  """One question. key: the data's `task` field; task: its paper task (split keys merged);
  images: normalised relative paths, in order; gold: the gold letter, upper case, or None when the
  record has none; options: letter -> text, parsed from `options`."""
  key: str
  task: str
  relation: str
  question: str
  context: str
  options: dict[str, str]
  images: tuple[str, ...]
  gold: str | None
  source: str = ''


def normalise_path(path: str) -> str:
  """Strips leading './' and '../<folder>/' from a release path; absolute paths stay as they are."""
  p = path.replace('\\', '/')
  if os.path.isabs(p):
    return p
  while p.startswith('./'):
    p = p[2:]
  if p.startswith('../'):
    p = p[3:].split('/', 1)[1] if '/' in p[3:] else ''
  if not p:
    raise ValueError(f'image path {path!r} names no file')
  return p


def relation_of(key: str, images: tuple[str, ...]) -> str | None:
  """The relation folder of the first image path when it has one (the release's layout), else the
  relation of a known task key, else None."""
  first = images[0].split('/', 1)[0] if images else ''
  return first if first in RELATIONS else RELATION_OF_KEY.get(key)


def _field(record: dict, name: str, where: str):
  if name not in record:
    raise ValueError(f'{where}: missing field {name!r} (has {sorted(record)})')
  return record[name]


def _flatten(record: dict, where: str) -> dict:
  """A nested mmiu.jsonl record in the flat layout."""
  inp, out = record['input'], record.get('output')
  return {'task': _field(record, 'task', where), 'options': record.get('options', ''),
          'question': _field(inp, 'question', where), 'context': _field(inp, 'context', where),
          'input_image_path': _field(inp, 'input_image_path', where),
          'output': out.get('output_text') if isinstance(out, dict) else out,
          'source': record.get('source', '')}


def example_from_record(record: dict, where: str) -> MMIUExample:
  """Parses one flat or nested record; `where` names it in errors."""
  if isinstance(record.get('input'), dict):
    record = _flatten(record, where)
  key = str(_field(record, 'task', where))
  paths = _field(record, 'input_image_path', where)
  if isinstance(paths, str):
    paths = [paths]
  if not isinstance(paths, (list, tuple)) or not paths:
    raise ValueError(f'{where}: input_image_path must be a non-empty list of paths, got {paths!r}')
  images = tuple(normalise_path(str(p)) for p in paths)
  relation = relation_of(key, images)
  if relation is None:
    raise ValueError(f'{where}: unknown task {key!r} and its image paths name no relation folder '
                     f'({", ".join(RELATIONS)}), so its relation is unknown')
  gold = _field(record, 'output', where)
  gold = None if gold is None else (str(gold).strip().upper() or None)
  return MMIUExample(
      key=key, task=paper_task(key), relation=relation,
      question=str(_field(record, 'question', where)), context=str(_field(record, 'context', where)),
      options=parse_options(str(record.get('options') or '')), images=images, gold=gold,
      source=str(record.get('source') or ''))


def load_mmiu(path: str) -> list[MMIUExample]:
  """The examples of an MMIU data file (.json, .jsonl or .parquet), in file order."""
  return [example_from_record(r, f'{path}: record {i}') for i, r in enumerate(read_records(path))]


def resolve_image(path: str, relation: str, image_root: str) -> str:
  """The file of a normalised image path: image_root/path, or image_root/<relation>/path when only
  that exists (all.json's task-only paths against the release's relation folders)."""
  if os.path.isabs(path):
    return path
  direct = os.path.join(image_root, path)
  if os.path.exists(direct):
    return direct
  nested = os.path.join(image_root, relation, path)
  return nested if os.path.exists(nested) else direct
