"""Text-to-SQL execution accuracy: the Spider test-suite metric and BIRD EX, over executed result rows.

Spider (taoyds/test-suite-sql-eval, the official metric since 2020): both queries are preprocessed (`> =` -> `>=`,
YEAR(CURDATE()) -> 2020, DISTINCT removed unless keep_distinct), run on every `.sqlite` in the database's folder
(the test suite's neighbour databases; the original alone is plain EX), and the prediction is right when on every one
of them its rows equal the gold rows as a multiset, in order when the gold query has ORDER BY, up to a permutation
of the columns. Hardness (easy / medium / hard / extra) counts the gold query's SQL components as the official
script does, on our own parse of it (`spider_hardness`).

BIRD (DAMO-ConvAI bird evaluation.py, newest version): both queries run on the database; the prediction is right
when the sets of rows, each row's values sorted, are equal (row order, duplicates and column order ignored).

Departures from the official scripts, both deliberate: a gold query that fails or times out makes the example
wrong and is counted (the Spider script asserts instead; BIRD's older script compared error sentinels, so an
erroring gold and prediction matched), and the timeouts preempt (mmjax.evals.sql), where the official ones cannot.
The executor is a callable `execute([(db_path, sql), ...]) -> [ExecResult, ...]` (ok, rows, error, error_kind as
in mmjax.evals.sql), so the comparison logic here is pure and an SqlPool runs the queries in parallel.
"""
from __future__ import annotations

import dataclasses
import os
import random
import re
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
  from mmjax.evals.sql import ExecResult

Row = tuple
Execute = Callable[[Sequence[tuple[str, str]]], Sequence['ExecResult']]
HARDNESS_LEVELS = ('easy', 'medium', 'hard', 'extra')
BIRD_DIFFICULTIES = ('simple', 'moderate', 'challenging')
# Why an example is right or wrong: a failed gold query is reported before the prediction's own failure.
REASONS = ('match', 'mismatch', 'pred_error', 'pred_timeout', 'gold_error', 'gold_timeout')


@dataclasses.dataclass(frozen=True)
class Verdict:
  """One example's score: correct, why (one of REASONS) and the failing query's error message, if any."""
  correct: bool
  reason: str
  error: str = ''


# ---------------------------------------------------------------------------------------------------------------
# Result comparison (pure functions over fetched rows).

def _unordered_row(row: Row) -> Row:
  """The row's values in a canonical order (test-suite's key: the value's text, then its type name)."""
  return tuple(sorted(row, key=lambda v: str(v) + str(type(v))))


def _column_permutations(gold: Sequence[Row], pred: Sequence[Row]):
  """Candidate maps from gold column i to pred column perm[i]: a pred column can only stand for a gold column whose
  values contain it (checked on up to 20 sampled pred rows, a necessary condition, so the sample changes speed only,
  never the verdict); only injective maps within those constraints are generated."""
  n = len(gold[0])
  allowed = [set(range(n)) for _ in range(n)]
  if n > 3:
    gold_values = [{row[i] for row in gold} for i in range(n)]
    for row in random.Random(0).sample(list(pred), min(20, len(pred))):
      for i in range(n):
        allowed[i] = {j for j in allowed[i] if row[j] in gold_values[i]}

  def extend(prefix: tuple[int, ...]):
    if len(prefix) == n:
      yield prefix
      return
    for j in sorted(allowed[len(prefix)] - set(prefix)):
      yield from extend(prefix + (j,))
  return extend(())


def spider_rows_match(gold: Sequence[Row], pred: Sequence[Row], order_matters: bool) -> bool:
  """Test-suite denotation equality: equal as multisets of rows (as lists when order_matters) under some permutation
  of the prediction's columns. Two empty results match whatever their columns; 1 and 1.0 are equal values."""
  if not gold and not pred:
    return True
  if len(gold) != len(pred) or len(gold[0]) != len(pred[0]):
    return False
  gold_unordered = [_unordered_row(r) for r in gold]
  pred_unordered = [_unordered_row(r) for r in pred]
  if order_matters and gold_unordered != pred_unordered:
    return False
  if not order_matters and set(gold_unordered) != set(pred_unordered):
    return False
  gold_list, gold_bag = list(map(tuple, gold)), Counter(map(tuple, gold))
  for perm in _column_permutations(gold, pred):
    permuted = [tuple(row[j] for j in perm) for row in pred]
    if (permuted == gold_list) if order_matters else (Counter(permuted) == gold_bag):
      return True
  return False


