"""Compile-time benchmark of scanned decoder layers (nn.scan) against unrolled ones, measured side by side in one run.

  python -m experiments.bench.compile_time                      # LLaVA-OV 72B lowering + the 98M LM step
  XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m experiments.bench.compile_time --llava-compile
  python -m experiments.bench.compile_time --llava-size 7b --llava-layers 8 --no-record

LLaVA-OneVision: the real training step (mmjax.train.aot) lowered on an abstract 256-device mesh (fsdp 32 x
tensor 8), and with --llava-compile compiled for this machine's devices (all on the tensor axis; one example of
--compile-length tokens per device and step: the program is the same, only its shapes shrink). 98M LM (the Qwen2
shape of lm_step.py): the trainer's AdamW step, compile seconds (trace + lower + compile) and median step time. Each
measurement runs in a fresh process. Appends a table to experiments/bench/RESULTS.md unless --no-record.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import jax

from configs import llava_onevision
from experiments.bench.lm_step import compiled_train_step
from experiments.bench.qwen2_100m import QWEN2_100M
from mmjax.models.qwen2 import Qwen2Config, Qwen2ForCausalLM
from mmjax.train import aot
from mmjax.train.mesh import make_mesh

HERE = os.path.dirname(os.path.abspath(__file__))
POD = {'data': 1, 'fsdp': 32, 'tensor': 8}


def llava_config(size: str, scan: bool, layers: int | None):
  config = llava_onevision.get_config(f'size={size},stage=ov')
  config.model.text.scan_layers = scan
  if layers:
    config.model.text.num_hidden_layers = layers
  return config


def llava_row(size: str, scan: bool, layers: int | None, compile_length: int | None) -> dict:
  """Lowering seconds on the abstract pod mesh; with compile_length, lower + compile seconds on 8 CPU devices."""
  config = llava_config(size, scan, layers)
  lowered = aot.lower_train_step(config, POD)
  row = {'model': f'llava-ov {size}', 'scan': scan, 'layers': config.model.text.num_hidden_layers,
         'lower_s': lowered.seconds, 'stablehlo_mb': len(lowered.lowered.as_text()) / 1e6}
  if compile_length:
    config.batch_size, config.data.max_length = jax.device_count(), compile_length
    local = aot.lower_train_step(config, make_mesh({'data': 1, 'fsdp': 1, 'tensor': jax.device_count()}))
    start = time.perf_counter()
    local.lowered.compile()
    row.update(cpu_lower_s=local.seconds, cpu_compile_s=time.perf_counter() - start)
  return row


def lm_step(scan: bool, batch: int, seq: int):
  """(compiled step, run() -> one blocking step, compile seconds, params) of the 98M LM's trainer step."""
  cfg = Qwen2Config(**QWEN2_100M, scan_layers=scan)
  compiled, state, b, num_params, compile_s = compiled_train_step(Qwen2ForCausalLM(cfg), cfg.vocab_size, batch, seq)
  holder = [state]

  def run():
    holder[0], m = compiled(holder[0], b)
    jax.block_until_ready(m)

  return run, compile_s, num_params


def lm_compile_row(scan: bool, batch: int, seq: int) -> dict:
  _, compile_s, num_params = lm_step(scan, batch, seq)
  return {'model': f'qwen2 {num_params / 1e6:.0f}M', 'scan': scan, 'compile_s': compile_s}


def lm_step_times(batch: int, seq: int, steps: int, warmup: int) -> dict:
  """Median step seconds of the scanned and the unrolled step, timed alternately in one process (so that the
  machine's other load falls on both alike)."""
  runs = {'scan': lm_step(True, batch, seq)[0], 'unrolled': lm_step(False, batch, seq)[0]}
  for run in runs.values():
    for _ in range(warmup):
      run()
  times = {name: [] for name in runs}
  for _ in range(steps):
    for name, run in runs.items():
      start = time.perf_counter()
      run()
      times[name].append(time.perf_counter() - start)
  return {f'{name}_step_s': statistics.median(t) for name, t in times.items()}


