"""StructEval on the shared benchmark programs (`mmjax.evals.programs`): `launch.py --config configs/structeval.py
--mode M`.

generate (the default): a chat model (config.checkpoint) answers the official zero-shot prompt greedily, in resumable
batches; score: scores saved responses (config.responses); ppl: a base model picks the option of lowest perplexity
(ppl.py), also resumable, its letters stored as the responses. variant=smoke: a synthetic knowledge-base set in
workdir/smoke_data, answered by a seeded random guesser (a plumbing check, not a model).
"""
from __future__ import annotations

import dataclasses

import ml_collections

from experiments.structeval.benchmark import StructEvalBenchmark
from experiments.structeval.data import load_struct
from experiments.structeval.ppl import PPLScorer
from experiments.structeval.synthetic import write_synthetic_struct
from mmjax.evals import BenchmarkTask, benchmark_programs, run_generate

DATA_FORMATS = ('a struct file (e.g. struct_data/struct_openbookqa/test_v1_gpt-4o-mini.json) or a folder of them '
                '(e.g. struct_data/struct_mmlu, struct_data)')


def load(config: ml_collections.ConfigDict, data_file: str) -> StructEvalBenchmark:
  """The generation benchmark over `data_file` (with the seeds as items when config.include_seeds)."""
  return StructEvalBenchmark(load_struct(data_file, config.include_seeds), style='chat')


def load_ppl(config: ml_collections.ConfigDict, data_file: str) -> StructEvalBenchmark:
  """The perplexity benchmark over `data_file`."""
  return StructEvalBenchmark(load_struct(data_file, config.include_seeds), style='ppl')


def smoke_data(config: ml_collections.ConfigDict, folder: str) -> str:
  return write_synthetic_struct(folder, seed=config.seed).path


TASK = BenchmarkTask(
    title='StructEval', load=load, data_formats=DATA_FORMATS, responder='chat', smoke_data=smoke_data,
    smoke_answers=('A', 'B.', 'The answer is C.', '(D)', 'I am not sure.'),
    run_info=lambda config, bench: {'include_seeds': config.include_seeds, 'style': bench.style})
PPL_TASK = dataclasses.replace(TASK, title='StructEval (PPL)', load=load_ppl)


def run_ppl(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Scores the four options of every item with the base model of config.checkpoint (see ppl.py), resumably."""
  responder = None
  if config.variant != 'smoke':
    if not config.data_file:
      raise ValueError(f'{PPL_TASK.title}: set --config.data_file to {DATA_FORMATS}')
    load_ppl(config, config.data_file)  # bad data fails before the model loads
    responder = PPLScorer.load(config.checkpoint, base=config.base, dtype=config.compute_dtype,
                               batch_size=config.batch_size, context_tokens=config.context_tokens)
  return run_generate(PPL_TASK, config, workdir, responder=responder)


def run_generate_struct(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """The generation pipeline (generation.py; imported here on use: it loads models)."""
  from experiments.structeval.generation import run_generate_struct as run
  return run(config, workdir)


def run_contamination(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """The contamination experiment (contamination.py; imported here on use: it loads the trainer)."""
  from experiments.structeval.contamination import run_contamination as run
  return run(config, workdir)


PROGRAMS = {**benchmark_programs(TASK), 'ppl': run_ppl, 'generate_struct': run_generate_struct,
            'contaminate': run_contamination}
