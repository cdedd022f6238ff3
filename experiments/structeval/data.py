"""Readers for StructEval's data: the released v1 benchmark files and the generator's output.

A struct file is a JSON list of seeds: {question, choices[4], answer (int 0-3), subject, [idx], Bloom questions,
concept questions}, in one of two layouts:
- released v1 (`struct_benchmark/struct_data/.../test_v1_gpt-4o-mini.json`): `bloom_questions` is a list of
  {level (one of LEVELS), question, A-D, answer (a letter), topic_wiki_name, topic_wiki_id}; `concept_questions` a
  list of {question, A-D, answer, concept_wiki_name, concept_wiki_id};
- the generator's output (`struct_<split>_<model>.json`, struct_generate/data_combine.py): `bloom_questions` maps a
  level key (LEVEL_KEYS) to its questions, the concept questions sit in `entities[].concept_questions` (the entity's
  `name` is the concept), and each question carries its official id `question_idx`.
`dev.json` beside a v1 file holds seed items only (question, choices, answer, idx): the few-shot pool.

The release lays the files out per benchmark and, for MMLU, per subject: struct_mmlu/<subject>/*.json,
struct_openbookqa/*.json, struct_arc_challenge/*.json. An item's `source` is that folder path ('struct_mmlu/anatomy',
'struct_openbookqa'): the unit the official harness reports accuracy for.

Flattening follows the official loaders (StructMMLU_V1 and co. in the c-box/opencompass fork): per file, per seed, its
Bloom questions then its concept questions. The seed question is not an item there; `include_seeds` appends the seeds
after every Struct item, so that positions 0..n-1 (the ids of a response file) stay the official order. An item's id
is '<source>/<question_idx>': the generator's '<seed>-bloom-<level key>-<k>' / '<seed>-concept-<entity>-<k>', where
<seed> is the seed's `idx` (else its position in the file). The v1 files dropped question_idx, so there it is rebuilt
in the same form: <entity> numbers the seed's concepts in order of first appearance and k counts the kept questions
of the level or entity (the generator's k also counts the ones its filter removed). Seeds are '<source>/<seed>-seed'.
"""
from __future__ import annotations

import collections
import dataclasses
import os

from mmjax.evals.records import read_json_list

LEVELS = ('remembering', 'understanding', 'applying', 'analyzing', 'evaluating', 'creating')
# A level's key in the generator's files and ids (struct_generate/bloom_generation.py).
LEVEL_KEYS = {'remembering': 'remember', 'understanding': 'understand', 'applying': 'apply', 'analyzing': 'analyze',
              'evaluating': 'evaluation', 'creating': 'create'}
LETTERS = 'ABCD'
DEV_FILE = 'dev.json'


@dataclasses.dataclass(frozen=True)
class Seed:
  """One seed question (a struct file's seed or a dev.json record). answer: the index 0-3 of the right choice."""
  question: str
  choices: tuple[str, ...]
  answer: int
  subject: str = ''
  idx: int | None = None


@dataclasses.dataclass(frozen=True)
class StructItem:
  """One four-option question. kind: 'bloom', 'concept' or 'seed'; level: the Bloom level ('' otherwise); concept:
  the concept's Wikipedia title ('' otherwise); options: letter -> text for A-D; answer: the right letter; seed: the
  seed's number in its file (see the module docstring); wiki_id: the page the question was written from."""
  id: str
  source: str
  seed: int
  kind: str
  question: str
  options: dict[str, str]
  answer: str
  level: str = ''
  concept: str = ''
  wiki_id: str = ''

  @property
  def dataset(self) -> str:
    """The benchmark folder: 'struct_mmlu', 'struct_openbookqa', ..."""
    return self.source.split('/', 1)[0]

  @property
  def subject(self) -> str:
    """The MMLU subject ('' for a benchmark without subject folders)."""
    return self.source.split('/', 1)[1] if '/' in self.source else ''

  @property
  def seed_key(self) -> str:
    """The seed the item derives from, unique across files: '<source>/<seed>'."""
    return f'{self.source}/{self.seed}'


