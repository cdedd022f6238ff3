"""SENSE data synthesis: strong data from a large model, weak samples labelled by execution into preference pairs.

Strong data (spec section 1, stage 1): a generator writes one new data point per prompt, at a target difficulty, in
the format of 2 random examples: Domain, Schema (CREATE TABLE statements), Question, Answer (SQL). A generator is
any callable `prompts -> completions` (the suite's own model through mmjax.generate, wrapped to that signature) or
`OpenAIChatGenerator(url)` (mmjax.evals.openai_client), any OpenAI-compatible endpoint. Each completion is parsed,
its schema built in a scratch SQLite file (`build_schema_db`: an authorizer allows only table/index/view creation
and row writes, no ATTACH, PRAGMA or triggers; a deadline and a size cap), its SQL run there through the sandboxed
executor (mmjax.evals.sql), and it is dropped, counted by reason, if any step fails or it repeats an earlier item.
`synthesize_strong` writes what is kept in the Spider layout (a database per item, train_synth.json, synth_gold.sql)
with synthesis_report.json: counts kept and dropped by reason, and the domain balance.

Weak data (stage 2): a weak sampler writes several SQLs per training question from the same prompt as SFT
(data.render_prompt); each is executed and labelled chosen when its result equals the gold's (as a multiset, in
order when the gold has ORDER BY, columns up to permutation; DISTINCT kept), else rejected (wrong result or error).
Pairs share the prompt; at most `pairs_per_question` per question (1: the released "grouped-any-limit1" set).
"""
from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import os
import random
import re
import shutil
import sqlite3
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence

from experiments.sense import data
from mmjax.evals import text2sql
from mmjax.evals.openai_client import OpenAIChatGenerator  # noqa: F401 (synthesis.OpenAIChatGenerator)
from mmjax.evals.sql import ExecResult, SqlPool

DIFFICULTIES = ('easy', 'medium', 'hard')
DIFFICULTY_RULES = {
    'easy': 'the query uses a single table',
    'medium': 'the query needs joins or aggregate functions over several tables',
    'hard': 'the query combines several advanced constructs (nested queries, GROUP BY with HAVING, set operations, '
            'ORDER BY with LIMIT, several joins)',
}
OVER_REPRESENTED = ('education and universities', 'healthcare', 'travel and airlines', 'entertainment and media')
_OVER_REPRESENTED_WORDS = ('educat', 'universit', 'school', 'college', 'health', 'hospital', 'medic', 'travel',
                           'airline', 'flight', 'entertainment', 'media', 'movie', 'film')
DROP_REASONS = ('request_failed', 'parse', 'schema', 'sql_timeout', 'sql_denied', 'sql_syntax', 'sql_runtime',
                'sql_too_many_rows', 'duplicate')
Generator = Callable[[Sequence[str]], Sequence['str | None']]  # prompts -> completions (None: the request failed)
WeakSampler = Callable[[Sequence[data.Text2SqlExample], Sequence[str], int], Sequence[Sequence[str]]]


# ---------------------------------------------------------------------------------------------------------------
# Strong data: prompt, generators, parsing, validation.

@dataclasses.dataclass(frozen=True)
class SeedExample:
  """A data point shown to the generator: its schema (CREATE TABLE statements), question, SQL and domain."""
  schema: str
  question: str
  sql: str
  domain: str = ''


@dataclasses.dataclass(frozen=True)
class StrongItem:
  """One synthesized data point that passed every check."""
  domain: str
  schema: str
  question: str
  sql: str
  difficulty: str


def seed_examples(examples: Sequence[data.Text2SqlExample], db_root: str) -> list[SeedExample]:
  """SeedExamples of a dataset (e.g. Spider train): each database's CREATE TABLE schema as in the prompts
  (data.schema_prompt of <db_root>/<db>/<db>.sqlite), the question, the SQL, and the db_id as the domain."""
  return [SeedExample(data.schema_prompt(data.database_path(db_root, e.db_id)), e.question, e.sql,
                      e.db_id.replace('_', ' ')) for e in examples]


def _format_item(domain: str, schema: str, question: str, sql: str) -> str:
  return f'Domain: {domain}\nSchema:\n{schema.strip()}\nQuestion: {question.strip()}\nAnswer: {sql.strip()}'


