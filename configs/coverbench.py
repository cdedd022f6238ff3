"""CoverBench (complex claim verification, 733 examples, macro-F1): score saved responses.

  # score responses of any system: R.jsonl holds {"id": <position in F>, "response": "..."} per line
  python launch.py --config configs/coverbench.py:mode=score --workdir runs/coverbench_score \
      --config.data_file=/data/coverbench/eval.parquet --config.responses=R.jsonl
  # name the source-dataset column when it is not one of data.AUTO_SOURCE_FIELDS
  python launch.py --config configs/coverbench.py:mode=score --workdir runs/coverbench_score \
      --config.data_file=/data/coverbench/eval.jsonl --config.responses=R.jsonl \
      --config.source_field=source_dataset
  # seconds: the harness end to end on generated claims, answered by random guesses
  python launch.py --config configs/coverbench.py:mode=smoke --workdir runs/coverbench_smoke

Running an mmjax model (Qwen2) on CoverBench is not wired yet; see experiments/coverbench/README.md.
"""
import ml_collections

from mmjax.train.config import base_config, parse_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = parse_arg(arg, mode='score', prompt='zero_shot')
  if arg.mode not in ('score', 'smoke'):
    raise ValueError(f"mode must be 'score' or 'smoke', got {arg.mode!r}")
  if arg.prompt not in ('zero_shot', 'cot'):
    raise ValueError(f"prompt must be 'zero_shot' or 'cot', got {arg.prompt!r}")
  c = base_config()
  c.experiment = 'experiments.coverbench.experiment'
  c.mode = arg.mode
  c.prompt = arg.prompt  # 'zero_shot' (ends 'Answer:') or 'cot' (ends "Let's think step-by-step:")
  c.data_file = ''  # .json (a list or {"eval": [...]}), .jsonl or .parquet
  c.responses = ''  # score mode: JSONL of {"id", "response"}
  c.source_field = 'auto'  # the source-dataset column; 'auto' tries data.AUTO_SOURCE_FIELDS
  c.batch_size = 8  # prompts per responder call
  c.smoke_context_tokens = 160  # smoke: the guesser's window, small enough to truncate contexts
  return c
