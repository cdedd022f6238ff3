"""The SENSE learning smoke in one process: SFT of the tiny decoder on the smoke world's strong data, greedy held-out
EX, DPO from it on execution-labelled pairs, greedy held-out EX again; each stage's CPU seconds.

  python -m experiments.sense.learning --root /tmp/sense_learning --seeds 0,1,2 [--control] \
      [--sft k=v,...] [--dpo k=v,...]

Overrides are config keys (dotted for nested ones: optim.lr=1e-4, dpo.nll_weight=1) with Python-literal values;
without them, the smoke config's defaults. The SFT workdir of a (seed, SFT overrides) is reused when it exists, so
DPO settings can be swept over one SFT run. Held-out EX is reported overall and on the dev questions of the strong
data's blind-spot templates and of the clean ones; --control adds the SFT continued for DPO's steps. The README
("The learning smoke") lists what was measured; tests/experiments/sense/test_learning.py runs seed 0.
"""
from __future__ import annotations

import argparse
import ast
import hashlib
import json
import os
import resource
import shutil
import time

from configs.sense import get_config
from experiments.sense import experiment, generate, smoke, train

SHARED = ('smoke.', 'model.', 'seq_len', 'max_new_tokens', 'tokenizer_min_count', 'tokenizer_gold_sql', 'example_rows')


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


def blind_templates(world: smoke.SmokeWorld) -> set[str]:
  """The templates whose strong (SFT) data carries a fault in at least one train instance: a blind-spot template
  whose fault never changes a result (COUNT(DISTINCT pk) for COUNT(*) over the parents) teaches no mistake."""
  return {world.templates[(e.db_id, e.sql)] for e, s in zip(world.train, world.strong) if s.sql != e.sql}


def _scored(config, workdir: str) -> dict:
  """Greedy dev EX of the workdir's checkpoint, overall and per group: 'blind' (dev questions of the strong data's
  blind-spot templates, `blind_templates`) and 'clean' (the other templates); each [right, n]."""
  world = train.smoke_world(config, workdir)
  summary = generate.run_generate(config, workdir)
  blind = blind_templates(world)
  groups = {'blind': [0, 0], 'clean': [0, 0]}
  path = os.path.join(workdir, f'generate_{config.benchmark}_{config.split}', 'verdicts.jsonl')
  with open(path, encoding='utf-8') as f:
    for line in f:
      v = json.loads(line)
      group = groups['blind' if world.templates[(v['db_id'], v['gold'])] in blind else 'clean']
      group[0] += bool(v['correct'])
      group[1] += 1
  return {'ex': summary['accuracy'], **groups}


def pair_stats(config, workdir: str) -> dict:
  """What the DPO pairs aim at: pairs on questions of blind-spot templates, and of those the pairs whose rejected
  SQL is the strong data's faulty SQL for that question (the blind spot itself); questions with pairs; anchors
  (dpo.anchor_weight), all and on blind-spot templates."""
  world = train.smoke_world(config, workdir)
  blind_set = blind_templates(world)
  strong = {(e.db_id, e.question): s.sql for e, s in zip(world.train, world.strong)}
  gold = {(e.db_id, e.question): e.sql for e in world.train}
  out = {'pairs': 0, 'blind_pairs': 0, 'fault_pairs': 0, 'questions': 0, 'blind_questions': 0, 'anchors': 0,
         'blind_anchors': 0}
  seen = set()
  with open(os.path.join(workdir, 'pairs.jsonl'), encoding='utf-8') as f:
    for line in f:
      p = json.loads(line)
      key = (p['db_id'], p['question'])
      blind = world.templates[(p['db_id'], gold[key])] in blind_set
      if p.get('anchor'):
        out['anchors'] += 1
        out['blind_anchors'] += blind
        continue
      out['pairs'] += 1
      out['blind_pairs'] += blind
      out['fault_pairs'] += blind and strong[key] != gold[key] and p['rejected'] == strong[key]
      if key not in seen:
        seen.add(key)
        out['questions'] += 1
        out['blind_questions'] += blind
  return out


def _timed(fn, *args):
  t0 = cpu_seconds()
  value = fn(*args)
  return value, cpu_seconds() - t0


def run(root: str, seed: int, sft: dict | None = None, dpo: dict | None = None, control: bool = False) -> dict:
  """SFT (reused from <root>/sft_<seed>_<hash of sft> when already trained), then DPO in a fresh workdir; returns the
  held-out EX of both (overall, and [right, n] on blind-spot and clean templates), what the pairs aim at and the CPU
  seconds of each stage (load on a shared machine inflates the system part). control: also the SFT checkpoint
  trained further with plain SFT on the strong data for DPO's steps, batch size and optimiser settings, so that a
  gain of DPO is not just more training."""
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
    _, cpu_train = _timed(experiment.run_train, sft_config, sft_dir)
    scored, cpu_generate = _timed(_scored, sft_config, sft_dir)
    done = {**{f'sft_{k}': v for k, v in scored.items()}, 'cpu_sft_train': cpu_train, 'cpu_sft_generate': cpu_generate}
    with open(result_path, 'w', encoding='utf-8') as f:
      json.dump(done, f)
    out.update(done)
  dpo_tag = hashlib.sha1(json.dumps(dpo, sort_keys=True).encode()).hexdigest()[:8]
  dpo_dir = os.path.join(root, f'dpo_{seed}_{tag}_{dpo_tag}')
  shared = {k: v for k, v in sft.items() if k.startswith(SHARED)}  # the world, the model and its token budget
  dpo_config = stage_config('dpo', seed, {**shared, 'init_from': sft_dir, **dpo})
  _, out['cpu_dpo_train'] = _timed(experiment.run_train, dpo_config, dpo_dir)
  scored, out['cpu_dpo_generate'] = _timed(_scored, dpo_config, dpo_dir)
  out.update({f'dpo_{k}': v for k, v in scored.items()})
  out.update(pair_stats(dpo_config, dpo_dir))
  if control:
    ctl_dir = os.path.join(root, f'ctl_{seed}_{tag}_{dpo_tag}')
    os.makedirs(ctl_dir, exist_ok=True)
    shutil.copyfile(os.path.join(sft_dir, train.TOKENIZER), os.path.join(ctl_dir, train.TOKENIZER))
    ctl_config = stage_config('sft', seed, {
        **sft, 'init_from': sft_dir, 'total_steps': dpo_config.total_steps, 'batch_size': dpo_config.batch_size,
        'optim.lr': dpo_config.optim.lr, 'optim.warmup_steps': dpo_config.optim.warmup_steps})
    _, out['cpu_ctl_train'] = _timed(experiment.run_train, ctl_config, ctl_dir)
    scored, _ = _timed(_scored, ctl_config, ctl_dir)
    out.update({f'ctl_{k}': v for k, v in scored.items()})
  out['dev_n'] = out['dpo_blind'][1] + out['dpo_clean'][1]
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
  p.add_argument('--control', action='store_true', help='also continue the SFT for the DPO steps (the control)')
  args = p.parse_args()
  for seed in map(int, args.seeds.split(',')):
    print(json.dumps(run(args.root, seed, _parse(args.sft), _parse(args.dpo), args.control)), flush=True)


if __name__ == '__main__':
  main()