def strong_prompt(examples: Sequence[SeedExample], difficulty: str) -> str:
  """The strong-data prompt (spec section 1): the examples, then a request for one new data point at `difficulty`
  (one of DIFFICULTIES) with a new domain, a sensible schema, a question and its SQL, in the same four fields."""
  if difficulty not in DIFFICULTY_RULES:
    raise ValueError(f'difficulty must be one of {DIFFICULTIES}, got {difficulty!r}')
  shown = '\n\n'.join(f'Example {i + 1}:\n' + _format_item(e.domain or 'unspecified', e.schema, e.question, e.sql)
                      for i, e in enumerate(examples))
  return (
      'You write training data for text-to-SQL. Here are examples of data points:\n\n'
      f'{shown}\n\n'
      f'Write one new data point of {difficulty} difficulty ({DIFFICULTY_RULES[difficulty]}):\n'
      '1. Domain: choose a domain of your own; avoid the over-represented ones ('
      + ', '.join(OVER_REPRESENTED) + ').\n'
      '2. Schema: SQLite CREATE TABLE statements with sensible tables, column types, primary and foreign keys.\n'
      f'3. Question: a natural-language question about this database, of {difficulty} difficulty.\n'
      '4. Answer: one correct SQLite query that answers the question.\n'
      'Reply with exactly these four fields in the format of the examples (Domain:, Schema:, Question:, Answer:) '
      'and nothing else.')


_FIELD = re.compile(r'^[ \t]*[#*]*[ \t]*(domain|schema|question|answer|sql)[ \t]*\**[ \t]*:[ \t]*\**[ \t]*',
                    re.IGNORECASE | re.MULTILINE)
_FENCE = re.compile(r'^```[\w-]*[ \t]*$|^```[ \t]*$', re.MULTILINE)


def parse_strong(text: str) -> dict[str, str] | None:
  """{'domain', 'schema', 'question', 'sql'} from a completion in the prompt's format (markdown bold, headings and
  code fences tolerated; 'SQL:' may stand for 'Answer:'), or None when a field is missing or empty (an answer of
  comments alone is empty)."""
  marks = list(_FIELD.finditer(text or ''))
  fields = {}
  for m, nxt in zip(marks, marks[1:] + [None]):
    name = m.group(1).lower().replace('answer', 'sql')
    value = _FENCE.sub('', text[m.end():nxt.start() if nxt else len(text)]).strip()
    fields.setdefault(name, value)
  if fields.get('sql'):
    fields['sql'] = '' if _blank(fields['sql']) else fields['sql'].strip().rstrip(';').strip()
  if not all(fields.get(k) for k in ('domain', 'schema', 'question', 'sql')):
    return None
  return {k: fields[k] for k in ('domain', 'schema', 'question', 'sql')}


_SCHEMA_ACTIONS = {sqlite3.SQLITE_CREATE_TABLE, sqlite3.SQLITE_CREATE_INDEX, sqlite3.SQLITE_CREATE_VIEW,
                   sqlite3.SQLITE_INSERT, sqlite3.SQLITE_UPDATE, sqlite3.SQLITE_DELETE, sqlite3.SQLITE_READ,
                   sqlite3.SQLITE_SELECT, sqlite3.SQLITE_FUNCTION, sqlite3.SQLITE_RECURSIVE, sqlite3.SQLITE_REINDEX,
                   sqlite3.SQLITE_TRANSACTION}


def _schema_authorizer(action: int, *args) -> int:
  del args
  return sqlite3.SQLITE_OK if action in _SCHEMA_ACTIONS else sqlite3.SQLITE_DENY


def build_schema_db(path: str, schema: str, *, timeout_s: float = 5.0, max_pages: int = 2048,
                    max_chars: int = 50_000) -> str:
  """Builds a new SQLite file at `path` from model-written `schema` (CREATE TABLE / INDEX / VIEW, INSERT ...);
  returns '' on success, else why it failed (and removes the file). Only those statements are allowed (no ATTACH,
  PRAGMA, triggers or extensions), within timeout_s seconds and max_pages pages (4 KiB each)."""
  if len(schema) > max_chars:
    return f'schema longer than {max_chars} characters'
  if os.path.exists(path):
    os.remove(path)
  conn = sqlite3.connect(path, isolation_level=None)
  deadline = time.monotonic() + timeout_s
  try:
    conn.execute(f'PRAGMA max_page_count = {int(max_pages)}')
    conn.set_authorizer(_schema_authorizer)
    conn.set_progress_handler(lambda: int(time.monotonic() > deadline), 10_000)
    conn.executescript(schema)
    conn.set_authorizer(None)
    tables = conn.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table'").fetchone()[0]
    error = '' if tables else 'the schema creates no table'
  except sqlite3.Error as e:
    error = f'{type(e).__name__}: {e}'.splitlines()[0]
  finally:
    conn.close()
  if error:
    os.remove(path)
  return error


