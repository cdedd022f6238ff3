"""CoverBench (complex claim verification, 733 examples, macro-F1): run an mmjax Qwen2, or score saved responses.

  # an mmjax Qwen2 chat model (HF directory), greedy, 0-shot; rerun the same command to resume
  python launch.py --config configs/coverbench.py:mode=generate --workdir runs/coverbench_qwen2 \
      --config.data_file=/data/coverbench/eval.parquet --config.checkpoint=/models/Qwen2-7B-Instruct
  # the chain-of-thought prompt (max_new_tokens defaults to 512 for it)
  python launch.py --config configs/coverbench.py:mode=generate,prompt=cot --workdir runs/coverbench_qwen2_cot \
      --config.data_file=/data/coverbench/eval.parquet --config.checkpoint=/models/Qwen2-7B-Instruct
  # an mmjax training workdir: its latest checkpoint, with the architecture and tokenizer of an HF directory
  python launch.py --config configs/coverbench.py:mode=generate --workdir runs/coverbench_ft \
      --config.data_file=/data/coverbench/eval.parquet --config.checkpoint=runs/my_run \
      --config.base=/models/Qwen2-7B-Instruct

  # score responses of any system: R.jsonl holds {"id": <position in F>, "response": "..."} per line
  python launch.py --config configs/coverbench.py:mode=score --workdir runs/coverbench_score \
      --config.data_file=/data/coverbench/eval.parquet --config.responses=R.jsonl
  # name the source-dataset column when it is not one of data.AUTO_SOURCE_FIELDS
  python launch.py --config configs/coverbench.py:mode=score --workdir runs/coverbench_score \
      --config.data_file=/data/coverbench/eval.jsonl --config.responses=R.jsonl \
      --config.source_field=source_dataset
  # seconds: the harness end to end on generated claims, answered by random guesses
  python launch.py --config configs/coverbench.py:mode=smoke --workdir runs/coverbench_smoke
"""
import ml_collections

from mmjax.train.config import base_config, parse_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = parse_arg(arg, mode='score', prompt='zero_shot')
  if arg.mode not in ('generate', 'score', 'smoke'):
    raise ValueError(f"mode must be 'generate', 'score' or 'smoke', got {arg.mode!r}")
  if arg.prompt not in ('zero_shot', 'cot'):
    raise ValueError(f"prompt must be 'zero_shot' or 'cot', got {arg.prompt!r}")
  c = base_config()
  c.experiment = 'experiments.coverbench.experiment'
  c.mode = arg.mode
  c.prompt = arg.prompt  # 'zero_shot' (ends 'Answer:') or 'cot' (ends "Let's think step-by-step:")
  c.data_file = ''  # .json (a list or {"eval": [...]}), .jsonl or .parquet
  c.responses = ''  # score mode: JSONL of {"id", "response"}
  c.source_field = 'auto'  # the source-dataset column; 'auto' tries data.AUTO_SOURCE_FIELDS
  c.batch_size = 8  # prompts per responder call (generate: per generate call; a rerun may change it)
  c.checkpoint = ''  # generate: an HF directory, or an mmjax training workdir (then also `base`)
  c.base = ''  # generate: the HF directory with the architecture and tokenizer of a workdir checkpoint
  c.max_new_tokens = -1  # generate: answer budget; -1 = 32 for zero_shot, 512 for cot
  c.context_tokens = 0  # generate: the window (prompt + answer); 0 = the model's max_position_embeddings
  c.system_message = 'You are a helpful assistant.'  # generate: the ChatML system turn
  c.smoke_context_tokens = 160  # smoke: the guesser's window, small enough to truncate contexts
  return c
