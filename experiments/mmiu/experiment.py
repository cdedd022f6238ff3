"""MMIU on the shared benchmark programs (`mmjax.evals.programs`): `launch.py --config configs/mmiu.py --mode M`.

generate (the default): answers config.data_file with an mmjax LLaVA-OneVision (config.checkpoint) in resumable
batches: a rerun with the same workdir only answers the questions not yet in workdir/responses.jsonl. score: scores
config.responses against config.data_file. variant=smoke: a small generated shapes set in workdir/smoke_data,
answered by a seeded random guesser (a plumbing check of prompts, image subsampling, resumable batches and reports,
not a model).
"""
from __future__ import annotations

import os

import ml_collections

from experiments.mmiu.benchmark import MMIUBenchmark
from experiments.mmiu.data import load_mmiu
from experiments.mmiu.synthetic import write_synthetic_mmiu
from mmjax.evals import BenchmarkTask, benchmark_programs


def load(config: ml_collections.ConfigDict, data_file: str) -> MMIUBenchmark:
  """The benchmark over `data_file`, images under config.image_root (default: its folder)."""
  root = config.image_root or os.path.dirname(os.path.abspath(data_file))
  return MMIUBenchmark(load_mmiu(data_file), image_root=root, seed=config.seed, max_images=config.max_images)


def run_info(config: ml_collections.ConfigDict, bench: MMIUBenchmark) -> dict:
  """What MMIU's prompts depend on besides the shared settings: where images come from and how they are cut."""
  return {'image_root': bench.image_root, 'seed': config.seed, 'max_images': config.max_images}


TASK = BenchmarkTask(
    title='MMIU', load=load, data_formats='all.json, all.parquet, a metadata_info.json or mmiu.jsonl',
    responder='llava_onevision', smoke_data=lambda config, folder: write_synthetic_mmiu(folder, seed=config.seed),
    smoke_answers=('A', '(B)', 'The answer is C.', 'the first image', 'I am not sure.'), run_info=run_info,
    check=MMIUBenchmark.check_images)
PROGRAMS = benchmark_programs(TASK)
