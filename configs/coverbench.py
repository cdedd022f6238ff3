"""CoverBench (complex claim verification, 733 examples, macro-F1): run an mmjax Qwen2, or score saved responses.

get_config('variant=default|smoke,prompt=zero_shot|cot'); the program is launch.py's --mode: generate (the default)
or score.

  # an mmjax Qwen2 chat model (HF directory), greedy, 0-shot; rerun the same command to resume
  python launch.py --config configs/coverbench.py --mode generate --workdir runs/coverbench_qwen2 \
      --config.data_file=/data/coverbench/eval.parquet --config.checkpoint=/models/Qwen2-7B-Instruct
  # the chain-of-thought prompt (max_new_tokens defaults to 512 for it)
  python launch.py --config configs/coverbench.py:prompt=cot --mode generate --workdir runs/coverbench_qwen2_cot \
      --config.data_file=/data/coverbench/eval.parquet --config.checkpoint=/models/Qwen2-7B-Instruct
  # an mmjax training workdir: its latest checkpoint, with the architecture and tokenizer of an HF directory
  python launch.py --config configs/coverbench.py --mode generate --workdir runs/coverbench_ft \
      --config.data_file=/data/coverbench/eval.parquet --config.checkpoint=runs/my_run \
      --config.base=/models/Qwen2-7B-Instruct

  # score responses of any system: R.jsonl holds {"id": <position in F>, "response": "..."} per line
  python launch.py --config configs/coverbench.py --mode score --workdir runs/coverbench_score \
      --config.data_file=/data/coverbench/eval.parquet --config.responses=R.jsonl
  # name the source-dataset column when it is not one of data.AUTO_SOURCE_FIELDS
  python launch.py --config configs/coverbench.py --mode score --workdir runs/coverbench_score \
      --config.data_file=/data/coverbench/eval.jsonl --config.responses=R.jsonl \
      --config.source_field=source_dataset
  # seconds: the harness end to end on generated claims, answered by random guesses
  python launch.py --config configs/coverbench.py:variant=smoke --workdir runs/coverbench_smoke
"""
import ml_collections

from mmjax.evals.config import benchmark_config
from mmjax.train.config import parse_arg

PROMPTS = ('zero_shot', 'cot')


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = parse_arg(arg, variant='default', prompt='zero_shot')
  if arg.prompt not in PROMPTS:
    raise ValueError(f"prompt must be 'zero_shot' or 'cot', got {arg.prompt!r}")
  c = benchmark_config('experiments.coverbench.experiment', arg.variant)
  c.prompt = arg.prompt  # 'zero_shot' (ends 'Answer:') or 'cot' (ends "Let's think step-by-step:")
  c.source_field = 'auto'  # the source-dataset column; 'auto' tries data.AUTO_SOURCE_FIELDS
  c.max_new_tokens = -1  # generate: answer budget; -1 = 32 for zero_shot, 512 for cot
  c.smoke_context_tokens = 160  # smoke: small enough to truncate the generated contexts
  return c