def _normalise(text: str) -> str:
  return ' '.join(text.lower().split()).rstrip(';').strip()


@contextlib.contextmanager
def _executor(execute: text2sql.Execute | None, timeout_s: float) -> Iterator[text2sql.Execute]:
  """`execute` itself, or the map of a private SqlPool closed afterwards."""
  if execute is not None:
    yield execute
    return
  with SqlPool(min(4, os.cpu_count() or 1), timeout_s=timeout_s, progress=False) as pool:
    yield pool.map


def balance_report(items: Sequence[StrongItem]) -> dict:
  """Domain balance of kept items: count per normalised domain (most first), the largest share, per difficulty,
  and how many fall in the over-represented domains the prompt asks to avoid."""
  domains = Counter(_normalise(i.domain) for i in items)
  return {
      'domains': dict(domains.most_common()),
      'distinct_domains': len(domains),
      'largest_domain_share': max(domains.values()) / len(items) if items else 0.0,
      'difficulty': dict(Counter(i.difficulty for i in items)),
      'over_represented': sum(n for d, n in domains.items() if any(w in d for w in _OVER_REPRESENTED_WORDS)),
  }


def synthesize_strong(generator: Generator, seeds: Sequence[SeedExample], n: int, out_dir: str, *,
                      difficulty_weights: Sequence[float] = (1.0, 1.0, 1.0), seed: int = 0,
                      execute: text2sql.Execute | None = None, batch_size: int = 8, max_requests: int | None = None,
                      timeout_s: float = 10.0) -> dict:
  """Asks `generator` for data points until n are kept or max_requests (default 3n) prompts were sent; writes them
  into out_dir (database/synth_<k>/synth_<k>.sqlite, train_synth.json in Spider's format plus domain and
  difficulty, synth_gold.sql) with synthesis_report.json, and returns that report.

  Each prompt shows 2 seeds drawn at random and asks for a difficulty drawn with difficulty_weights (easy, medium,
  hard). A completion is dropped, by reason (DROP_REASONS): request_failed (None), parse (a field missing),
  duplicate (question and SQL equal to a kept item's, whitespace and case aside), schema (build_schema_db failed),
  sql_<error kind> (the SQL failed in the executor: `execute`, or a private SqlPool, with timeout_s per query).
  """
  if len(seeds) < 2:
    raise ValueError(f'synthesize_strong needs at least 2 seed examples, got {len(seeds)}')
  rng = random.Random(seed)
  max_requests = 3 * n if max_requests is None else max_requests
  kept: list[StrongItem] = []
  seen: set[tuple[str, str]] = set()
  dropped: Counter = Counter()
  requests = 0
  db_root = os.path.join(out_dir, 'database')
  os.makedirs(db_root, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=out_dir) as scratch, _executor(execute, timeout_s) as run:
    while len(kept) < n and requests < max_requests:
      k = min(batch_size, n - len(kept), max_requests - requests)
      targets = rng.choices(DIFFICULTIES, weights=difficulty_weights, k=k)
      prompts = [strong_prompt(rng.sample(list(seeds), 2), t) for t in targets]
      requests += k
      completions = list(generator(prompts))
      if len(completions) != k:
        raise RuntimeError(f'the generator returned {len(completions)} completions for {k} prompts')
      candidates = []
      for target, text in zip(targets, completions):
        fields = None if text is None else parse_strong(text)
        key = fields and (_normalise(fields['question']), _normalise(fields['sql']))
        reason = 'request_failed' if text is None else 'parse' if fields is None else 'duplicate' if key in seen else ''
        if not reason:
          path = os.path.join(scratch, f'{len(candidates)}.sqlite')
          reason = 'schema' if build_schema_db(path, fields['schema'], timeout_s=timeout_s) else ''
        if reason:
          dropped[reason] += 1
          continue
        seen.add(key)
        candidates.append((path, fields, target, key))
      results = run([(path, fields['sql']) for path, fields, _, _ in candidates]) if candidates else []
      for (path, fields, target, key), result in zip(candidates, results):
        if not result.ok:
          dropped[f'sql_{result.error_kind}'] += 1
          seen.discard(key)
          continue
        db_id = f'synth_{len(kept):05d}'
        os.makedirs(os.path.join(db_root, db_id), exist_ok=True)
        shutil.move(path, os.path.join(db_root, db_id, f'{db_id}.sqlite'))
        kept.append(StrongItem(fields['domain'], fields['schema'], fields['question'], fields['sql'], target))
  ids = [f'synth_{k:05d}' for k in range(len(kept))]
  with open(os.path.join(out_dir, 'train_synth.json'), 'w', encoding='utf-8') as f:
    json.dump([{'db_id': db_id, 'question': i.question, 'query': i.sql, 'domain': i.domain,
                'difficulty': i.difficulty, 'schema': i.schema} for db_id, i in zip(ids, kept)], f, indent=1)
  data.write_gold_file(os.path.join(out_dir, 'synth_gold.sql'), [(' '.join(i.sql.split()), db_id)
                                                                 for db_id, i in zip(ids, kept)])
  report = {'requested': n, 'requests': requests, 'kept': len(kept),
            'dropped': {r: dropped[r] for r in DROP_REASONS if dropped[r]}, **balance_report(kept)}
  with open(os.path.join(out_dir, 'synthesis_report.json'), 'w', encoding='utf-8') as f:
    json.dump(report, f, indent=1)
  return report


