"""Runs a Responder over a benchmark in resumable batches, or scores a saved response file.

A run appends each finished batch to workdir/responses.jsonl; a rerun with the same workdir skips
the ids already there, so an interrupted run resumes without generating them again.
workdir/run_info.json holds what the responses depend on (data file, prompt settings), and a rerun
whose settings differ stops with an error instead of mixing two runs.
"""
from __future__ import annotations

import json
import os
import time
from typing import Mapping, Sequence

from tqdm import tqdm

from mmjax.evals.benchmark import Benchmark
from mmjax.evals.prompt import Prompt, Responder
from mmjax.evals.report import Scores, write_reports
from mmjax.evals.responses import ResponseLog, read_responses

_RESERVED = ('id', 'response', 'follow_up')


def _respond(responder: Responder, prompts: Sequence[Prompt]) -> list[str]:
  out = responder.respond(prompts)
  if len(out) != len(prompts) or not all(isinstance(r, str) for r in out):
    raise ValueError(f'responder returned {len(out)} answers for {len(prompts)} prompts; '
                     'expected one string per prompt')
  return list(out)


def check_run_info(workdir: str, run_info: Mapping) -> None:
  """Writes workdir/run_info.json, or checks that the one there matches `run_info`."""
  path = os.path.join(workdir, 'run_info.json')
  info = json.loads(json.dumps(dict(run_info)))  # as it reads back (tuples become lists)
  if os.path.exists(path):
    with open(path, encoding='utf-8') as f:
      old = json.load(f)
    diff = sorted(k for k in set(old) | set(info) if old.get(k) != info.get(k))
    if diff:
      raise ValueError(f'{workdir} holds responses of a different run ('
                       + ', '.join(f'{k}: {old.get(k)!r} then, {info.get(k)!r} now' for k in diff)
                       + '); use a new workdir')
    return
  with open(path, 'w', encoding='utf-8') as f:
    json.dump(info, f, indent=1)


def generate(bench: Benchmark, responder: Responder, workdir: str, *, batch_size: int,
             run_info: Mapping, progress: bool = True) -> tuple[list[dict], dict]:
  """Answers every example not yet in workdir/responses.jsonl, `batch_size` prompts per call.

  Returns (records in id order, throughput {'generated', 'seconds', 'examples_per_s'} of this call).
  """
  if batch_size < 1:
    raise ValueError(f'batch_size must be >= 1, got {batch_size}')
  os.makedirs(workdir, exist_ok=True)
  check_run_info(workdir, run_info)
  log = ResponseLog(os.path.join(workdir, 'responses.jsonl'), len(bench))
  pending = [i for i in range(len(bench)) if i not in log.done]
  start = time.perf_counter()
  with tqdm(total=len(bench), initial=len(log.done), desc=bench.name, unit='ex',
            disable=not progress) as bar:
    for first in range(0, len(pending), batch_size):
      ids = pending[first:first + batch_size]
      built = [bench.prompt(i, responder) for i in ids]
      records = []
      for i, (_, meta), response in zip(ids, built, _respond(responder, [p for p, _ in built])):
        clash = set(meta) & set(_RESERVED)
        if clash:
          raise ValueError(f'{bench.name}: prompt facts may not use the keys {sorted(clash)}')
        records.append({'id': i, 'response': response, **meta})
      follow = [(r, bench.follow_up(r['id'], r['response'], responder)) for r in records]
      follow = [(r, p) for r, p in follow if p is not None]
      if follow:
        for (r, _), answer in zip(follow, _respond(responder, [p for _, p in follow])):
          r['follow_up'] = answer
      log.append(records)
      bar.update(len(ids))
  seconds = time.perf_counter() - start
  throughput = {'generated': len(pending), 'seconds': seconds,
                'examples_per_s': len(pending) / seconds if pending and seconds > 0 else None}
  return [log.done[i] for i in range(len(bench))], throughput


def evaluate(bench: Benchmark, responder: Responder, workdir: str, *, batch_size: int,
             run_info: Mapping, title: str, progress: bool = True) -> Scores:
  """`generate`, then scores every response and writes the reports (with this call's throughput)."""
  records, throughput = generate(bench, responder, workdir, batch_size=batch_size,
                                 run_info=run_info, progress=progress)
  scores = bench.score(records)
  scores.summary['throughput'] = throughput
  write_reports(workdir, scores, title)
  return scores


def score_file(bench: Benchmark, responses_path: str, workdir: str, *, title: str) -> Scores:
  """Scores a saved response file (see `read_responses`) and writes the reports into `workdir`."""
  scores = bench.score(read_responses(responses_path, len(bench)))
  write_reports(workdir, scores, title)
  return scores
