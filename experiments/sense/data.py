"""Spider and BIRD on disk: readers (and writers, for generated trees) of the official layouts, and the prompt.

Spider: `train_spider.json` / `dev.json` (items with db_id, question, query), `tables.json`,
`database/<db>/<db>.sqlite` (the test suite adds neighbour databases beside each one), gold files of `SQL\\tdb_id`
lines (`dev_gold.sql`) and prediction files of one SQL per line.
BIRD: `dev.json` / `train.json` (question_id, db_id, question, evidence, SQL, difficulty),
`dev_databases/<db>/<db>.sqlite`, the gold file `dev_gold.sql` (or `dev.sql`) of `SQL\\tdb_id` lines and predictions
as a JSON dict {"0": "SQL\\t----- bird -----\\tdb_id", ...}.

The prompt (spec section 3, identical for SFT, weak sampling and DPO): the database's tables as `CREATE TABLE`
statements (read from the database file itself, so Spider, BIRD and generated databases render alike), optionally a
few example rows, BIRD's evidence, the question and the instruction; the target is the SQL text alone.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import sqlite3
from collections.abc import Sequence

from mmjax.evals.records import read_json, read_json_list

BIRD_SEPARATOR = '\t----- bird -----\t'
INSTRUCTION = 'Answer with one valid SQLite query and nothing else.'


@dataclasses.dataclass(frozen=True)
class Text2SqlExample:
  """One question: the database it asks about, the question, its gold SQL, BIRD's evidence and difficulty."""
  db_id: str
  question: str
  sql: str
  evidence: str = ''
  difficulty: str = ''


def _load_json_list(path: str) -> list:
  return read_json_list(path, 'examples')


def _fields(path: str, i: int, item: object, names: Sequence[str]) -> list:
  if not isinstance(item, dict) or any(n not in item for n in names):
    missing = [n for n in names if not isinstance(item, dict) or n not in item]
    raise ValueError(f'{path}: record {i}: missing field(s) {missing}')
  return [item[n] for n in names]


def read_spider_examples(path: str) -> list[Text2SqlExample]:
  """The examples of a Spider file (train_spider.json, train_others.json, dev.json)."""
  return [Text2SqlExample(*_fields(path, i, item, ('db_id', 'question', 'query')))
          for i, item in enumerate(_load_json_list(path))]


def read_bird_examples(path: str) -> list[Text2SqlExample]:
  """The examples of a BIRD file (train.json, dev.json); difficulty is '' where the file has none (train)."""
  out = []
  for i, item in enumerate(_load_json_list(path)):
    db_id, question, sql, evidence = _fields(path, i, item, ('db_id', 'question', 'SQL', 'evidence'))
    out.append(Text2SqlExample(db_id, question, sql, evidence or '', item.get('difficulty', '')))
  return out


def read_tables(path: str) -> dict[str, dict]:
  """Spider's tables.json by db_id (table_names_original, column_names_original, column_types, primary_keys,
  foreign_keys as the file has them)."""
  tables = {}
  for i, entry in enumerate(_load_json_list(path)):
    _fields(path, i, entry, ('db_id', 'table_names_original', 'column_names_original', 'column_types'))
    tables[entry['db_id']] = entry
  return tables


def _lines(path: str) -> list[str]:
  """The file's lines without their line ends; a final newline does not make an extra empty line."""
  with open(path, encoding='utf-8') as f:
    return f.read().splitlines()


def read_gold_file(path: str) -> list[tuple[str, str]]:
  """(sql, db_id) of every non-empty `SQL\\tdb_id` line (blank lines, SParC's turn separators, are skipped)."""
  out = []
  for n, line in enumerate(_lines(path), 1):
    if not line.strip():
      continue
    sql, sep, db_id = line.strip().rpartition('\t')
    if not sep or not db_id.strip():
      raise ValueError(f'{path}:{n}: a gold line must be SQL<TAB>db_id, got {line[:80]!r}')
    out.append((sql.strip(), db_id.strip()))
  return out


def read_spider_predictions(path: str) -> list[str]:
  """One predicted SQL per line, in gold order (text after a tab, e.g. a db_id, is ignored as the official script
  does); an empty line is an empty prediction, which fails to execute."""
  return [line.strip().split('\t')[0] for line in _lines(path)]


def read_bird_predictions(path: str) -> list[tuple[str, str]]:
  """(sql, db_id) per key 0..n-1 of BIRD's prediction JSON {"i": "SQL\\t----- bird -----\\tdb_id"}; a value that
  is not a string is an empty prediction, a string without the separator is all SQL (db_id '')."""
  data = read_json(path)
  if not isinstance(data, dict):
    raise ValueError(f'{path}: BIRD predictions must be a JSON object {{"0": "SQL\\t----- bird -----\\tdb_id"}}')
  keys = sorted(data, key=lambda k: int(k) if str(k).isdigit() else -1)
  if keys != [str(i) for i in range(len(keys))]:
    raise ValueError(f'{path}: keys must be "0".."{len(keys) - 1}" (one per gold query), got {keys[:5]}...')
  out = []
  for k in keys:
    value = data[k] if isinstance(data[k], str) else ''
    sql, sep, db_id = value.partition(BIRD_SEPARATOR)
    out.append((sql.strip(), db_id.strip() if sep else ''))
  return out


