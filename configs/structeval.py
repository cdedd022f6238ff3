"""StructEval (Cao et al., arXiv 2408.03281; the released v1 Struct* sets): run an mmjax model, or score responses.

get_config('variant=default|smoke'); the program is launch.py's --mode: generate (a chat model, the default), ppl (a
base model: the option of lowest perplexity) or score (saved responses). The data file is a struct file or a folder
of them (c-box/StructEval struct_benchmark/struct_data/...).

  # a chat model (HF directory), greedy, the official zero-shot prompt; rerun the same command to resume
  python launch.py --config configs/structeval.py --mode generate --workdir runs/struct_mmlu_qwen2_7b_it \
      --config.data_file=/data/struct_data/struct_mmlu --config.checkpoint=/models/Qwen2-7B-Instruct
  # a base model: lowest perplexity over the four '...\\nAnswer: X' strings
  python launch.py --config configs/structeval.py --mode ppl --workdir runs/struct_mmlu_qwen2_7b \
      --config.data_file=/data/struct_data/struct_mmlu --config.checkpoint=/models/Qwen2-7B
  # also ask the seed questions (strict mastery with the seed, seed accuracy)
  python launch.py --config configs/structeval.py --mode generate --workdir runs/struct_obqa_seeds \
      --config.data_file=/data/struct_data/struct_openbookqa --config.checkpoint=/models/Qwen2-7B-Instruct \
      --config.include_seeds=True

  # score responses of any system: R.jsonl holds {"id": <position in the flattened items>, "response": "..."}
  python launch.py --config configs/structeval.py --mode score --workdir runs/struct_score \
      --config.data_file=/data/struct_data/struct_openbookqa/test_v1_gpt-4o-mini.json --config.responses=R.jsonl
  # seconds: the harness end to end on a synthetic knowledge-base set, answered by random guesses
  python launch.py --config configs/structeval.py:variant=smoke --workdir runs/structeval_smoke
"""
import ml_collections

from experiments.structeval import settings
from mmjax.evals.config import benchmark_config
from mmjax.train.config import parse_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = parse_arg(arg, variant='default')
  c = benchmark_config('experiments.structeval.experiment', arg.variant)
  c.include_seeds = False  # True: the seed questions follow the Struct items (ids n..n+seeds-1), for the seed views
  c.max_new_tokens = 32  # generate: the prompt asks for the option letter
  c.generation = ml_collections.ConfigDict(settings.GENERATION)  # --mode generate_struct (see settings.py)
  c.contamination = ml_collections.ConfigDict(settings.CONTAMINATION)  # --mode contaminate
  return c