def _bird_key(value: Any) -> tuple:
  """Orders mixed values without a TypeError: NULL, numbers (1 and 1.0 together), text, bytes."""
  if value is None:
    return (0, 0)
  if isinstance(value, (int, float)):
    return (1, value)
  if isinstance(value, str):
    return (2, value)
  return (3, bytes(value))


def bird_rows_match(gold: Sequence[Row], pred: Sequence[Row]) -> bool:
  """BIRD EX: set(rows) equality with each row's values sorted (order, duplicates and column order ignored)."""
  def canon(rows):
    return {tuple(sorted(row, key=_bird_key)) for row in rows}
  return canon(gold) == canon(pred)


# ---------------------------------------------------------------------------------------------------------------
# SQL text: tokens, the official preprocessing, hardness.

_TOKEN = re.compile(r"""
    (?P<space>\s+|--[^\n]*|/\*.*?\*/)
  | (?P<string>'(?:[^']|'')*'|"(?:[^"]|"")*")
  | (?P<quoted>`[^`]*`|\[[^\]]*\])
  | (?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)
  | (?P<word>[A-Za-z_][\w$]*(?:\.(?:[A-Za-z_][\w$]*|\*|`[^`]*`))?)
  | (?P<op>>=|<=|!=|<>|==|\|\||[-+*/%(),;=<>.!])
  | (?P<other>.)""", re.VERBOSE | re.DOTALL)


def _lex(sql: str) -> list[tuple[str, str]]:
  """(kind, text) of every token of `sql`, whitespace and comments included (so the texts re-join to `sql`)."""
  return [(m.lastgroup, m.group()) for m in _TOKEN.finditer(sql)]


def remove_distinct(sql: str) -> str:
  """`sql` without its DISTINCT keywords (test-suite's default, COUNT(DISTINCT x) included); strings untouched."""
  return ''.join(text for kind, text in _lex(sql) if not (kind == 'word' and text.lower() == 'distinct'))


def spider_preprocess(sql: str, keep_distinct: bool = False) -> str:
  """The test-suite's rewrites before execution: '> =' / '< =' / '! =' joined, YEAR(CURDATE()) -> 2020, DISTINCT
  removed unless keep_distinct."""
  sql = sql.replace('> =', '>=').replace('< =', '<=').replace('! =', '!=')
  sql = re.sub(r'YEAR\s*\(\s*CURDATE\s*\(\s*\)\s*\)\s*', '2020', sql, flags=re.IGNORECASE)
  return sql if keep_distinct else remove_distinct(sql)


def order_matters(gold_sql: str) -> bool:
  """Row order counts only when the (preprocessed) gold query has ORDER BY (the test-suite's literal check)."""
  return 'order by' in gold_sql.lower()


CLAUSE_KEYWORDS = ('select', 'from', 'where', 'group', 'order', 'limit', 'intersect', 'union', 'except')
JOIN_KEYWORDS = ('join', 'on', 'as')
WHERE_OPS = ('not', 'between', '=', '>', '<', '>=', '<=', '!=', 'in', 'like', 'is', 'exists')
UNIT_OPS = ('none', '-', '+', '*', '/')
AGG_OPS = ('none', 'max', 'min', 'count', 'sum', 'avg')
SQL_OPS = ('intersect', 'union', 'except')
JOIN_MODIFIERS = ('left', 'right', 'inner', 'outer', 'cross', 'natural', 'full')
_KEYWORDS = set(CLAUSE_KEYWORDS + JOIN_KEYWORDS + WHERE_OPS + SQL_OPS + JOIN_MODIFIERS) | {
    'and', 'or', 'asc', 'desc', 'having', 'by', 'distinct', 'null', 'case', 'when', 'then', 'else', 'end', 'offset'}
_OP_ALIASES = {'<>': '!=', '==': '='}