# ---------------------------------------------------------------------------------------------------------------
# Weak data: execution labels and preference pairs.

@dataclasses.dataclass(frozen=True)
class Candidate:
  """A sampled SQL and its label: chosen when it ran and its result equals the gold's; error_kind as ExecResult."""
  sql: str
  chosen: bool
  error_kind: str = ''


@dataclasses.dataclass(frozen=True)
class CandidateLabels:
  """One question's labelled samples; when the gold fails (gold_ok False) every sample is rejected."""
  gold_ok: bool
  gold_error: str
  candidates: list[Candidate]


def results_match(gold_sql: str, gold_rows: Sequence[tuple], rows: Sequence[tuple]) -> bool:
  """A sample's result equals the gold's: test-suite comparison (multiset, in order when the gold has ORDER BY,
  columns up to permutation) of the raw results, DISTINCT kept (so COUNT vs COUNT(DISTINCT) can differ)."""
  return text2sql.spider_rows_match(gold_rows, rows, text2sql.order_matters(gold_sql))


def _blank(sql: str) -> bool:
  """Whether `sql` holds no statement (only whitespace, comments and ';'): SQLite runs it as an empty success."""
  return not re.sub(r'--[^\n]*|/\*.*?(\*/|$)|;|\s', '', sql, flags=re.DOTALL)


def label_candidates(jobs: Sequence[tuple[str, str, Sequence[str]]],
                     execute: text2sql.Execute) -> list[CandidateLabels]:
  """Labels of (db_path, gold_sql, [sampled sql, ...]) jobs; every distinct (db, sql) query runs once in one
  `execute` call (e.g. SqlPool.map). A query with no statement in it is not run: it fails with error_kind 'empty'
  (the executor would return it as an empty result, which could match an empty gold result)."""
  queries = list(dict.fromkeys((db, sql) for db, gold, samples in jobs for sql in (gold, *samples)
                               if not _blank(sql)))
  results = execute(queries)
  if len(results) != len(queries):
    raise RuntimeError(f'the executor returned {len(results)} results for {len(queries)} queries')
  by_query = dict(zip(queries, results))
  by_query.update({(db, sql): ExecResult(False, [], 'no SQL statement', 'empty') for db, gold, samples in jobs
                   for sql in (gold, *samples) if _blank(sql)})
  out = []
  for db, gold, samples in jobs:
    g = by_query[(db, gold)]
    candidates = []
    for sql in samples:
      r = by_query[(db, sql)]
      candidates.append(Candidate(sql, g.ok and r.ok and results_match(gold, g.rows, r.rows), r.error_kind))
    out.append(CandidateLabels(g.ok, '' if g.ok else f'{g.error_kind}: {g.error}', candidates))
  return out


def select_pairs(candidates: Sequence[Candidate], limit: int | None, rng: random.Random) -> list[tuple[str, str]]:
  """(chosen, rejected) SQL pairs of one question: distinct texts on each side, `limit` pairs drawn at random
  from all combinations (None: all); none unless there is at least one of each."""
  chosen = list(dict.fromkeys(c.sql for c in candidates if c.chosen))
  rejected = list(dict.fromkeys(c.sql for c in candidates if not c.chosen))
  pairs = list(itertools.product(chosen, rejected))
  return pairs if limit is None or len(pairs) <= limit else rng.sample(pairs, limit)


def extract_sql(completion: str | None) -> str:
  """The SQL of a model's answer: the first fenced code block if there is one, else the text, up to its first
  ';'; '' for a failed request (it then fails to execute and is rejected)."""
  if not completion:
    return ''
  fenced = re.search(r'```[\w-]*[ \t]*\n(.*?)```', completion, re.DOTALL)
  text = fenced.group(1) if fenced else completion
  return ' '.join(text.split(';')[0].split())