def _field(record, name: str, where: str, kind: type | tuple[type, ...] = str):
  if not isinstance(record, dict):
    raise ValueError(f'{where}: expected an object, got {type(record).__name__}')
  if name not in record:
    raise ValueError(f'{where}: missing field {name!r} (has {sorted(record)})')
  value = record[name]
  if not isinstance(value, kind) or isinstance(value, bool):
    kinds = ' or '.join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
    raise ValueError(f'{where}: field {name!r} must be a {kinds}, got {value!r}')
  return value


def _seed(record, where: str) -> Seed:
  choices = _field(record, 'choices', where, list)
  if len(choices) != 4 or not all(isinstance(c, str) for c in choices):
    raise ValueError(f'{where}: field \'choices\' must hold 4 strings, got {choices!r}')
  answer = _field(record, 'answer', where, int)
  if not 0 <= answer < 4:
    raise ValueError(f'{where}: field \'answer\' must be 0-3, got {answer}')
  idx = record.get('idx')
  return Seed(_field(record, 'question', where), tuple(choices), answer, str(record.get('subject', '')),
              idx if isinstance(idx, int) and not isinstance(idx, bool) else None)


def _question(record, where: str) -> tuple[str, dict[str, str], str]:
  options = {k: _field(record, k, where) for k in LETTERS}
  answer = _field(record, 'answer', where).strip()
  if answer not in LETTERS:
    raise ValueError(f"{where}: field 'answer' must be one of A, B, C, D, got {answer!r}")
  return _field(record, 'question', where), options, answer


def _read_list(path: str) -> list:
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path}: no such StructEval file')
  return read_json_list(path, 'seeds')


def _bloom(record, where: str) -> list[tuple[dict, str]]:
  """(question, where) of a seed's Bloom questions: a list (v1) or lists under level keys (generator)."""
  value = _field(record, 'bloom_questions', where, (list, dict))
  if isinstance(value, list):
    return [(q, f'{where}: bloom_questions[{j}]') for j, q in enumerate(value)]
  return [(q, f'{where}: bloom_questions[{key!r}][{j}]')
          for key, qs in value.items() for j, q in enumerate(_field(value, key, f'{where}: bloom_questions', list))]


def _concepts(record, where: str) -> list[tuple[dict, str, int, str, str]]:
  """(question, where, entity index, concept name, wiki id) of a seed's concept questions: a list (v1; an entity's
  index is the order its concept first appears in) or lists under `entities` (generator)."""
  if 'concept_questions' in record or 'entities' not in record:
    out, entities = [], {}
    for j, q in enumerate(_field(record, 'concept_questions', where, list)):
      at = f'{where}: concept_questions[{j}]'
      name = _field(q, 'concept_wiki_name', at)
      out.append((q, at, entities.setdefault(name, len(entities)), name,
                  str(_field(q, 'concept_wiki_id', at, (str, int)))))
    return out
  out = []
  for e, entity in enumerate(_field(record, 'entities', where, list)):
    at = f'{where}: entities[{e}]'
    name, wiki = _field(entity, 'name', at), entity.get('wiki_info') or {}
    out += [(q, f'{at}: concept_questions[{j}]', e, name, str(wiki.get('wiki_id', '')))
            for j, q in enumerate(_field(entity, 'concept_questions', at, list))]
  return out


