"""A small CoverBench-format set (JSONL), for smoke runs and tests.

Each context is a random table of yearly revenues, serialised as Markdown, JSON records or HTML (as
the release does), after some filler sentences; the claim states one year's revenue, true or off by
a margin. About 55% of the claims are true, as in CoverBench.
"""
from __future__ import annotations

import json
import os

import numpy as np

SOURCES = ('FinQA', 'TabFact', 'ContractNLI')
_FILLER = ('The company reports its figures in millions of dollars. ',
           'All amounts are unaudited unless noted otherwise. ',
           'Figures for earlier years were restated. ')


def _table(rows: list[dict], fmt: str) -> str:
  if fmt == 'json':
    return json.dumps(rows)
  cols = list(rows[0])
  if fmt == 'markdown':
    lines = ['| ' + ' | '.join(cols) + ' |', '|' + '---|' * len(cols)]
    return '\n'.join(lines + ['| ' + ' | '.join(str(r[c]) for c in cols) + ' |' for r in rows])
  head = ''.join(f'<th>{c}</th>' for c in cols)
  body = ''.join('<tr>' + ''.join(f'<td>{r[c]}</td>' for c in cols) + '</tr>' for r in rows)
  return f'<table><tr>{head}</tr>{body}</table>'


def write_synthetic_coverbench(path: str, *, n: int = 20, seed: int = 0, filler: int = 3) -> str:
  """Writes `n` examples to `path` (.jsonl) with fields context, claim, label, dataset; returns path.

  filler: filler sentences before each table (more make longer contexts).
  """
  rng = np.random.default_rng(seed)
  labels = np.zeros(n, bool)
  labels[rng.permutation(n)[:round(0.55 * n)]] = True
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, 'w', encoding='utf-8') as f:
    for i in range(n):
      years = list(range(2015, 2015 + int(rng.integers(3, 7))))
      rows = [{'year': y, 'revenue': int(rng.integers(100, 1000))} for y in years]
      fmt = ('markdown', 'json', 'html')[i % 3]
      text = ''.join(_FILLER[int(k)] for k in rng.integers(len(_FILLER), size=filler))
      row = rows[int(rng.integers(len(rows)))]
      value = row['revenue'] if labels[i] else row['revenue'] + int(rng.integers(1, 50))
      record = {'context': text + '\n' + _table(rows, fmt),
                'claim': f'Revenue in {row["year"]} was {value} million dollars.',
                'label': bool(labels[i]), 'dataset': SOURCES[i % len(SOURCES)],
                'table_format': fmt}
      f.write(json.dumps(record) + '\n')
  return path
