"""MMIU (multi-image multiple choice, 52 tasks over 7 relations): run an mmjax LLaVA-OneVision, or score responses.

  # an mmjax LLaVA-OneVision (HF directory), greedy; images under the data file's folder; rerun to resume
  python launch.py --config configs/mmiu.py:mode=generate --workdir runs/mmiu_ov7b \
      --config.data_file=/data/MMIU/all.json --config.checkpoint=/models/llava-onevision-qwen2-7b-ov-hf
  # cap the images per question (random subsample seeded by config.seed) to bound the sequence
  python launch.py --config configs/mmiu.py:mode=generate --workdir runs/mmiu_ov7b_max8 \
      --config.data_file=/data/MMIU/all.json --config.checkpoint=/models/llava-onevision-qwen2-7b-ov-hf \
      --config.max_images=8

  # score responses of any system: R.jsonl holds {"id": <position in F>, "response": "..."} per line
  python launch.py --config configs/mmiu.py:mode=score --workdir runs/mmiu_score \
      --config.data_file=/data/MMIU/all.json --config.responses=R.jsonl
  # the same from the HF parquet or InternVL's nested jsonl
  python launch.py --config configs/mmiu.py:mode=score --workdir runs/mmiu_score \
      --config.data_file=/data/MMIU/all.parquet --config.responses=R.jsonl
  # seconds: the harness end to end on generated shapes questions, answered by random guesses
  python launch.py --config configs/mmiu.py:mode=smoke --workdir runs/mmiu_smoke
"""
import ml_collections

from mmjax.train.config import base_config, parse_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = parse_arg(arg, mode='score')
  if arg.mode not in ('generate', 'score', 'smoke'):
    raise ValueError(f"mode must be 'generate', 'score' or 'smoke', got {arg.mode!r}")
  c = base_config()
  c.experiment = 'experiments.mmiu.experiment'
  c.mode = arg.mode
  c.data_file = ''  # all.json / all.parquet / per-task metadata_info.json / nested mmiu.jsonl
  c.image_root = ''  # '' = the data file's folder
  c.responses = ''  # score mode: JSONL of {"id", "response"}
  c.max_images = 0  # > 0: random subsample (seeded by config.seed) to at most this many images
  c.batch_size = 8  # prompts per responder call (generate: per generate call; a rerun may change it)
  c.checkpoint = ''  # generate: an HF directory, or an mmjax training workdir (then also `base`)
  c.base = ''  # generate: the HF directory with the architecture and tokenizer of a workdir checkpoint
  c.max_new_tokens = 32  # generate: answer budget (the prompt asks for the option letter directly)
  c.context_tokens = 0  # generate: the window (prompt + answer); 0 = the model's max_position_embeddings
  c.system_message = 'You are a helpful assistant.'  # generate: the ChatML system turn
  c.smoke_context_tokens = 320  # smoke: the guesser's window, small enough to subsample images
  return c