def read_struct_file(path: str, source: str, include_seeds: bool = False) -> tuple[list[StructItem], list[StructItem]]:
  """(the Struct items of one struct file in the official order, its seeds as items when include_seeds else [])."""
  items, seeds = [], []
  for i, record in enumerate(_read_list(path)):
    where = f'{path}: seed {i}'
    seed = _seed(record, where)
    number = i if seed.idx is None else seed.idx
    entries = []  # (question, where, kind, id stem, level, concept, wiki id)
    for q, at in _bloom(record, where):
      level = _field(q, 'level', at)
      if level not in LEVELS:
        raise ValueError(f"{at}: field 'level' must be one of {', '.join(LEVELS)}, got {level!r}")
      topic = record.get('topic_wiki_info') if isinstance(record.get('topic_wiki_info'), dict) else {}
      wiki = str(q.get('topic_wiki_id', topic.get('wiki_id', '')))  # v1: per question; generator: per seed
      entries.append((q, at, 'bloom', f'bloom-{LEVEL_KEYS[level]}', level, '', wiki))
    entries += [(q, at, 'concept', f'concept-{entity}', '', concept, wiki)
                for q, at, entity, concept, wiki in _concepts(record, where)]
    seen: dict[str, int] = {}
    for q, at, kind, stem, level, concept, wiki in entries:
      question, options, answer = _question(q, at)
      k = seen[stem] = seen.get(stem, -1) + 1
      official = q.get('question_idx')
      local = official if isinstance(official, str) and official else f'{number}-{stem}-{k}'
      items.append(StructItem(f'{source}/{local}', source, number, kind, question, options, answer, level, concept,
                              wiki))
    if include_seeds:
      seeds.append(StructItem(f'{source}/{number}-seed', source, number, 'seed', seed.question,
                              dict(zip(LETTERS, seed.choices)), LETTERS[seed.answer]))
  return items, seeds


def read_dev(path: str) -> list[Seed]:
  """The seed records of a dev.json file, in order; errors name the file and the record."""
  return [_seed(r, f'{path}: record {i}') for i, r in enumerate(_read_list(path))]


def _source(folder: str, top: str) -> str:
  """The folder path from the nearest folder named struct_* (at or below `top`) down to `folder`; `folder`'s own
  name when there is none."""
  parts = os.path.relpath(folder, top).replace(os.sep, '/').split('/')
  if parts == ['.']:
    parts = []
  parts = [os.path.basename(top)] + parts
  named = [i for i, p in enumerate(parts) if p.startswith('struct_')]
  return '/'.join(parts[named[-1]:]) if named else parts[-1]


def struct_files(path: str) -> list[tuple[str, str]]:
  """(file, source) of every struct file under `path` (a struct file or a folder of them), sorted by path.

  A folder's files are its *.json at any depth except dev.json. A file's source is its folder path from the nearest
  folder named struct_* ('struct_mmlu/anatomy', 'struct_openbookqa'), looking up to two levels above a single file;
  else its folder's name.
  """
  path = os.path.abspath(path)
  if os.path.isfile(path):
    folder = os.path.dirname(path)
    return [(path, _source(folder, os.path.dirname(os.path.dirname(folder))))]
  if not os.path.isdir(path):
    raise FileNotFoundError(f'{path}: no such StructEval file or folder')
  found = []
  for folder, _, names in os.walk(path):
    found += [(os.path.join(folder, n), _source(folder, path)) for n in names if n.endswith('.json') and n != DEV_FILE]
  if not found:
    raise ValueError(f'{path}: no struct files (*.json other than {DEV_FILE})')
  return sorted(found)


def load_struct(path: str, include_seeds: bool = False) -> list[StructItem]:
  """Every Struct item under `path` (see `struct_files`) in the official order, then the seeds when include_seeds.

  Raises ValueError naming the file and the seed index of a missing or bad field, on two files of one source (their
  seed numbers would collide) and on an id that occurs twice.
  """
  items, seeds, sources = [], [], {}
  for file, source in struct_files(path):
    if source in sources:
      raise ValueError(f'{file} and {sources[source]} are both struct files of {source}; keep one per folder')
    sources[source] = file
    got, got_seeds = read_struct_file(file, source, include_seeds)
    items += got
    seeds += got_seeds
  if not items:
    raise ValueError(f'{path}: no Bloom or concept questions')
  twice = [i for i, n in collections.Counter(item.id for item in items + seeds).items() if n > 1]
  if twice:
    raise ValueError(f'{path}: {len(twice)} item ids occur more than once (seeds with the same idx?), '
                     f'e.g. {twice[0]!r}')
  return items + seeds
