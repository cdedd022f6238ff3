"""CoverBench: score saved responses (mode=score), or a smoke run of the harness on generated data.

`run(config, workdir, mode)` is what launch.py calls. Running an mmjax model on CoverBench needs a
Qwen2 text model behind the `mmjax.evals.Responder` protocol and is not wired yet (see README.md).
"""
from __future__ import annotations

import os

import ml_collections

from mmjax.evals import GuessResponder, evaluate, score_file
from experiments.coverbench.benchmark import CoverBenchBenchmark
from experiments.coverbench.data import load_coverbench
from experiments.coverbench.synthetic import write_synthetic_coverbench

TITLE = 'CoverBench'


def make_benchmark(config: ml_collections.ConfigDict, data_file: str) -> CoverBenchBenchmark:
  """The benchmark over `data_file` with config.prompt ('zero_shot' or 'cot')."""
  if not data_file:
    raise ValueError('CoverBench: set --config.data_file to the .json, .jsonl or .parquet file')
  examples, _ = load_coverbench(data_file, config.source_field)
  return CoverBenchBenchmark(examples, style=config.prompt)


def run(config: ml_collections.ConfigDict, workdir: str, mode: str) -> dict:
  """Runs config.mode and returns the summary (also in workdir/summary.json, .md, .png).

  score: scores config.responses against config.data_file (no re-prompt is possible there: an
  answer without a verdict counts as unparsed). smoke: writes a small generated set into
  workdir/smoke_data and answers it with a seeded random guesser (a plumbing check of prompts,
  truncation, re-prompts, resumable batches and reports, not a model). `mode` is launch.py's
  --mode; a benchmark only evaluates, so it is not used.
  """
  del mode
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
  raise ValueError(f"CoverBench: unknown mode {config.mode!r}; expected 'score' or 'smoke'")
