"""Reading back metrics.jsonl in tests."""
import json
import os


def read_metrics(workdir, kind='train'):
  """{step: row} for rows of `kind`; a step logged twice (after a crash) keeps its last row."""
  rows = {}
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    for line in f:
      row = json.loads(line)
      if row['kind'] == kind:
        rows[row['step']] = row
  return rows
