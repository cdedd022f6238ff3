"""CoverBench on the shared benchmark programs (`mmjax.evals.programs`): `launch.py --config configs/coverbench.py
--mode M`.

generate (the default): answers config.data_file with an mmjax Qwen2 chat model (config.checkpoint) in resumable
batches: a rerun with the same workdir only answers the examples not yet in workdir/responses.jsonl. score: scores
config.responses against config.data_file (no re-prompt is possible there: an answer without a verdict counts as
unparsed). variant=smoke: a small generated set in workdir/smoke_data, answered by a seeded random guesser (a
plumbing check of prompts, truncation, re-prompts, resumable batches and reports, not a model).
"""
from __future__ import annotations

import os

import ml_collections

from experiments.coverbench.benchmark import CoverBenchBenchmark
from experiments.coverbench.data import load_coverbench
from experiments.coverbench.synthetic import write_synthetic_coverbench
from mmjax.evals import BenchmarkTask, benchmark_programs

MAX_NEW_TOKENS = {'zero_shot': 32, 'cot': 512}  # config.max_new_tokens = -1: by prompt style


def max_new_tokens(config: ml_collections.ConfigDict) -> int:
  """config.max_new_tokens, or the prompt style's default when it is -1."""
  return MAX_NEW_TOKENS[config.prompt] if config.max_new_tokens == -1 else config.max_new_tokens


def load(config: ml_collections.ConfigDict, data_file: str) -> CoverBenchBenchmark:
  """The benchmark over `data_file` with config.prompt ('zero_shot' or 'cot')."""
  examples, _ = load_coverbench(data_file, config.source_field)
  return CoverBenchBenchmark(examples, style=config.prompt)


def smoke_data(config: ml_collections.ConfigDict, folder: str) -> str:
  """Generated claims with contexts long enough that the smoke window truncates them."""
  return write_synthetic_coverbench(os.path.join(folder, 'coverbench.jsonl'), seed=config.seed, filler=12)


TASK = BenchmarkTask(
    title='CoverBench', load=load, data_formats='a .json, .jsonl or .parquet file', responder='chat',
    smoke_data=smoke_data, smoke_answers=('Correct', '**Incorrect**.', 'Hard to say.'),
    run_info=lambda config, bench: {'prompt': config.prompt}, max_new_tokens=max_new_tokens)
PROGRAMS = benchmark_programs(TASK)
