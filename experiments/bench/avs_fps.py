"""AVESFormer vs the AVSegFormer-style baseline (same backbone, in_proj, FPN, blocks and mask head): FPS, params, FLOPs.

  python -m experiments.bench.avs_fps                       # PVTv2-b2, 224^2, 50 warm-up + 300 timed iterations
  python -m experiments.bench.avs_fps --backbone r50 --json avs_fps.json
  python -m experiments.bench.avs_fps --tiny --iters 2 --warmup 1   # tiny widths, seconds (the test)

Protocol (spec section 5; AVESFormer's own conditions are unverified): batch 1, one 224 x 224 frame plus one 96 x 64
log-mel window, fp32, random weights (drawn on the host, `host_random_variables`), `warmup` untimed then `iters`
timed calls of the jitted forward, each ended by block_until_ready (no I/O). Two timings per model: without VGGish
(the model's program on the 128-d embedding) and with it (VGGish's program on the log-mel window, then the model's on
its output; FLOPs summed).
Both models run in the same process, their calls interleaved (one call of each per round), so they share the
machine's state; on CPU only the ratio means anything. The speed-up column is the ratio of the medians;
`paired_speedup` in the JSON is the median of the per-round ratios. FLOPs are XLA's cost analysis of the compiled
program; params are counted from the initialised trees.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from experiments.avesformer.model import AVSConfig, AVSModel, host_random_variables, make_backbone
from mmjax.models.vggish import VGGish

DECODERS = {'AVESFormer': dict(decoder='avesformer', stages=('elf', 'elf', 'attn', 'attn')),
            'AVSegFormer-style': dict(decoder='avsegformer', stages=('none', 'attn', 'attn', 'attn'))}
TINY = dict(dim=32, heads=2, num_prompts=4, gn_groups=8, mask_dims=(16, 8), num_queries=8, query_layers=1,
            query_ffn=32, ffn_ratio=2)
TINY_VGGISH = dict(conv_widths=(8, 'M', 16, 'M', 16, 'M', 16, 'M'), fc_widths=(32, 32, 128))


def _count(tree: Any) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def _flops(compiled: Any) -> float:
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float((cost or {}).get('flops', float('nan')))


def _time(programs: Sequence[tuple[Callable, Sequence[Any]]], warmup: int, iters: int) -> list[list[float]]:
  """Seconds per call of each (fn, args): `warmup` untimed calls of each, then `iters` rounds that call every program
  once in turn (interleaved, so a change in the machine's load hits all programs alike)."""
  for fn, args in programs:
    for _ in range(warmup):
      jax.block_until_ready(fn(*args))
  times = [[] for _ in programs]
  for _ in range(iters):
    for (fn, args), out in zip(programs, times):
      start = time.perf_counter()
      jax.block_until_ready(fn(*args))
      out.append(time.perf_counter() - start)
  return times


def measure(backbone: str, size: int, warmup: int, iters: int, tiny: bool) -> dict[str, dict[str, Any]]:
  """{model name: numbers}, both models measured in this process."""
  rng = np.random.default_rng(0)
  frame = jnp.asarray(rng.standard_normal((1, size, size, 3)), jnp.float32)
  logmel = jnp.asarray(rng.standard_normal((1, 96, 64, 1)), jnp.float32)
  audio_net = VGGish(**(TINY_VGGISH if tiny else {}))
  # Random weights drawn on the host: only the forward programs are compiled.
  audio_params = host_random_variables(audio_net.init, jax.random.key(0), logmel, seed=2)
  # --tiny (the test) times nothing that means anything: compiling without LLVM's optimisations saves a third.
  options = {'xla_backend_optimization_level': 0} if tiny else None
  audio = jax.jit(audio_net.apply, compiler_options=options).lower(audio_params, logmel).compile()
  embedding = audio(audio_params, logmel)
  programs, results = {}, {}
  for name, kw in DECODERS.items():
    model = AVSModel(AVSConfig(**kw, **(TINY if tiny else {})), make_backbone(backbone))
    variables = host_random_variables(model.init, jax.random.key(0), frame, embedding, seed=3)
    forward = jax.jit(lambda v, f, e, model=model: model.apply(v, f, e)[0], compiler_options=options).lower(
        variables, frame, embedding).compile()

    def with_vggish(v, a, f, x, forward=forward):  # VGGish's program, then the model's on its embedding
      return forward(v, f, audio(a, x))

    programs[name] = {'without VGGish': (forward, (variables, frame, embedding), _flops(forward)),
                      'with VGGish': (with_vggish, (variables, audio_params, frame, logmel),
                                      _flops(forward) + _flops(audio))}
    results[name] = {'params': _count(variables['params']), 'vggish_params': _count(audio_params)}
  for kind in ('without VGGish', 'with VGGish'):
    start = time.perf_counter()
    times = dict(zip(DECODERS, _time([programs[name][kind][:2] for name in DECODERS], warmup, iters)))
    print(f'{kind}: {warmup} + {iters} rounds in {time.perf_counter() - start:.0f} s', file=sys.stderr, flush=True)
    for name in DECODERS:
      median = statistics.median(times[name])
      # Per-round speed-up over the baseline (rounds are interleaved), its median: robust to load changes.
      paired = statistics.median(b / t for b, t in zip(times['AVSegFormer-style'], times[name]))
      results[name][kind] = {'flops': programs[name][kind][2], 'median_s': median,
                             'mean_s': statistics.fmean(times[name]), 'fps': 1.0 / median, 'iters': iters,
                             'paired_speedup': paired}
  return results


def table(results: dict[str, dict[str, Any]], backbone: str, size: int) -> str:
  base = results['AVSegFormer-style']
  lines = [f'AVS FPS, {backbone}, batch 1, {size}^2 + one 0.96 s window, fp32, {jax.default_backend()} '
           f'({platform.processor() or platform.machine()})', '',
           '| model | params (M) | + VGGish (M) | GFLOPs w/o VGGish | GFLOPs with | ms w/o | FPS w/o | ms with | '
           'FPS with | speed-up vs baseline (w/o / with) |', '|---|---|---|---|---|---|---|---|---|---|']
  for name, r in results.items():
    wo, wi = r['without VGGish'], r['with VGGish']
    speed = (base['without VGGish']['median_s'] / wo['median_s'], base['with VGGish']['median_s'] / wi['median_s'])
    lines.append(f"| {name} | {r['params'] / 1e6:.2f} | {(r['params'] + r['vggish_params']) / 1e6:.2f} | "
                 f"{wo['flops'] / 1e9:.2f} | {wi['flops'] / 1e9:.2f} | {1e3 * wo['median_s']:.1f} | {wo['fps']:.1f} | "
                 f"{1e3 * wi['median_s']:.1f} | {wi['fps']:.1f} | {speed[0]:.2f}x / {speed[1]:.2f}x |")
  return '\n'.join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--backbone', default='pvt_b2', help='pvt_b0..pvt_b5 | r50 (tiny_pvt with --tiny)')
  parser.add_argument('--size', type=int, default=224)
  parser.add_argument('--warmup', type=int, default=50)
  parser.add_argument('--iters', type=int, default=300)
  parser.add_argument('--tiny', action='store_true', help='tiny widths, tiny_pvt and 64 px (a smoke run)')
  parser.add_argument('--json', default='', help='also write the numbers here')
  args = parser.parse_args(argv)
  backbone, size = ('tiny_pvt', 64) if args.tiny else (args.backbone, args.size)
  results = measure(backbone, size, args.warmup, args.iters, args.tiny)
  print(table(results, backbone, size))
  if args.json:
    with open(args.json, 'w') as f:
      json.dump({'backbone': backbone, 'size': size, 'backend': jax.default_backend(), 'jax': jax.__version__,
                 'machine': platform.processor() or platform.machine(), 'warmup': args.warmup, 'iters': args.iters,
                 'results': results}, f, indent=2)
  return results


if __name__ == '__main__':
  main()