def check_counts(gold_path: str, n_gold: int, pred_path: str, n_pred: int) -> None:
  """ValueError naming both files unless there is one prediction per gold query."""
  if n_pred != n_gold:
    less = 'fewer' if n_pred < n_gold else 'more'
    raise ValueError(f'predictions {pred_path} has {n_pred} entries, {less} than the {n_gold} gold queries of '
                     f'{gold_path}: give one prediction per gold query, in gold order')


def database_path(db_root: str, db_id: str) -> str:
  """`<db_root>/<db_id>/<db_id>.sqlite`; FileNotFoundError naming the db_id when it does not exist."""
  path = os.path.join(db_root, db_id, f'{db_id}.sqlite')
  if not os.path.isfile(path):
    raise FileNotFoundError(f"no database for db_id '{db_id}': {path} does not exist (database root {db_root})")
  return path


def _ident(name: str) -> str:
  return name if re.fullmatch(r'[A-Za-z_]\w*', name) else '`' + name.replace('`', '``') + '`'


def schema_prompt(db_path: str, example_rows: int = 0) -> str:
  """The database's tables as CREATE TABLE statements (columns with their declared types, primary and foreign keys),
  in the order the file defines them; with example_rows > 0 each is followed by that many rows in a comment.
  Cached per file version (path and modification time)."""
  return _schema_prompt(os.path.abspath(db_path), os.stat(db_path).st_mtime_ns, example_rows)


@functools.lru_cache(maxsize=256)
def _schema_prompt(db_path: str, mtime_ns: int, example_rows: int) -> str:
  del mtime_ns  # part of the cache key only
  conn = sqlite3.connect(f'file:{db_path}?mode=ro', uri=True)
  try:
    tables = [r[0] for r in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY rowid")]
    blocks = []
    for table in tables:
      columns = conn.execute(f'PRAGMA table_info({_ident(table)})').fetchall()  # cid, name, type, notnull, dflt, pk
      keys = [c[1] for c in sorted(columns, key=lambda c: c[5]) if c[5]]
      lines = [f'  {_ident(c[1])} {c[2]}'.rstrip() + (' PRIMARY KEY' if keys == [c[1]] else '') for c in columns]
      if len(keys) > 1:
        lines.append(f"  PRIMARY KEY ({', '.join(map(_ident, keys))})")
      for fk in conn.execute(f'PRAGMA foreign_key_list({_ident(table)})').fetchall():  # id, seq, table, from, to
        lines.append(f'  FOREIGN KEY ({_ident(fk[3])}) REFERENCES {_ident(fk[2])}'
                     + (f'({_ident(fk[4])})' if fk[4] else ''))
      block = f'CREATE TABLE {_ident(table)} (\n' + ',\n'.join(lines) + '\n);'
      if example_rows > 0:
        rows = conn.execute(f'SELECT * FROM {_ident(table)} LIMIT {int(example_rows)}').fetchall()
        block += (f'\n/* {len(rows)} example rows of {table}:\n'
                  + '\n'.join('\t'.join(map(str, r)) for r in rows) + '\n*/')
      blocks.append(block)
  finally:
    conn.close()
  return '\n\n'.join(blocks)


def render_prompt(schema: str, question: str, evidence: str = '') -> str:
  """The prompt for one question: schema (see schema_prompt), BIRD's evidence when there is one, the question and
  the instruction. The model's answer is the SQL text alone."""
  parts = [schema, '']
  if evidence.strip():
    parts.append(f'-- Evidence: {evidence.strip()}')
  parts += [f'-- Question: {question.strip()}', f'-- {INSTRUCTION}', '']
  return '\n'.join(parts)


# Writers of the same layouts, for generated trees (the smoke variant and tests).

def write_database(path: str, statements: Sequence[str]) -> str:
  """A new SQLite file at `path` built by `statements` (CREATE TABLE / INSERT ...)."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  if os.path.exists(path):
    os.remove(path)
  conn = sqlite3.connect(path)
  try:
    for statement in statements:
      conn.execute(statement)
    conn.commit()
  finally:
    conn.close()
  return path


def write_gold_file(path: str, pairs: Sequence[tuple[str, str]]) -> str:
  """A gold file of `SQL\\tdb_id` lines from (sql, db_id) pairs."""
  with open(path, 'w', encoding='utf-8') as f:
    f.writelines(f'{sql}\t{db_id}\n' for sql, db_id in pairs)
  return path


def write_spider_predictions(path: str, sqls: Sequence[str]) -> str:
  """A Spider prediction file: one SQL per line (line breaks inside a query become spaces)."""
  with open(path, 'w', encoding='utf-8') as f:
    f.writelines(' '.join(sql.splitlines()) + '\n' for sql in sqls)
  return path


def write_bird_predictions(path: str, pairs: Sequence[tuple[str, str]]) -> str:
  """BIRD's prediction JSON from (sql, db_id) pairs."""
  with open(path, 'w', encoding='utf-8') as f:
    json.dump({str(i): f'{sql}{BIRD_SEPARATOR}{db_id}' for i, (sql, db_id) in enumerate(pairs)}, f, indent=1)
  return path