def sampler_from_generator(generator: Generator) -> WeakSampler:
  """A WeakSampler over a Generator (an HTTP endpoint, or the suite's model): each prompt sent n times (sampling
  at the generator's temperature), each completion reduced to its SQL by `extract_sql`."""
  def sample(examples: Sequence[data.Text2SqlExample], prompts: Sequence[str], n: int) -> list[list[str]]:
    del examples  # the model sees the prompt only
    completions = list(generator([p for p in prompts for _ in range(n)]))
    return [[extract_sql(c) for c in completions[i * n:(i + 1) * n]] for i in range(len(prompts))]
  return sample


def weak_sample(examples: Sequence[data.Text2SqlExample], db_root: str, sampler: WeakSampler, *,
                execute: text2sql.Execute | None = None, n_samples: int = 8, pairs_per_question: int | None = 1,
                seed: int = 0, batch_size: int = 64, timeout_s: float = 10.0,
                rejected_must_run: bool = False, anchors: bool = False) -> tuple[list[dict], dict]:
  """Preference pairs from weak samples: (pairs, stats).

  For each example, `sampler(examples, prompts, n_samples)` gives n_samples SQLs for its prompt
  (data.render_prompt over the CREATE TABLE schema of <db_root>/<db>/<db>.sqlite, as in SFT); they are executed
  (`execute`, or a private SqlPool with timeout_s per query), labelled (`label_candidates`) and paired
  (`select_pairs`, at most pairs_per_question per question; None: all; rejected_must_run: only rejected samples
  that executed, i.e. wrong results rather than failing SQL). A pair is a dict: db_id, question,
  evidence, prompt, chosen, rejected. stats counts questions, samples, chosen samples, questions whose gold failed,
  questions with only chosen or only rejected samples, pairs, and samples that failed (error_<kind>, where any).
  anchors: a question that gives no pair but has chosen samples (every kept sample right) adds an anchor, a dict as
  a pair with anchor=True and chosen = rejected = its most frequent chosen SQL (the first on a tie); counted in
  stats['anchors'] and not in stats['pairs'].
  """
  rng = random.Random(seed)
  pairs = []
  stats = Counter(dict.fromkeys(('questions', 'samples', 'chosen', 'gold_failed', 'all_chosen', 'all_rejected'), 0))
  n_anchors = 0
  with _executor(execute, timeout_s) as run:
    for start in range(0, len(examples), batch_size):
      batch = examples[start:start + batch_size]
      paths = [data.database_path(db_root, e.db_id) for e in batch]
      prompts = [data.render_prompt(data.schema_prompt(p), e.question, e.evidence) for e, p in zip(batch, paths)]
      samples = [list(s) for s in sampler(batch, prompts, n_samples)]
      if len(samples) != len(batch):
        raise RuntimeError(f'the weak sampler returned samples for {len(samples)} of {len(batch)} questions')
      labels = label_candidates([(p, e.sql, s) for p, e, s in zip(paths, batch, samples)], run)
      for e, prompt, lab in zip(batch, prompts, labels):
        stats['questions'] += 1
        stats['samples'] += len(lab.candidates)
        stats['chosen'] += sum(c.chosen for c in lab.candidates)
        stats.update(f'error_{c.error_kind}' for c in lab.candidates if c.error_kind)
        if not lab.gold_ok:
          stats['gold_failed'] += 1
          continue
        n_chosen = sum(c.chosen for c in lab.candidates)
        stats['all_chosen'] += n_chosen == len(lab.candidates)
        stats['all_rejected'] += n_chosen == 0
        candidates = [c for c in lab.candidates if c.chosen or not (rejected_must_run and c.error_kind)]
        selected = select_pairs(candidates, pairs_per_question, rng)
        for chosen, rejected in selected:
          pairs.append({'db_id': e.db_id, 'question': e.question, 'evidence': e.evidence, 'prompt': prompt,
                        'chosen': chosen, 'rejected': rejected})
        right = Counter(c.sql for c in candidates if c.chosen) if anchors and not selected else None
        if right:
          sql = max(right, key=right.get)  # the first of the most frequent (Counter keeps insertion order)
          pairs.append({'db_id': e.db_id, 'question': e.question, 'evidence': e.evidence, 'prompt': prompt,
                        'chosen': sql, 'rejected': sql, 'anchor': True})
          n_anchors += 1
  stats['pairs'] = len(pairs) - n_anchors
  if anchors:
    stats['anchors'] = n_anchors
  return pairs, dict(stats)
