"""MMIU (multi-image multiple choice, 52 tasks over 7 relations): score saved responses.

  # score responses of any system: R.jsonl holds {"id": <position in F>, "response": "..."} per line
  python launch.py --config configs/mmiu.py:mode=score --workdir runs/mmiu_score \
      --config.data_file=/data/MMIU/all.json --config.responses=R.jsonl
  # the same from the HF parquet or InternVL's nested jsonl
  python launch.py --config configs/mmiu.py:mode=score --workdir runs/mmiu_score \
      --config.data_file=/data/MMIU/all.parquet --config.responses=R.jsonl
  # seconds: the harness end to end on generated shapes questions, answered by random guesses
  python launch.py --config configs/mmiu.py:mode=smoke --workdir runs/mmiu_smoke

Running an mmjax model (LLaVA-OneVision) on MMIU is not wired yet; see experiments/mmiu/README.md.
"""
import ml_collections

from mmjax.train.config import base_config, parse_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = parse_arg(arg, mode='score')
  if arg.mode not in ('score', 'smoke'):
    raise ValueError(f"mode must be 'score' or 'smoke', got {arg.mode!r}")
  c = base_config()
  c.experiment = 'experiments.mmiu.experiment'
  c.mode = arg.mode
  c.data_file = ''  # all.json / all.parquet / per-task metadata_info.json / nested mmiu.jsonl
  c.image_root = ''  # '' = the data file's folder
  c.responses = ''  # score mode: JSONL of {"id", "response"}
  c.max_images = 0  # > 0: random subsample (seeded by config.seed) to at most this many images
  c.batch_size = 8  # prompts per responder call
  c.smoke_context_tokens = 320  # smoke: the guesser's window, small enough to subsample images
  return c