def _sql_tokens(sql: str) -> list[str]:
  """The official tokenisation: lower-cased tokens, string literals kept whole (with their quotes), and '!', '>',
  '<' merged with a following '='."""
  toks = []
  for kind, text in _lex(sql):
    if kind == 'space':
      continue
    if kind == 'string':
      toks.append(text)
    elif kind == 'quoted':
      toks.append(text.lower())
    else:
      text = _OP_ALIASES.get(text, text).lower()
      if text == '=' and toks and toks[-1] in ('!', '>', '<'):
        toks[-1] += '='
      else:
        toks.append(text)
  return toks


class _Parser:
  """The official process_sql grammar over tokens, without a schema (the counts never look at which column a name
  means). It accepts a little more than the official one (no AS before a table alias, comma and LEFT/INNER joins,
  function calls, CASE, IN lists, column aliases in SELECT, `<>`) and keeps its quirks that change the counts:
  a column-valued condition swallows the tokens up to the next ',', ')', AND or clause keyword (an OR after it
  included), and LIMIT counts whatever follows it."""

  def __init__(self, sql: str):
    self.toks = _sql_tokens(sql)

  def tok(self, idx: int) -> str:
    if idx >= len(self.toks):
      raise ValueError('unexpected end of the query')
    return self.toks[idx]

  def at(self, idx: int, *options: str) -> bool:
    return idx < len(self.toks) and self.toks[idx] in options

  def expect(self, idx: int, want: str) -> int:
    if self.tok(idx) != want:
      raise ValueError(f'expected {want!r} at token {idx}, got {self.tok(idx)!r}')
    return idx + 1

  def is_name(self, idx: int) -> bool:
    t = self.toks[idx] if idx < len(self.toks) else ''
    return t not in _KEYWORDS and (t[:1] in ('`', '[') or re.fullmatch(r'[^\W\d][\w$]*(\..+)?', t) is not None)

  def skip_parens(self, idx: int) -> int:
    """The index after the ')' matching the '(' at idx."""
    depth = 0
    while True:
      t = self.tok(idx)
      depth += (t == '(') - (t == ')')
      idx += 1
      if depth == 0:
        return idx

  def col(self, idx: int) -> tuple[int, str]:
    t = self.tok(idx)
    if t == 'case':  # CASE ... END: one opaque column
      depth, idx = 1, idx + 1
      while depth:
        depth += (self.tok(idx) == 'case') - (self.tok(idx) == 'end')
        idx += 1
      return idx, 'case'
    if t == '*':
      return idx + 1, t
    if not self.is_name(idx):
      raise ValueError(f'expected a column at token {idx}, got {t!r}')
    if self.at(idx + 1, '('):  # a function call other than an aggregate: one column
      return self.skip_parens(idx + 1), t
    return idx + 1, t

  def col_unit(self, idx: int) -> tuple[int, tuple]:
    block = self.at(idx, '(')
    idx += block
    if self.tok(idx) in AGG_OPS:
      agg = AGG_OPS.index(self.tok(idx))
      idx = self.expect(idx + 1, '(')
      distinct = self.at(idx, 'distinct')
      idx, col = self.col(idx + distinct)
      return self.expect(idx, ')'), (agg, col, distinct)
    distinct = self.at(idx, 'distinct')
    idx, col = self.col(idx + distinct)
    if block:
      idx = self.expect(idx, ')')
    return idx, (0, col, distinct)

  def val_unit(self, idx: int) -> tuple[int, tuple]:
    block = self.at(idx, '(')
    idx += block
    idx, unit1 = self.col_unit(idx)
    op, unit2 = 0, None
    if self.at(idx, *UNIT_OPS):
      op = UNIT_OPS.index(self.tok(idx))
      idx, unit2 = self.col_unit(idx + 1)
    if block:
      idx = self.expect(idx, ')')
    return idx, (op, unit1, unit2)

  def value(self, idx: int) -> tuple[int, Any]:
    block = self.at(idx, '(')
    idx += block
    t = self.tok(idx)
    if t == 'select':
      idx, val = self.sql(idx)
    elif t[0] in '\'"':
      val, idx = t, idx + 1
    elif t in ('null', 'not') or re.fullmatch(r'[-+]?(\d+\.?\d*|\.\d+)(e[-+]?\d+)?', t):
      val, idx = t, idx + 1 + (t == 'not' and self.at(idx + 1, 'null'))
    elif t in ('-', '+') and idx + 1 < len(self.toks) and re.fullmatch(r'[\d.].*', self.toks[idx + 1]):
      val, idx = t + self.toks[idx + 1], idx + 2
    else:  # a column: the official scan to the next ',', ')', AND or clause keyword decides where it ends
      end = idx
      while end < len(self.toks) and self.toks[end] not in (',', ')', 'and') + CLAUSE_KEYWORDS + JOIN_KEYWORDS:
        end += 1
      _, val = self.col_unit(idx)
      idx = end
    if block:
      while self.at(idx, ','):  # IN (v1, v2, ...)
        idx, _ = self.value(idx + 1)
      idx = self.expect(idx, ')')
    return idx, val

  def condition(self, idx: int) -> tuple[int, list]:
    conds = []
    while idx < len(self.toks):
      idx, val_unit = self.val_unit(idx)
      negated = self.at(idx, 'not')
      idx += negated
      if self.tok(idx) not in WHERE_OPS:
        raise ValueError(f'expected a comparison at token {idx}, got {self.tok(idx)!r}')
      op = WHERE_OPS.index(self.tok(idx))
      idx, val1 = self.value(idx + 1)
      val2 = None
      if op == WHERE_OPS.index('between'):
        idx, val2 = self.value(self.expect(idx, 'and'))
      conds.append((negated, op, val_unit, val1, val2))
      if self.at(idx, *CLAUSE_KEYWORDS, ')', ';', ',', *JOIN_KEYWORDS, *JOIN_MODIFIERS):
        break
      if self.at(idx, 'and', 'or'):
        conds.append(self.tok(idx))
        idx += 1
    return idx, conds

  def select(self, idx: int) -> tuple[int, tuple]:
    idx = self.expect(idx, 'select')
    distinct = self.at(idx, 'distinct')
    idx += distinct
    units = []
    while idx < len(self.toks) and self.tok(idx) not in CLAUSE_KEYWORDS:
      agg = 0
      if self.tok(idx) in AGG_OPS and self.at(idx + 1, '('):
        agg = AGG_OPS.index(self.tok(idx))
        idx += 1
      idx, val_unit = self.val_unit(idx)
      units.append((agg, val_unit))
      if self.at(idx, 'as'):
        idx += 2
      if self.at(idx, ','):
        idx += 1
    return idx, (distinct, units)

  def from_(self, start: int) -> tuple[int, list, list]:
    if 'from' not in self.toks[start:]:
      raise ValueError("no FROM clause")
    idx = self.toks.index('from', start) + 1
    table_units, conds = [], []
    while idx < len(self.toks):
      block = self.at(idx, '(')
      idx += block
      if self.tok(idx) == 'select':
        idx, sub = self.sql(idx)
        table_units.append(('sql', sub))
      else:
        while self.at(idx, 'join', ',', *JOIN_MODIFIERS):
          idx += 1
        if not self.is_name(idx):
          raise ValueError(f'expected a table at token {idx}, got {self.tok(idx)!r}')
        table_units.append(('table_unit', self.tok(idx)))
        idx += 1
        if self.at(idx, 'as'):
          idx += 2
        elif self.is_name(idx):
          idx += 1
      if self.at(idx, 'on'):
        idx, more = self.condition(idx + 1)
        conds += (['and'] if conds else []) + more
      if block:
        idx = self.expect(idx, ')')
        if self.is_name(idx) or self.at(idx, 'as'):  # a derived table's alias
          idx += 1 + self.at(idx, 'as')
      if self.at(idx, *CLAUSE_KEYWORDS, ')', ';'):
        break
    return idx, table_units, conds

  def group_by(self, idx: int) -> tuple[int, list]:
    units = []
    if not self.at(idx, 'group'):
      return idx, units
    idx = self.expect(idx + 1, 'by')
    while idx < len(self.toks) and not self.at(idx, *CLAUSE_KEYWORDS, ')', ';'):
      idx, unit = self.col_unit(idx)
      units.append(unit)
      if not self.at(idx, ','):
        break
      idx += 1
    return idx, units

  def order_by(self, idx: int) -> tuple[int, tuple | list]:
    if not self.at(idx, 'order'):
      return idx, []
    idx = self.expect(idx + 1, 'by')
    units, direction = [], 'asc'
    while idx < len(self.toks) and not self.at(idx, *CLAUSE_KEYWORDS, ')', ';'):
      idx, unit = self.val_unit(idx)
      units.append(unit)
      if self.at(idx, 'asc', 'desc'):
        direction = self.tok(idx)
        idx += 1
      if not self.at(idx, ','):
        break
      idx += 1
    return idx, (direction, units)

  def sql(self, start: int) -> tuple[int, dict]:
    block = self.at(start, '(')
    idx = start + block
    from_end, table_units, from_conds = self.from_(start)
    _, select = self.select(idx)
    out = {'select': select, 'from': {'table_units': table_units, 'conds': from_conds}}
    idx, out['where'] = self.condition(from_end + 1) if self.at(from_end, 'where') else (from_end, [])
    idx, out['groupBy'] = self.group_by(idx)
    idx, out['having'] = self.condition(idx + 1) if self.at(idx, 'having') else (idx, [])
    idx, out['orderBy'] = self.order_by(idx)
    out['limit'] = None
    if self.at(idx, 'limit'):
      out['limit'], idx = 1, idx + 2
      if self.at(idx, 'offset', ','):
        idx += 2
    while self.at(idx, ';'):
      idx += 1
    if block:
      idx = self.expect(idx, ')')
    while self.at(idx, ';'):
      idx += 1
    for op in SQL_OPS:
      out[op] = None
    if self.at(idx, *SQL_OPS):
      op = self.tok(idx)
      idx, out[op] = self.sql(idx + 1)
    return idx, out


