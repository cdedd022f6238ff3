"""Train-step benchmark: the mmjax ViT step (trainer's jitted step, AdamW, clipping) against the
same model and optimiser in PyTorch, measured side by side in one process.

  python -m experiments.bench.train_step                 # default vit_digits dims, batch 64 and 256
  python -m experiments.bench.train_step --batch 64 --steps 50 --no-compile

Prints compile time, median step time and examples/s for each, and the ratio torch/mmjax
(> 1 means mmjax is faster). Appends the table to experiments/bench/RESULTS.md and writes
JSON next to it unless --no-record.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import time

import jax
import numpy as np

from configs import vit_digits
from experiments.bench.timing import median_time
from experiments.vit_digits.experiment import make_experiment
from mmjax.data import make_global_batch
from mmjax.train.trainer import TrainSetup

HERE = os.path.dirname(os.path.abspath(__file__))


def _batch(n, rng):
  return {'image': rng.random((n, 8, 8, 1), dtype=np.float32),
          'label': rng.integers(0, 10, size=(n,)).astype(np.int32)}


def time_mmjax(config, batch_np, steps, warmup):
  setup = TrainSetup(config, make_experiment(config))
  state = setup.init_state(jax.random.PRNGKey(0))
  step_fn = setup.build_step()
  batch = make_global_batch(batch_np, setup.batch_sharding)
  t0 = time.perf_counter()
  with setup.scope():
    compiled = step_fn.lower(state, batch).compile()
  compile_s = time.perf_counter() - t0
  holder = [state]

  def run():
    holder[0], m = compiled(holder[0], batch)
    jax.block_until_ready(m)

  return compile_s, median_time(run, steps, warmup), setup.num_params


def torch_model(config):
  import torch
  from torch import nn

  m = config.model

  class ViT(nn.Module):
    def __init__(self):
      super().__init__()
      self.patch = nn.Conv2d(1, m.width, m.patch, stride=m.patch)
      tokens = (8 // m.patch) ** 2
      self.pos = nn.Parameter(torch.randn(1, tokens, m.width) * 0.02)
      layer = nn.TransformerEncoderLayer(m.width, m.num_heads, m.mlp_dim, dropout=0.0, activation='gelu',
                                         batch_first=True, norm_first=True, layer_norm_eps=1e-6)
      self.encoder = nn.TransformerEncoder(layer, m.depth, enable_nested_tensor=False)
      self.norm = nn.LayerNorm(m.width, eps=1e-6)
      self.head = nn.Linear(m.width, 10)

    def forward(self, x):  # x [B, 1, 8, 8]
      x = self.patch(x * 2 - 1).flatten(2).transpose(1, 2) + self.pos
      return self.head(self.norm(self.encoder(x)).mean(1))

  return ViT()


def time_torch(config, batch_np, steps, warmup, compile_model):
  import torch

  torch.manual_seed(0)
  model = torch_model(config)
  opt = torch.optim.AdamW(model.parameters(), lr=config.optim.lr, weight_decay=config.optim.weight_decay)
  x = torch.from_numpy(np.ascontiguousarray(batch_np['image'].transpose(0, 3, 1, 2)))
  y = torch.from_numpy(batch_np['label']).long()
  loss_fn = torch.nn.CrossEntropyLoss()

  def step():
    opt.zero_grad(set_to_none=True)
    loss = loss_fn(model(x), y)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), config.optim.clip_norm)
    opt.step()
    return loss

  fn = torch.compile(step) if compile_model else step
  t0 = time.perf_counter()
  fn()
  compile_s = time.perf_counter() - t0
  return compile_s, median_time(fn, steps, warmup)


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--batch', type=int, nargs='+', default=[64, 256])
  p.add_argument('--steps', type=int, default=30)
  p.add_argument('--warmup', type=int, default=3)
  p.add_argument('--no-compile', action='store_true', help='skip the torch.compile baseline')
  p.add_argument('--no-record', action='store_true', help='print only; do not write RESULTS.md/JSON')
  args = p.parse_args()

  import torch

  config = vit_digits.get_config()
  config.mesh = {'data': 1, 'fsdp': 1, 'tensor': 1}
  rng = np.random.default_rng(0)
  rows = []
  for b in args.batch:
    config.batch_size = b
    batch = _batch(b, rng)
    jc, js, nparams = time_mmjax(config, batch, args.steps, args.warmup)
    row = {'batch': b, 'mmjax_compile_s': jc, 'mmjax_step_ms': js * 1e3, 'mmjax_ex_per_s': b / js}
    tc, ts = time_torch(config, batch, args.steps, args.warmup, compile_model=False)
    row.update(torch_eager_step_ms=ts * 1e3, torch_eager_ex_per_s=b / ts, ratio_eager=ts / js)
    if not args.no_compile:
      cc, cs = time_torch(config, batch, args.steps, args.warmup, compile_model=True)
      row.update(torch_compile_s=cc, torch_compiled_step_ms=cs * 1e3, torch_compiled_ex_per_s=b / cs,
                 ratio_compiled=cs / js)
    rows.append(row)
    print(json.dumps(row))

  env = {'date': datetime.date.today().isoformat(), 'machine': platform.machine(), 'cpus': os.cpu_count(),
         'device': str(jax.devices()[0].device_kind), 'jax': jax.__version__, 'torch': torch.__version__,
         'torch_threads': torch.get_num_threads(), 'params': nparams}
  lines = [f"\n## ViT train step (vit_digits dims, {nparams:,} params), {env['date']}\n",
           f"{env['device']} / {env['machine']} with {env['cpus']} cores; jax {env['jax']}, torch {env['torch']} "
           f"({env['torch_threads']} threads). Median of {args.steps} steps after {args.warmup} warm-ups.\n",
           '| batch | mmjax compile s | mmjax ms/step | mmjax ex/s | torch eager ms/step | eager/mmjax | '
           'torch.compile ms/step | compiled/mmjax |',
           '|---|---|---|---|---|---|---|---|']
  for r in rows:
    lines.append(f"| {r['batch']} | {r['mmjax_compile_s']:.2f} | {r['mmjax_step_ms']:.2f} | "
                 f"{r['mmjax_ex_per_s']:.0f} | "
                 f"{r['torch_eager_step_ms']:.2f} | {r['ratio_eager']:.2f}x | "
                 + (f"{r['torch_compiled_step_ms']:.2f} | {r['ratio_compiled']:.2f}x |" if 'ratio_compiled' in r
                    else 'n/a | n/a |'))
  lines.append('\nRatios are torch time / mmjax time: above 1 means the mmjax step is faster.\n'
               'Command: `python -m experiments.bench.train_step`\n')
  print('\n'.join(lines))
  if not args.no_record:
    with open(os.path.join(HERE, 'RESULTS.md'), 'a') as f:
      f.write('\n'.join(lines))
    with open(os.path.join(HERE, 'train_step.json'), 'w') as f:
      json.dump({'env': env, 'rows': rows}, f, indent=1)


if __name__ == '__main__':
  main()