def markdown(rows: list[dict], args) -> list[str]:
  date = datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%d %H:%M UTC')
  lines = [f'\n## Scanned vs unrolled decoder layers: compile time, {date}\n',
           f'{jax.devices()[0].device_kind} / {platform.machine()} with {os.cpu_count()} cores; jax {jax.__version__}. '
           f'Command: `python -m experiments.bench.compile_time{" --llava-compile" if args.llava_compile else ""}'
           f'{f" --llava-size {args.llava_size}" if args.llava_size != "72b" else ""}'
           f'{f" --llava-layers {args.llava_layers}" if args.llava_layers else ""}`.\n',
           'LLaVA-OneVision training step (SigLIP unrolled in both; remat; AdamW) lowered on an abstract mesh '
           f'{POD}' + (f'; CPU compile: {jax.device_count()} devices (all tensor), batch {jax.device_count()} x '
                       f'{args.compile_length} tokens' if args.llava_compile else '') + '.\n',
           '| model | decoder layers | layers | lower s (pod mesh) | StableHLO MB | CPU lower s | CPU compile s |',
           '|---|---|---|---|---|---|---|']
  if not any('lower_s' in r for r in rows):
    lines = lines[:2]
  for r in (r for r in rows if 'lower_s' in r):
    cpu = (f"{r['cpu_lower_s']:.1f} | {r['cpu_compile_s']:.1f}" if 'cpu_compile_s' in r else 'n/a | n/a')
    lines.append(f"| {r['model']} | {'scanned' if r['scan'] else 'unrolled'} | {r['layers']} | {r['lower_s']:.1f} | "
                 f"{r['stablehlo_mb']:.1f} | {cpu} |")
  lm = [r for r in rows if 'compile_s' in r]
  steps = next((r for r in rows if 'scan_step_s' in r), None)
  if lm:
    lines += [f'\n98M Qwen2 LM train step (lm_step.py: AdamW, {args.batch} x {args.seq} tokens, 1 device): compile '
              'seconds (trace + lower + compile) in a fresh process each; step times timed alternately in one '
              f'process, median of {args.steps} after {args.warmup} warm-ups:\n',
              '| model | decoder layers | compile s | ms/step | tokens/s |', '|---|---|---|---|---|']
    for r in lm:
      step_s = steps[f"{'scan' if r['scan'] else 'unrolled'}_step_s"] if steps else None
      timing = f'{step_s * 1e3:.0f} | {args.batch * args.seq / step_s:.0f}' if step_s else 'n/a | n/a'
      lines.append(f"| {r['model']} | {'scanned' if r['scan'] else 'unrolled'} | {r['compile_s']:.1f} | {timing} |")
  return lines


def run_case(case: str, args) -> dict:
  """One measurement in a fresh process (no trace or compilation cache carried over from another case)."""
  cmd = [sys.executable, '-m', 'experiments.bench.compile_time', '--case', case] + [
      a for a in sys.argv[1:] if a != '--no-record']
  out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=args.case_timeout)
  return json.loads(out.stdout.strip().splitlines()[-1])


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--llava-size', default='72b', choices=sorted(llava_onevision.TEXT))
  p.add_argument('--llava-layers', type=int, default=None, help='decoder depth (default: the real one)')
  p.add_argument('--llava-compile', action='store_true', help='also compile the step on the CPU devices')
  p.add_argument('--compile-length', type=int, default=2048, help='tokens per example of the CPU compilation')
  p.add_argument('--no-llava', action='store_true')
  p.add_argument('--no-lm', action='store_true')
  p.add_argument('--batch', type=int, default=8)
  p.add_argument('--seq', type=int, default=256)
  p.add_argument('--steps', type=int, default=5)
  p.add_argument('--warmup', type=int, default=2)
  p.add_argument('--case-timeout', type=int, default=1800, help='seconds per measurement')
  p.add_argument('--case', default=None, help=argparse.SUPPRESS)  # llava-scan, lm-unrolled, ...: one measurement
  p.add_argument('--no-record', action='store_true')
  args = p.parse_args()
  if args.case:
    kind, how = args.case.split('-')
    if kind == 'llava':
      row = llava_row(args.llava_size, how == 'scan', args.llava_layers,
                      args.compile_length if args.llava_compile else None)
    elif how == 'steps':
      row = lm_step_times(args.batch, args.seq, args.steps, args.warmup)
    else:
      row = lm_compile_row(how == 'scan', args.batch, args.seq)
    print(json.dumps(row))
    return
  cases = [] if args.no_llava else ['llava-scan', 'llava-unrolled']
  cases += [] if args.no_lm else ['lm-scan', 'lm-unrolled', 'lm-steps']
  rows = []
  for case in cases:
    rows.append(run_case(case, args))
    print(json.dumps(rows[-1]), flush=True)
  lines = markdown(rows, args)
  print('\n'.join(lines))
  if not args.no_record:
    with open(os.path.join(HERE, 'RESULTS.md'), 'a') as f:
      f.write('\n'.join(lines) + '\n')


if __name__ == '__main__':
  main()
