"""Score-only mode: `launch.py --config configs/sense.py:benchmark=spider|bird --mode score`.

Reads the gold file, the predictions and the databases in the official layouts (experiments/sense/data.py), runs
every query in a pool of sandboxed SQL workers (mmjax.evals.sql.SqlPool, with a progress bar), scores them with
mmjax.evals.text2sql and writes into the workdir: verdicts.jsonl (one line per example: level, correct, why, the
error), summary.json (accuracy overall and per Spider hardness / BIRD difficulty, and the counts of timeouts and
errors of predictions and of gold queries) and summary.md.
"""
from __future__ import annotations

import json
import os
import time
from collections import Counter

import ml_collections

from experiments.sense import data
from mmjax.evals import text2sql

METRICS = {'spider': 'test-suite execution accuracy', 'bird': 'execution accuracy (EX)'}


def _first_file(what: str, candidates: list[str]) -> str:
  for path in candidates:
    if os.path.isfile(path):
      return path
  raise FileNotFoundError(f"no {what}: none of {', '.join(candidates)} exists")


def dataset_paths(config: ml_collections.ConfigDict, data_dir: str) -> dict[str, str]:
  """The gold file and database root the config names, or the layout's defaults under data_dir."""
  if not data_dir and not (config.gold and config.db_dir):
    raise ValueError('set --config.data_dir to the dataset folder (or both --config.gold and --config.db_dir)')
  split = config.split
  gold = config.gold or _first_file('gold file (set --config.gold)', [
      os.path.join(data_dir, f'{split}_gold.sql')] + ([os.path.join(data_dir, f'{split}.sql')]
                                                     if config.benchmark == 'bird' else []))
  default_db = 'database' if config.benchmark == 'spider' else f'{split}_databases'
  db_dir = config.db_dir or os.path.join(data_dir, default_db)
  if not os.path.isdir(db_dir):
    raise FileNotFoundError(f'no database folder {db_dir} (set --config.db_dir)')
  return {'gold': gold, 'db_dir': db_dir}


