"""The SENSE learning smoke in one process: SFT of the tiny decoder on the smoke world's strong data, greedy held-out
EX, DPO from it on execution-labelled pairs, greedy held-out EX again; each stage's CPU seconds.

  python -m experiments.sense.learning --root /tmp/sense_learning --seeds 0,1 [--sft k=v,...] [--dpo k=v,...]

Overrides are config keys (dotted for nested ones: optim.lr=1e-4, dpo.nll_weight=1) with Python-literal values.
The SFT workdir of a (seed, SFT overrides) is reused when it exists, so DPO settings can be swept over one SFT run.
The README ("The learning smoke") lists what was measured; no setting beat SFT on two seeds yet, so no test runs this.
"""
from __future__ import annotations

import argparse
import ast
import hashlib
import json
import os
import resource
import time

from configs.sense import get_config
from experiments.sense import experiment, generate

SHARED = ('smoke.', 'model.', 'seq_len', 'max_new_tokens', 'tokenizer_min_count', 'example_rows')


def cpu_seconds() -> float:
  """User + system CPU seconds of this process and of its finished children (the SQL worker processes)."""
  c = resource.getrusage(resource.RUSAGE_CHILDREN)
  return time.process_time() + c.ru_utime + c.ru_stime


def stage_config(stage: str, seed: int, overrides: dict):
  """The smoke config of `stage` with config.seed = seed and the dotted-key overrides applied."""
  config = get_config(f'variant=smoke,stage={stage}')
  config.seed = seed
  for key, value in overrides.items():
    *path, leaf = key.split('.')
    target = config
    for name in path:
      target = target[name]
    if leaf not in target:
      raise KeyError(f'configs/sense.py (variant=smoke, stage={stage}) has no key {key!r}')
    target[leaf] = value
  return config


def _accuracy(config, workdir: str) -> float:
  return generate.run_generate(config, workdir)['accuracy']


def run(root: str, seed: int, sft: dict | None = None, dpo: dict | None = None) -> dict:
  """SFT (reused from <root>/sft_<seed>_<hash of sft> when already trained), then DPO in a fresh workdir; returns the
  held-out EX of both, the DPO stage's pair statistics and the CPU seconds of each stage (load on a shared
  machine inflates the system part)."""
  sft, dpo = dict(sft or {}), dict(dpo or {})
  tag = hashlib.sha1(json.dumps(sft, sort_keys=True).encode()).hexdigest()[:8]
  sft_dir = os.path.join(root, f'sft_{seed}_{tag}')
  out = {'seed': seed, 'sft': sft, 'dpo': dpo}
  sft_config = stage_config('sft', seed, sft)
  result_path = os.path.join(sft_dir, 'learning_sft.json')
  if os.path.isfile(result_path):
    with open(result_path, encoding='utf-8') as f:
      out.update(json.load(f))
  else:
    t0 = cpu_seconds()
    experiment.run_train(sft_config, sft_dir)
    t1 = cpu_seconds()
    sft_ex = _accuracy(sft_config, sft_dir)
    t2 = cpu_seconds()
    done = {'sft_ex': sft_ex, 'cpu_sft_train': t1 - t0, 'cpu_sft_generate': t2 - t1}
    with open(result_path, 'w', encoding='utf-8') as f:
      json.dump(done, f)
    out.update(done)
  dpo_tag = hashlib.sha1(json.dumps(dpo, sort_keys=True).encode()).hexdigest()[:8]
  dpo_dir = os.path.join(root, f'dpo_{seed}_{tag}_{dpo_tag}')
  shared = {k: v for k, v in sft.items() if k.startswith(SHARED)}  # the world, the model and its token budget
  dpo_config = stage_config('dpo', seed, {**shared, 'init_from': sft_dir, **dpo})
  t0 = cpu_seconds()
  experiment.run_train(dpo_config, dpo_dir)
  t1 = cpu_seconds()
  out['dpo_ex'] = _accuracy(dpo_config, dpo_dir)
  t2 = cpu_seconds()
  with open(os.path.join(dpo_dir, 'data_stats.json'), encoding='utf-8') as f:
    stats = json.load(f)
  out.update({'cpu_dpo_train': t1 - t0, 'cpu_dpo_generate': t2 - t1, 'pairs': stats.get('kept'),
              'dev_n': len(open(os.path.join(dpo_dir, 'smoke_world', 'dev_gold.sql')).read().splitlines())})
  return out


def _parse(text: str) -> dict:
  out = {}
  for item in filter(None, text.split(',')):
    key, _, value = item.partition('=')
    try:
      out[key] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      out[key] = value
  return out


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--root', required=True)
  p.add_argument('--seeds', default='0,1')
  p.add_argument('--sft', default='')
  p.add_argument('--dpo', default='')
  args = p.parse_args()
  for seed in map(int, args.seeds.split(',')):
    print(json.dumps(run(args.root, seed, _parse(args.sft), _parse(args.dpo))), flush=True)


if __name__ == '__main__':
  main()
