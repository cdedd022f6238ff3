"""Runs a Responder over a benchmark in resumable batches, or scores a saved response file.

A run builds every prompt before it asks the model anything (a prompt that cannot be built stops the run before
any model time), then appends each finished batch to workdir/responses.jsonl; a rerun with the same workdir skips
the ids already there, so an interrupted run resumes without generating them again.
workdir/run_info.json holds what the responses depend on (data file, prompt settings). It is written with the first
responses, so a run that failed before answering anything leaves nothing that blocks the corrected rerun; once
responses exist, a rerun whose settings differ stops with an error instead of mixing two runs.
"""
from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence

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


def _run_info_path(workdir: str) -> str:
  return os.path.join(workdir, 'run_info.json')


def check_run_info(workdir: str, run_info: Mapping) -> None:
  """Checks that workdir/run_info.json, the identity of the responses there, matches `run_info`; writes it when
  the workdir has none."""
  path = _run_info_path(workdir)
  if not os.path.exists(path):
    _write_run_info(workdir, run_info)
    return
  info = json.loads(json.dumps(dict(run_info)))  # as it reads back (tuples become lists)
  with open(path, encoding='utf-8') as f:
    old = json.load(f)
  diff = sorted(k for k in set(old) | set(info) if old.get(k) != info.get(k))
  if diff:
    raise ValueError(f'{workdir} holds responses of a different run ('
                     + ', '.join(f'{k}: {old.get(k)!r} then, {info.get(k)!r} now' for k in diff)
                     + '); use a new workdir')


def _write_run_info(workdir: str, run_info: Mapping) -> None:
  """Writes workdir/run_info.json through a temporary file, so that it is whole or absent."""
  path = _run_info_path(workdir)
  with open(path + '.tmp', 'w', encoding='utf-8') as f:
    json.dump(dict(run_info), f, indent=1)
  os.replace(path + '.tmp', path)


def _build_prompts(bench: Benchmark, responder: Responder, ids: Sequence[int]) -> dict[int, tuple[Prompt, dict]]:
  """The prompt and stored facts of every id; ValueError when a benchmark puts reserved keys among the facts."""
  built = {}
  for i in ids:
    prompt, meta = bench.prompt(i, responder)
    clash = set(meta) & set(_RESERVED)
    if clash:
      raise ValueError(f'{bench.name}: prompt facts may not use the keys {sorted(clash)}')
    built[i] = prompt, meta
  return built


def generate(bench: Benchmark, responder: Responder, workdir: str, *, batch_size: int,
             run_info: Mapping, progress: bool = True) -> tuple[list[dict], dict]:
  """Answers every example not yet in workdir/responses.jsonl, `batch_size` prompts per call.

  Returns (records in id order, throughput {'generated', 'seconds', 'examples_per_s'} of this call).
  """
  if batch_size < 1:
    raise ValueError(f'batch_size must be >= 1, got {batch_size}')
  os.makedirs(workdir, exist_ok=True)
  log = ResponseLog(os.path.join(workdir, 'responses.jsonl'), len(bench))
  if log.done:
    check_run_info(workdir, run_info)
  pending = [i for i in range(len(bench)) if i not in log.done]
  built = _build_prompts(bench, responder, pending)
  start = time.perf_counter()
  with tqdm(total=len(bench), initial=len(log.done), desc=bench.name, unit='ex',
            disable=not progress) as bar:
    for first in range(0, len(pending), batch_size):
      ids = pending[first:first + batch_size]
      answers = _respond(responder, [built[i][0] for i in ids])
      records = [{'id': i, 'response': response, **built[i][1]} for i, response in zip(ids, answers)]
      follow = [(r, bench.follow_up(r['id'], r['response'], responder)) for r in records]
      follow = [(r, p) for r, p in follow if p is not None]
      if follow:
        for (r, _), answer in zip(follow, _respond(responder, [p for _, p in follow])):
          r['follow_up'] = answer
      if not log.done:  # the run's identity goes to disk with its first responses
        _write_run_info(workdir, run_info)
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
