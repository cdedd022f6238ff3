"""AVESFormer vs the AVSegFormer-style baseline (same backbone, in_proj, FPN, blocks and mask head): FPS, params, FLOPs.

  python -m experiments.bench.avs_fps                       # PVTv2-b2, 224^2, 50 warm-up + 300 timed iterations
  python -m experiments.bench.avs_fps --backbone r50 --json avs_fps.json
  python -m experiments.bench.avs_fps --tiny --iters 2 --warmup 1   # tiny widths, seconds (the test)

Protocol (spec section 5; AVESFormer's own conditions are unverified): batch 1, one 224 x 224 frame plus one 96 x 64
log-mel window, fp32, random weights, `warmup` untimed then `iters` timed calls of the jitted forward, each ended
by block_until_ready (no I/O). Two programs per model: with VGGish (log-mel in) and without (the 128-d embedding in).
Both models run in the same process, alternating, so they share the machine's state; on CPU only the ratio means
anything. FLOPs are XLA's cost analysis of the compiled program; params are counted from the initialised trees.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from experiments.avesformer.model import AVSConfig, AVSModel, make_backbone
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


def _time(fn: Callable, args: Sequence[Any], warmup: int, iters: int) -> list[float]:
  for _ in range(warmup):
    jax.block_until_ready(fn(*args))
  times = []
  for _ in range(iters):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return times


def measure(backbone: str, size: int, warmup: int, iters: int, tiny: bool) -> dict[str, dict[str, Any]]:
  """{model name: numbers}, both models measured in this process."""
  frame = jax.random.normal(jax.random.key(0), (1, size, size, 3), jnp.float32)
  logmel = jax.random.normal(jax.random.key(1), (1, 96, 64, 1), jnp.float32)
  audio_net = VGGish(**(TINY_VGGISH if tiny else {}))
  audio_params = jax.jit(audio_net.init)(jax.random.key(2, impl='rbg'), logmel)  # rbg: quicker to compile
  embedding = audio_net.apply(audio_params, logmel)
  programs, results = {}, {}
  for name, kw in DECODERS.items():
    model = AVSModel(AVSConfig(**kw, **(TINY if tiny else {})), make_backbone(backbone))
    variables = jax.jit(model.init)(jax.random.key(3, impl='rbg'), frame, embedding)

    def without(v, f, e, model=model):
      return model.apply(v, f, e)[0]

    def with_vggish(v, a, f, x, model=model):
      return model.apply(v, f, audio_net.apply(a, x))[0]

    programs[name] = {
        'without VGGish': (jax.jit(without).lower(variables, frame, embedding).compile(),
                           (variables, frame, embedding)),
        'with VGGish': (jax.jit(with_vggish).lower(variables, audio_params, frame, logmel).compile(),
                        (variables, audio_params, frame, logmel))}
    results[name] = {'params': _count(variables['params']), 'vggish_params': _count(audio_params)}
  for kind in ('without VGGish', 'with VGGish'):
    for name in DECODERS:  # alternate the models within each kind
      compiled, args = programs[name][kind]
      times = _time(compiled, args, warmup, iters)
      median = statistics.median(times)
      results[name][kind] = {'flops': _flops(compiled), 'median_s': median, 'mean_s': statistics.fmean(times),
                             'fps': 1.0 / median, 'iters': iters}
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
      json.dump({'backbone': backbone, 'size': size, 'backend': jax.default_backend(), 'results': results}, f,
                indent=2)
  return results


if __name__ == '__main__':
  main()