def parse_spider_sql(sql: str) -> dict:
  """The official process_sql structure of `sql` (select, from, where, groupBy, having, orderBy, limit, intersect,
  union, except), with column names in place of schema ids; ValueError naming the query when it does not parse."""
  try:
    return _Parser(sql).sql(0)[1]
  except (ValueError, IndexError) as e:
    raise ValueError(f'cannot parse SQL for its hardness ({e}): {sql}') from None


def _cond_lists(sql: dict) -> tuple[list, list, list]:
  return sql['from']['conds'], sql['where'], sql['having']


def _count_component1(sql: dict) -> int:
  """WHERE, GROUP BY, ORDER BY, LIMIT, each join, each OR, each LIKE."""
  count = sum(bool(sql[k]) for k in ('where', 'groupBy', 'orderBy')) + (sql['limit'] is not None)
  count += max(len(sql['from']['table_units']) - 1, 0)
  count += sum(1 for conds in _cond_lists(sql) for t in conds[1::2] if t == 'or')
  count += sum(1 for conds in _cond_lists(sql) for c in conds[::2] if c[1] == WHERE_OPS.index('like'))
  return count


def _count_component2(sql: dict) -> int:
  """Nested queries: subqueries compared against in ON/WHERE/HAVING, and INTERSECT/UNION/EXCEPT."""
  nested = sum(isinstance(v, dict) for conds in _cond_lists(sql) for c in conds[::2] for v in (c[3], c[4]))
  return nested + sum(sql[op] is not None for op in SQL_OPS)


