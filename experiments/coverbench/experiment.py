"""CoverBench: run an mmjax Qwen2 (mode=generate), score saved responses (mode=score), or a smoke
run of the harness on generated data.

`run(config, workdir, mode)` is what launch.py calls.
"""
from __future__ import annotations

import os

import ml_collections

from mmjax.evals import GuessResponder, evaluate, score_file
from experiments.coverbench.benchmark import CoverBenchBenchmark
from experiments.coverbench.data import load_coverbench
from experiments.coverbench.synthetic import write_synthetic_coverbench

TITLE = 'CoverBench'
MAX_NEW_TOKENS = {'zero_shot': 32, 'cot': 512}  # config.max_new_tokens = -1: by prompt style


def max_new_tokens(config: ml_collections.ConfigDict) -> int:
  """config.max_new_tokens, or the prompt style's default when it is -1."""
  return MAX_NEW_TOKENS[config.prompt] if config.max_new_tokens == -1 else config.max_new_tokens


def make_responder(config: ml_collections.ConfigDict):
  """The Qwen2 chat responder of config.checkpoint (greedy)."""
  from mmjax.evals.responders import ChatResponder  # loads jax models: only generate mode needs it
  return ChatResponder(config.checkpoint, base=config.base or None, max_new_tokens=max_new_tokens(config),
                       batch_size=config.batch_size, context_tokens=config.context_tokens,
                       system_message=config.system_message, dtype=config.compute_dtype)


def make_benchmark(config: ml_collections.ConfigDict, data_file: str) -> CoverBenchBenchmark:
  """The benchmark over `data_file` with config.prompt ('zero_shot' or 'cot')."""
  if not data_file:
    raise ValueError('CoverBench: set --config.data_file to the .json, .jsonl or .parquet file')
  examples, _ = load_coverbench(data_file, config.source_field)
  return CoverBenchBenchmark(examples, style=config.prompt)


def run(config: ml_collections.ConfigDict, workdir: str, mode: str) -> dict:
  """Runs config.mode and returns the summary (also in workdir/summary.json, .md, .png).

  generate: answers config.data_file with the model of config.checkpoint (see make_responder) in
  resumable batches: a rerun with the same workdir only answers the examples not yet in
  workdir/responses.jsonl. score: scores config.responses against config.data_file (no re-prompt is possible there: an
  answer without a verdict counts as unparsed). smoke: writes a small generated set into
  workdir/smoke_data and answers it with a seeded random guesser (a plumbing check of prompts,
  truncation, re-prompts, resumable batches and reports, not a model). `mode` is launch.py's
  --mode; a benchmark only evaluates, so it is not used.
  """
  del mode
  if config.mode == 'generate':
    bench = make_benchmark(config, config.data_file)  # before the model: a bad data file fails fast
    responder = make_responder(config)
    run_info = {'data_file': os.path.abspath(config.data_file), 'n': len(bench), 'prompt': config.prompt,
                'responder': 'mmjax', 'checkpoint': os.path.abspath(config.checkpoint),
                'base': config.base, 'max_new_tokens': max_new_tokens(config),
                'max_context_tokens': responder.max_context_tokens,
                'system_message': config.system_message, 'dtype': config.compute_dtype}
    return evaluate(bench, responder, workdir, batch_size=config.batch_size, run_info=run_info,
                    title=f'{TITLE}: {os.path.basename(os.path.normpath(config.checkpoint))} ({config.prompt})',
                    progress=config.progress_bar).summary
  if config.mode == 'score':
    if not config.responses:
      raise ValueError('CoverBench score mode: set --config.responses to a JSONL file of '
                       '{"id": <position in the data file>, "response": "..."}')
    return score_file(make_benchmark(config, config.data_file), config.responses, workdir,
                      title=TITLE).summary
  if config.mode == 'smoke':
    data_file = write_synthetic_coverbench(
        os.path.join(workdir, 'smoke_data', 'coverbench.jsonl'), seed=config.seed, filler=12)
    bench = make_benchmark(config, data_file)
    guesser = GuessResponder(['Correct', '**Incorrect**.', 'Hard to say.'], seed=config.seed,
                             max_context_tokens=config.smoke_context_tokens)
    run_info = {'data_file': data_file, 'n': len(bench), 'prompt': config.prompt,
                'responder': 'guess'}
    return evaluate(bench, guesser, workdir, batch_size=config.batch_size, run_info=run_info,
                    title=TITLE + ' (smoke: random guesses)', progress=config.progress_bar).summary
  raise ValueError(f"CoverBench: unknown mode {config.mode!r}; expected 'generate', 'score' or 'smoke'")
