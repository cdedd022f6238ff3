"""MMIU: run an mmjax LLaVA-OneVision (mode=generate), score saved responses (mode=score), or a
smoke run of the harness on generated data.

`run(config, workdir, mode)` is what launch.py calls.
"""
from __future__ import annotations

import os

import ml_collections

from mmjax.evals import GuessResponder, evaluate, score_file
from experiments.mmiu.benchmark import MMIUBenchmark
from experiments.mmiu.data import load_mmiu
from experiments.mmiu.synthetic import write_synthetic_mmiu

TITLE = 'MMIU'


def make_responder(config: ml_collections.ConfigDict):
  """The LLaVA-OneVision responder of config.checkpoint (greedy)."""
  from mmjax.evals.responders import LlavaOnevisionResponder  # loads jax models: generate mode only
  return LlavaOnevisionResponder(config.checkpoint, base=config.base or None,
                                 max_new_tokens=config.max_new_tokens, batch_size=config.batch_size,
                                 context_tokens=config.context_tokens,
                                 system_message=config.system_message, dtype=config.compute_dtype)


def make_benchmark(config: ml_collections.ConfigDict, data_file: str) -> MMIUBenchmark:
  """The benchmark over `data_file`, images under config.image_root (default: its folder)."""
  if not data_file:
    raise ValueError('MMIU: set --config.data_file to all.json, all.parquet or mmiu.jsonl')
  root = config.image_root or os.path.dirname(os.path.abspath(data_file))
  return MMIUBenchmark(load_mmiu(data_file), image_root=root, seed=config.seed,
                       max_images=config.max_images)


def run(config: ml_collections.ConfigDict, workdir: str, mode: str) -> dict:
  """Runs config.mode and returns the summary (also in workdir/summary.json, .md, .png).

  generate: answers config.data_file with the model of config.checkpoint (see make_responder) in
  resumable batches: a rerun with the same workdir only answers the questions not yet in
  workdir/responses.jsonl. score: scores config.responses against config.data_file. smoke: writes
  a small shapes set into workdir/smoke_data and answers it with a seeded random guesser (a plumbing check of prompts,
  image subsampling, resumable batches and reports, not a model). `mode` is launch.py's --mode;
  a benchmark only evaluates, so it is not used.
  """
  del mode
  if config.mode == 'generate':
    bench = make_benchmark(config, config.data_file)  # before the model: bad data fails fast
    bench.check_images()
    responder = make_responder(config)
    run_info = {'data_file': os.path.abspath(config.data_file), 'n': len(bench),
                'image_root': bench.image_root, 'seed': config.seed, 'max_images': config.max_images,
                'responder': 'mmjax', 'checkpoint': os.path.abspath(config.checkpoint),
                'base': config.base, 'max_new_tokens': config.max_new_tokens,
                'max_context_tokens': responder.max_context_tokens,
                'system_message': config.system_message, 'dtype': config.compute_dtype}
    return evaluate(bench, responder, workdir, batch_size=config.batch_size, run_info=run_info,
                    title=f'{TITLE}: {os.path.basename(os.path.normpath(config.checkpoint))}',
                    progress=config.progress_bar).summary
  if config.mode == 'score':
    if not config.responses:
      raise ValueError('MMIU score mode: set --config.responses to a JSONL file of '
                       '{"id": <position in the data file>, "response": "..."}')
    return score_file(make_benchmark(config, config.data_file), config.responses, workdir,
                      title=TITLE).summary
  if config.mode == 'smoke':
    data_file = write_synthetic_mmiu(os.path.join(workdir, 'smoke_data'), seed=config.seed)
    bench = make_benchmark(config, data_file)
    bench.check_images()
    guesser = GuessResponder(['A', '(B)', 'The answer is C.', 'the first image', 'I am not sure.'],
                             seed=config.seed, max_context_tokens=config.smoke_context_tokens)
    run_info = {'data_file': data_file, 'n': len(bench), 'seed': config.seed,
                'max_images': config.max_images, 'responder': 'guess'}
    return evaluate(bench, guesser, workdir, batch_size=config.batch_size, run_info=run_info,
                    title=TITLE + ' (smoke: random guesses)', progress=config.progress_bar).summary
  raise ValueError(f"MMIU: unknown mode {config.mode!r}; expected 'generate', 'score' or 'smoke'")