def _count_others(sql: dict) -> int:
  """More than one aggregate, select column, where condition or group-by column: one each.

  The official aggregate count tests element [0] of each unit, which for WHERE conditions is the NOT flag and for
  the HAVING list (conditions and their AND/OR) is the NOT flag or the connector's text: kept, since the official
  levels are what Spider results are reported on.
  """
  aggs = sum(agg != 0 for agg, _ in sql['select'][1])
  aggs += sum(bool(c[0]) for c in sql['where'][::2])
  aggs += sum(unit[0] != 0 for unit in sql['groupBy'])
  if sql['orderBy']:
    aggs += sum(unit[0] != 0 for val_unit in sql['orderBy'][1] for unit in val_unit[1:] if unit)
  aggs += sum(1 if isinstance(h, str) else bool(h[0]) for h in sql['having'])
  return ((aggs > 1) + (len(sql['select'][1]) > 1) + (len(sql['where']) > 1) + (len(sql['groupBy']) > 1))


def spider_hardness(sql: str) -> str:
  """The official Spider hardness level of a gold query: 'easy', 'medium', 'hard' or 'extra'."""
  parsed = parse_spider_sql(sql)
  c1, c2, others = _count_component1(parsed), _count_component2(parsed), _count_others(parsed)
  if c1 <= 1 and others == 0 and c2 == 0:
    return 'easy'
  if (others <= 2 and c1 <= 1 and c2 == 0) or (c1 <= 2 and others < 2 and c2 == 0):
    return 'medium'
  if ((others > 2 and c1 <= 2 and c2 == 0) or (2 < c1 <= 3 and others <= 2 and c2 == 0)
      or (c1 <= 1 and others == 0 and c2 <= 1)):
    return 'hard'
  return 'extra'


