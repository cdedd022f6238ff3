"""MMIU (multi-image multiple choice, 52 tasks over 7 relations): run an mmjax LLaVA-OneVision, or score responses.

get_config('variant=default|smoke'); the program is launch.py's --mode: generate (the default) or score.

  # an mmjax LLaVA-OneVision (HF directory), greedy; images under the data file's folder; rerun to resume
  python launch.py --config configs/mmiu.py --mode generate --workdir runs/mmiu_ov7b \
      --config.data_file=/data/MMIU/all.json --config.checkpoint=/models/llava-onevision-qwen2-7b-ov-hf
  # cap the images per question (random subsample seeded by config.seed) to bound the sequence
  python launch.py --config configs/mmiu.py --mode generate --workdir runs/mmiu_ov7b_max8 \
      --config.data_file=/data/MMIU/all.json --config.checkpoint=/models/llava-onevision-qwen2-7b-ov-hf \
      --config.max_images=8

  # score responses of any system: R.jsonl holds {"id": <position in F>, "response": "..."} per line
  python launch.py --config configs/mmiu.py --mode score --workdir runs/mmiu_score \
      --config.data_file=/data/MMIU/all.json --config.responses=R.jsonl
  # the same from the HF parquet or InternVL's nested jsonl
  python launch.py --config configs/mmiu.py --mode score --workdir runs/mmiu_score \
      --config.data_file=/data/MMIU/all.parquet --config.responses=R.jsonl
  # seconds: the harness end to end on generated shapes questions, answered by random guesses
  python launch.py --config configs/mmiu.py:variant=smoke --workdir runs/mmiu_smoke
"""
import ml_collections

from mmjax.evals.config import benchmark_config
from mmjax.train.config import parse_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = parse_arg(arg, variant='default')
  c = benchmark_config('experiments.mmiu.experiment', arg.variant)
  c.image_root = ''  # '' = the data file's folder
  c.max_images = 0  # > 0: random subsample (seeded by config.seed) to at most this many images
  c.max_new_tokens = 32  # generate: the prompt asks for the option letter directly
  c.smoke_context_tokens = 320  # smoke: small enough that images are subsampled
  return c