def _predictions(config: ml_collections.ConfigDict, path: str) -> list[tuple[str, str]]:
  """(sql, db_id or '') per prediction; BIRD's JSON names each db_id, a line file does not."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f'no predictions file {path} (--config.predictions)')
  if config.benchmark == 'bird' and path.endswith('.json'):
    return data.read_bird_predictions(path)
  return [(sql, '') for sql in data.read_spider_predictions(path)]


def _levels(config: ml_collections.ConfigDict, gold_path: str, gold: list[tuple[str, str]],
            data_dir: str) -> list[str]:
  """Spider: each gold query's hardness. BIRD: each example's difficulty from the data file, in gold order."""
  if config.benchmark == 'spider':
    levels = []
    for n, (sql, _) in enumerate(gold, 1):
      try:
        levels.append(text2sql.spider_hardness(sql))
      except ValueError as e:
        raise ValueError(f'{gold_path}: gold query {n}: {e}') from None
    return levels
  path = config.data_file or os.path.join(data_dir, f'{config.split}.json')
  if not os.path.isfile(path):
    raise FileNotFoundError(f'no BIRD data file {path} with the difficulty of each question (set --config.data_file)')
  examples = data.read_bird_examples(path)
  if len(examples) != len(gold):
    raise ValueError(f'{path} has {len(examples)} examples but the gold file {gold_path} has {len(gold)} queries')
  for n, (e, (_, db_id)) in enumerate(zip(examples, gold), 1):
    if e.db_id != db_id:
      raise ValueError(f'{path} example {n - 1} is about {e.db_id!r} but line {n} of {gold_path} about {db_id!r}')
  return [e.difficulty or 'unknown' for e in examples]


def score(config: ml_collections.ConfigDict, workdir: str, data_dir: str, predictions: str) -> dict:
  """Scores `predictions` against the dataset under data_dir; writes the reports into workdir; the summary."""
  paths = dataset_paths(config, data_dir)
  gold = data.read_gold_file(paths['gold'])
  preds = _predictions(config, predictions)
  data.check_counts(paths['gold'], len(gold), predictions, len(preds))
  for n, ((_, gold_db), (_, pred_db)) in enumerate(zip(gold, preds)):
    if pred_db and pred_db != gold_db:
      raise ValueError(f"{predictions}: prediction {n} names db_id {pred_db!r}, but gold query {n} of "
                       f"{paths['gold']} is on {gold_db!r}: the predictions are not in gold order")
  db_paths = {db_id: data.database_path(paths['db_dir'], db_id) for db_id in dict.fromkeys(g for _, g in gold)}
  levels = _levels(config, paths['gold'], gold, data_dir)
  examples = [(g_sql, p_sql, db_paths[db_id]) for (g_sql, db_id), (p_sql, _) in zip(gold, preds)]

  from mmjax.evals.sql import SqlPool  # starts worker processes: only a scoring run imports it
  start = time.monotonic()
  with SqlPool(config.workers or None, timeout_s=config.timeout_s, max_rows=config.max_rows,
               memory_mb=config.memory_mb, progress=config.progress_bar) as pool:
    def execute(jobs):
      return pool.map(jobs, desc=f'{config.benchmark} queries')
    if config.benchmark == 'spider':
      verdicts = text2sql.score_spider(examples, execute, keep_distinct=config.keep_distinct,
                                       test_suite=config.test_suite)
    else:
      verdicts = text2sql.score_bird(examples, execute)
  seconds = time.monotonic() - start

  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, 'verdicts.jsonl'), 'w', encoding='utf-8') as f:
    for i, (v, level, (g_sql, db_id), (p_sql, _)) in enumerate(zip(verdicts, levels, gold, preds)):
      f.write(json.dumps({'id': i, 'db_id': db_id, 'level': level, 'correct': v.correct, 'reason': v.reason,
                          'error': v.error, 'gold': g_sql, 'prediction': p_sql}) + '\n')
  summary = summarize(config.benchmark, verdicts, levels)
  summary.update({'gold': os.path.abspath(paths['gold']), 'predictions': os.path.abspath(predictions),
                  'db_dir': os.path.abspath(paths['db_dir']), 'timeout_s': config.timeout_s,
                  'max_rows': config.max_rows, 'seconds': round(seconds, 3)})
  if config.benchmark == 'spider':
    summary.update({'test_suite': config.test_suite, 'keep_distinct': config.keep_distinct})
  with open(os.path.join(workdir, 'summary.json'), 'w', encoding='utf-8') as f:
    json.dump(summary, f, indent=1)
  with open(os.path.join(workdir, 'summary.md'), 'w', encoding='utf-8') as f:
    f.write(summary_markdown(summary))
  return summary


def summarize(benchmark: str, verdicts: list[text2sql.Verdict], levels: list[str]) -> dict:
  """Accuracy overall and per level (Spider hardness / BIRD difficulty, in the official order, then any other), and
  the count of each reason (timeouts and errors of predictions and of gold queries)."""
  order = text2sql.HARDNESS_LEVELS if benchmark == 'spider' else text2sql.BIRD_DIFFICULTIES
  names = [lvl for lvl in order if lvl in levels] + sorted(set(levels) - set(order))
  by_level = {}
  for name in names:
    marks = [v.correct for v, lvl in zip(verdicts, levels) if lvl == name]
    by_level[name] = {'n': len(marks), 'accuracy': sum(marks) / len(marks)}
  reasons = Counter(v.reason for v in verdicts)
  n = len(verdicts)
  return {'benchmark': benchmark, 'metric': METRICS[benchmark], 'n': n,
          'accuracy': sum(v.correct for v in verdicts) / n if n else 0.0, 'levels': by_level,
          'pred_timeouts': reasons['pred_timeout'], 'pred_errors': reasons['pred_error'],
          'gold_timeouts': reasons['gold_timeout'], 'gold_errors': reasons['gold_error'],
          'reasons': {r: reasons[r] for r in text2sql.REASONS}}


def summary_markdown(summary: dict) -> str:
  """summary.md: the accuracy table by level and the failure counts."""
  levels = summary['levels']
  head = ['', *levels, 'all']
  lines = [f"# {summary['benchmark']}: {summary['metric']}", '',
           '| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head),
           '| count | ' + ' | '.join(str(v['n']) for v in levels.values()) + f" | {summary['n']} |",
           '| accuracy (%) | ' + ' | '.join(f"{100 * v['accuracy']:.1f}" for v in levels.values())
           + f" | {100 * summary['accuracy']:.1f} |", '',
           f"Predictions that timed out: {summary['pred_timeouts']}; that failed: {summary['pred_errors']}. "
           f"Gold queries that timed out: {summary['gold_timeouts']}; that failed: {summary['gold_errors']} "
           '(each scores 0).', '',
           f"gold `{summary['gold']}`, predictions `{summary['predictions']}`, databases `{summary['db_dir']}`, "
           f"timeout {summary['timeout_s']} s per query, {summary['seconds']} s in all.", '']
  return '\n'.join(lines)