# ---------------------------------------------------------------------------------------------------------------
# Verdicts over executed results, and whole-file scoring through an executor.

def _failure(result: ExecResult, who: str) -> Verdict | None:
  if result.ok:
    return None
  kind = 'timeout' if result.error_kind == 'timeout' else 'error'
  return Verdict(False, f'{who}_{kind}', f'{result.error_kind}: {result.error}')


def spider_verdict(gold: Sequence[ExecResult], pred: Sequence[ExecResult], order_matters: bool) -> Verdict:
  """Test-suite verdict from the gold and predicted results on each database of the suite, in the same order: right
  only when every database's results match; the first database that fails or differs decides why not."""
  for g, p in zip(gold, pred, strict=True):
    failed = _failure(g, 'gold') or _failure(p, 'pred')
    if failed:
      return failed
    if not spider_rows_match(g.rows, p.rows, order_matters):
      return Verdict(False, 'mismatch')
  return Verdict(True, 'match')


def bird_verdict(gold: ExecResult, pred: ExecResult) -> Verdict:
  """BIRD EX verdict: a failure or timeout of either query scores 0 (never a match), else `bird_rows_match`."""
  failed = _failure(gold, 'gold') or _failure(pred, 'pred')
  if failed:
    return failed
  return Verdict(True, 'match') if bird_rows_match(gold.rows, pred.rows) else Verdict(False, 'mismatch')


def test_suite_databases(db_path: str) -> list[str]:
  """Every file in db_path's folder whose name contains '.sqlite' (the official rule), sorted: the test suite."""
  folder = os.path.dirname(db_path) or '.'
  return sorted(os.path.join(folder, n) for n in os.listdir(folder) if '.sqlite' in n)


def _run_unique(jobs: list[tuple[str, str]], execute: Execute) -> list[ExecResult]:
  """execute() over the distinct jobs only (a gold query shared by examples runs once per database)."""
  unique = list(dict.fromkeys(jobs))
  results = execute(unique)
  if len(results) != len(unique):
    raise RuntimeError(f'the executor returned {len(results)} results for {len(unique)} queries')
  by_job = dict(zip(unique, results))
  return [by_job[j] for j in jobs]


def score_spider(examples: Sequence[tuple[str, str, str]], execute: Execute, *, keep_distinct: bool = False,
                 test_suite: bool = True) -> list[Verdict]:
  """Verdicts of (gold_sql, pred_sql, db_path) examples: test-suite accuracy over every database in db_path's folder
  (test_suite=False: db_path only, plain EX)."""
  jobs, spans = [], []
  for gold, pred, db_path in examples:
    gold, pred = spider_preprocess(gold, keep_distinct), spider_preprocess(pred, keep_distinct)
    dbs = test_suite_databases(db_path) if test_suite else [db_path]
    spans.append((len(jobs), len(dbs), order_matters(gold)))
    jobs += [(db, gold) for db in dbs] + [(db, pred) for db in dbs]
  results = _run_unique(jobs, execute)
  return [spider_verdict(results[start:start + n], results[start + n:start + 2 * n], ordered)
          for start, n, ordered in spans]


def score_bird(examples: Sequence[tuple[str, str, str]], execute: Execute) -> list[Verdict]:
  """BIRD EX verdicts of (gold_sql, pred_sql, db_path) examples."""
  jobs = [job for gold, pred, db in examples for job in ((db, gold), (db, pred))]
  results = _run_unique(jobs, execute)
  return [bird_verdict(results[2 * i], results[2 * i + 1]) for i in range(len(examples))]
