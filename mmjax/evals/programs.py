"""The programs of every benchmark, on the `benchmark_config()` schema: `launch.py --mode generate|score`.

generate: answers the data file with the model of config.checkpoint in resumable batches (see `runner.generate`),
scores the answers and writes the reports. score: scores a saved response file (config.responses). With
variant=smoke both use a generated data set written into workdir/smoke_data, and generate answers it with a seeded
random guesser instead of a model: the harness end to end in seconds.

A benchmark supplies a `BenchmarkTask` (how to load its data, which model responder answers it, its smoke data) and
declares `PROGRAMS = benchmark_programs(TASK)` in its experiment module.
"""
from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ml_collections

from mmjax.evals.benchmark import Benchmark
from mmjax.evals.config import check_benchmark_config
from mmjax.evals.guess import GuessResponder
from mmjax.evals.prompt import Responder
from mmjax.evals.runner import evaluate, score_file

# Model responders by name, in mmjax.evals.responders: imported only by a model run, since they load jax models.
MODEL_RESPONDERS = {'chat': 'ChatResponder', 'llava_onevision': 'LlavaOnevisionResponder'}

Program = Callable[[ml_collections.ConfigDict, str], dict]


def _no_run_info(config: ml_collections.ConfigDict, bench: Benchmark) -> dict:
  return {}


def _no_check(bench: Benchmark) -> None:
  return None


def _config_max_new_tokens(config: ml_collections.ConfigDict) -> int:
  return config.max_new_tokens


@dataclasses.dataclass(frozen=True)
class BenchmarkTask:
  """What a benchmark hands the shared programs.

  title: the report title. load: (config, data file) -> the benchmark; errors name the file and record.
  data_formats: the files config.data_file may name, for the error when it is unset. responder: a key of
  MODEL_RESPONDERS. smoke_data: (config, folder) -> the path of a generated data set it writes into folder.
  smoke_answers: the guesser's canned answers. run_info: (config, benchmark) -> the benchmark's own settings that
  its responses depend on (beside the shared ones). max_new_tokens: config -> the answer budget. check: runs before
  a model loads (e.g. that every image file exists).
  """
  title: str
  load: Callable[[ml_collections.ConfigDict, str], Benchmark]
  data_formats: str
  responder: str
  smoke_data: Callable[[ml_collections.ConfigDict, str], str]
  smoke_answers: Sequence[str]
  run_info: Callable[[ml_collections.ConfigDict, Benchmark], Mapping[str, Any]] = _no_run_info
  max_new_tokens: Callable[[ml_collections.ConfigDict], int] = _config_max_new_tokens
  check: Callable[[Benchmark], None] = _no_check

  def __post_init__(self):
    if self.responder not in MODEL_RESPONDERS:
      raise ValueError(f'{self.title}: responder must be one of {sorted(MODEL_RESPONDERS)}, got {self.responder!r}')


def benchmark_programs(task: BenchmarkTask) -> dict[str, Program]:
  """{'generate', 'score'}: the `launch.py --mode` programs of `task`, generate first (the default)."""
  return {'generate': functools.partial(run_generate, task), 'score': functools.partial(run_score, task)}


def _data_file(task: BenchmarkTask, config: ml_collections.ConfigDict, workdir: str) -> str:
  if config.variant == 'smoke':
    return task.smoke_data(config, os.path.join(workdir, 'smoke_data'))
  if not config.data_file:
    raise ValueError(f'{task.title}: set --config.data_file to {task.data_formats}')
  return config.data_file


def model_responder(task: BenchmarkTask, config: ml_collections.ConfigDict) -> Responder:
  """The model responder of config.checkpoint for `task` (greedy)."""
  max_new_tokens = task.max_new_tokens(config)
  if max_new_tokens < 1:
    raise ValueError(f'config.max_new_tokens must be >= 1, got {max_new_tokens}')
  from mmjax.evals import responders  # loads jax models: only a model run imports it
  return getattr(responders, MODEL_RESPONDERS[task.responder])(
      config.checkpoint, base=config.base or None, max_new_tokens=max_new_tokens, batch_size=config.batch_size,
      context_tokens=config.context_tokens, system_message=config.system_message or None,
      dtype=config.compute_dtype, chat_template=config.chat_template)


def run_generate(task: BenchmarkTask, config: ml_collections.ConfigDict, workdir: str,
                 responder: Responder | None = None) -> dict:
  """Answers the data file (resuming what workdir/responses.jsonl holds), scores it and returns the summary.

  responder: answers instead of the one the config names (a caller that holds a model already); the run's
  identity (run_info.json) is the config's either way.
  """
  check_benchmark_config(config)
  data_file = _data_file(task, config, workdir)
  bench = task.load(config, data_file)  # before the model: bad data fails fast
  task.check(bench)
  if config.variant == 'smoke':
    if responder is None:
      responder = GuessResponder(task.smoke_answers, seed=config.seed, max_context_tokens=config.smoke_context_tokens)
    run_info = {'data_file': data_file, 'n': len(bench), 'responder': 'guess'}
    title = f'{task.title} (smoke: random guesses)'
  else:
    if responder is None:
      responder = model_responder(task, config)
    run_info = {'data_file': os.path.abspath(data_file), 'n': len(bench), 'responder': 'mmjax',
                'checkpoint': os.path.abspath(config.checkpoint), 'base': config.base,
                'max_new_tokens': task.max_new_tokens(config), 'max_context_tokens': responder.max_context_tokens,
                'system_message': config.system_message, 'chat_template': config.chat_template,
                'dtype': config.compute_dtype}
    title = f'{task.title}: {os.path.basename(os.path.normpath(config.checkpoint))}'
  run_info.update(task.run_info(config, bench))
  return evaluate(bench, responder, workdir, batch_size=config.batch_size, run_info=run_info, title=title,
                  progress=config.progress_bar).summary


def run_score(task: BenchmarkTask, config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Scores config.responses against the data file, writes the reports into workdir and returns the summary."""
  check_benchmark_config(config)
  if not config.responses:
    raise ValueError(f'{task.title} score: set --config.responses to a JSONL file of '
                     '{"id": <position in the data file>, "response": "..."}')
  bench = task.load(config, _data_file(task, config, workdir))
  return score_file(bench, config.responses, workdir, title=task.title).summary
