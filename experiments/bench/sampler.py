"""Sampler benchmark (issue 14, PERFORMANCE.md T6/T7): three ratios measured side by side in one run.

  python -m experiments.bench.sampler            # tiny DiT (4 layers, width 128, 32x32x4 latents), batch 8
  python -m experiments.bench.sampler --quick    # smaller everything, for a smoke run

(a) T7: the jitted N-step loop (`mmjax.diffusion.sample`, DDPM learned-range with CFG on 3 of 4 ε channels, as
    upstream DiT samples) against N x one CFG-batched model forward (2B images), both medians; goal <= 1.02x.
(b) T6 on this backend: the XLA-fused CFG + DDIM step (η > 0: reads ε_u, ε_c, x and the noise, writes x_prev) and
    the CFG + learned-range DDPM step against a plain copy (`x * 1.0001`), in GB/s of bytes each must move, on
    64 MiB float32 operands. The Pallas kernels are timed only on a GPU/TPU (interpret mode on CPU is a test tool).
(c) A DDIM-50 DiT sampling run against diffusers' DiTPipeline loop (DiTTransformer2DModel + DDIMScheduler, CFG over
    all ε channels, the scheduler stepping the doubled batch as the pipeline does) on the same weights: ours are
    saved with `save_pretrained` and loaded by diffusers. Images/s of each, and the samples' max difference.
Prints markdown for experiments/bench/RESULTS.md; --json writes the numbers.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import tempfile
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from experiments.bench.timing import median_time
from mmjax.diffusion import cfg, from_diffusers_config, sample
from mmjax.diffusion.guidance import combine
from mmjax.models.dit import DiT, DiTConfig
from mmjax.weights import save_pretrained

NOT_MEASURED = 'not measured (no GPU)'
# x0 clipped to [-1, 1] (both schedulers' default): a random DiT's ε would otherwise blow the samples up.
LEARNED = {'_class_name': 'DDPMScheduler', 'beta_schedule': 'linear', 'variance_type': 'learned_range',
           'timestep_spacing': 'linspace'}
DDIM = {'_class_name': 'DDIMScheduler', 'beta_schedule': 'linear'}


@dataclasses.dataclass(frozen=True)
class Setup:
  dit: DiTConfig
  batch: int
  steps: int
  step_megabytes: int
  repeats: int


FULL = Setup(DiTConfig(num_attention_heads=4, attention_head_dim=32, in_channels=4, out_channels=8, num_layers=4,
                       sample_size=32, patch_size=2, num_embeds_ada_norm=10), batch=8, steps=50, step_megabytes=64,
             repeats=5)
QUICK = Setup(DiTConfig(num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=8, num_layers=2,
                        sample_size=16, patch_size=2, num_embeds_ada_norm=10), batch=2, steps=10, step_megabytes=8,
              repeats=3)


def dit_params(config: DiTConfig, seed: int = 0) -> tuple[DiT, Any]:
  """A DiT whose adaLN-Zero zeros are perturbed (a fresh init outputs zeros, which samples nothing)."""
  module = DiT(config)
  s = config.sample_size
  params = jax.jit(module.init)(jax.random.key(seed), jnp.zeros((1, s, s, config.in_channels)),
                                jnp.zeros((1,), jnp.int32), jnp.zeros((1,), jnp.int32))['params']
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
  leaves = [p + 0.05 * jax.random.normal(k, p.shape, p.dtype) for p, k in zip(leaves, keys)]
  return module, jax.tree.unflatten(tree, leaves)


def make_denoise(module: DiT, eps_only: bool):
  """denoise_fn(params, x [M, H, W, C], t [M], labels [M]); eps_only drops the learned-variance channels."""
  channels = module.config.in_channels

  def denoise(params, x, t, labels):
    out = module.apply({'params': params}, x, t, labels)
    return out[..., :channels] if eps_only else out
  return denoise


def loop_vs_forwards(setup: Setup, module: DiT, params) -> dict[str, float]:
  """(a): the whole jitted loop against N x one jitted CFG-batched forward."""
  cfg_ = setup.dit
  denoise = make_denoise(module, eps_only=False)
  scheduler = from_diffusers_config(LEARNED, setup.steps)
  s, b = cfg_.sample_size, setup.batch
  noise = jax.random.normal(jax.random.key(0), (b, s, s, cfg_.in_channels))
  labels = jnp.stack([jnp.full((b,), cfg_.num_classes), jnp.arange(b) % cfg_.num_classes])
  guidance, rng = cfg(4.0, channels=3), jax.random.key(1)
  forward = jax.jit(denoise)
  x2, t2, y2 = jnp.concatenate([noise, noise]), jnp.full((2 * b,), 500), labels.reshape(-1)
  start = time.perf_counter()
  jax.block_until_ready(sample(denoise, params, scheduler, noise, cond=labels, guidance=guidance, rng=rng))
  compile_s = time.perf_counter() - start
  jax.block_until_ready(forward(params, x2, t2, y2))
  fwd, loop = [], []
  for _ in range(setup.repeats):  # alternate, so both see the same machine load
    fwd.append(median_time(lambda: jax.block_until_ready(forward(params, x2, t2, y2)), 5, 1))
    loop.append(median_time(lambda: jax.block_until_ready(
        sample(denoise, params, scheduler, noise, cond=labels, guidance=guidance, rng=rng)), 1, 0))
  forward_s, loop_s = float(np.median(fwd)), float(np.median(loop))
  return dict(forward_ms=forward_s * 1e3, loop_s=loop_s, loop_compile_s=compile_s - loop_s,
              ratio=loop_s / (setup.steps * forward_s))


def step_bandwidth(setup: Setup) -> dict[str, float]:
  """(b): GB/s of a copy and of the XLA-fused CFG steps over `step_megabytes` float32 operands (best median).

  Each call donates the sample and the next call takes the result, as the sampling loop does: a fresh 64 MiB
  output per call would be page-faulted in and time the allocator (1.2-1.5 GB/s here) instead of the memory.
  """
  n = setup.step_megabytes * 2 ** 20 // 4
  shape = (n // (64 * 64 * 4), 64, 64, 4)
  keys = jax.random.split(jax.random.key(0), 4)
  noise = jax.random.normal(keys[1], shape)
  eps = jax.random.normal(keys[2], (2, *shape))
  eps_v = jax.random.normal(keys[3], (2, *shape[:-1], 8))
  scales, i = jnp.array([4.0]), jnp.int32(10)
  ddim = from_diffusers_config(DDIM, 50, eta=0.5)
  ddpm = from_diffusers_config(LEARNED, 50)
  donating = lambda f: jax.jit(f, donate_argnums=0)
  fns = {  # name: (fn(x, *rest) -> x, rest, operands moved)
    'copy (x * 1.0001)': (donating(lambda x: x * 1.0001), (), 2),
    'CFG + DDIM step, XLA': (donating(lambda x, e, z, i: ddim.step((), combine(e, scales, 4), i, x, z)[0]),
                             (eps, noise, i), 5),
    'CFG + learned-range DDPM step, XLA': (donating(lambda x, e, z, i: ddpm.step((), combine(e, scales, 3), i, x,
                                                                                 z)[0]), (eps_v, noise, i), 7),
  }
  samples = {name: fn(jax.random.normal(keys[0], shape), *rest) for name, (fn, rest, _) in fns.items()}
  best = dict.fromkeys(fns, float('inf'))

  def call(name: str) -> None:
    fn, rest, _ = fns[name]
    samples[name] = fn(samples[name], *rest)
    samples[name].block_until_ready()

  for _ in range(setup.repeats):  # round robin, so all three see the same machine load
    for name in fns:
      best[name] = min(best[name], median_time(lambda: call(name), 3, 0))
  return {name: operands * n * 4 / best[name] / 1e9 for name, (_, _, operands) in fns.items()}


def dit_pipeline(setup: Setup, module: DiT, params, torch_threads: int) -> dict[str, float]:
  """(c): DDIM-50 with CFG, mmjax's jitted loop against diffusers' DiTPipeline loop on the same weights."""
  import diffusers
  import torch

  torch.set_num_threads(torch_threads)
  cfg_, b, steps, scale = setup.dit, setup.batch, 50, 4.0
  s, c = cfg_.sample_size, cfg_.in_channels
  with tempfile.TemporaryDirectory() as folder:
    save_pretrained(folder, module, params)
    transformer = diffusers.DiTTransformer2DModel.from_pretrained(folder).eval()
  scheduler = diffusers.DDIMScheduler.from_config(DDIM)
  noise = np.random.default_rng(0).standard_normal((b, s, s, c)).astype(np.float32)
  classes = np.arange(b) % cfg_.num_classes

  def torch_loop() -> np.ndarray:
    """DiTPipeline.__call__'s loop: doubled latents (cond, then null labels), CFG on the ε channels."""
    latents = torch.from_numpy(noise.transpose(0, 3, 1, 2).copy())
    labels = torch.from_numpy(np.concatenate([classes, np.full(b, cfg_.num_classes)]))
    scheduler.set_timesteps(steps)
    latent_input = torch.cat([latents] * 2)
    with torch.no_grad():
      for t in scheduler.timesteps:
        pred = transformer(latent_input, timestep=t.expand(2 * b), class_labels=labels).sample
        eps, rest = pred[:, :c], pred[:, c:]
        cond_eps, uncond_eps = torch.split(eps, b, dim=0)
        half = uncond_eps + scale * (cond_eps - uncond_eps)
        model_output = torch.cat([half, half], dim=0)
        del rest  # learned sigma: DiTPipeline drops the variance channels before the DDIM step
        latent_input = scheduler.step(model_output, t, latent_input).prev_sample
    return latent_input[:b].numpy().transpose(0, 2, 3, 1)

  denoise = make_denoise(module, eps_only=True)
  ours = from_diffusers_config(DDIM, steps)
  labels = jnp.stack([jnp.full((b,), cfg_.num_classes), jnp.asarray(classes)])
  run = lambda: jax.block_until_ready(sample(denoise, params, ours, jnp.asarray(noise), cond=labels,
                                             guidance=cfg(scale)))
  start = time.perf_counter()
  mine = np.asarray(run())
  first = time.perf_counter() - start
  theirs = torch_loop()
  jax_t, torch_t = [], []
  for _ in range(max(2, setup.repeats // 2)):  # alternate, so both see the same machine load
    jax_t.append(median_time(run, 1, 0))
    torch_t.append(median_time(torch_loop, 1, 0))
  jax_s, torch_s = float(np.median(jax_t)), float(np.median(torch_t))
  return dict(mmjax_images_per_s=b / jax_s, diffusers_images_per_s=b / torch_s, speedup=torch_s / jax_s,
              mmjax_compile_s=first - jax_s, max_abs_diff=float(np.max(np.abs(mine - theirs))),
              sample_scale=float(np.max(np.abs(theirs))))


def report(setup: Setup, a: dict, b: dict, c: dict) -> str:
  import diffusers
  import torch

  d = setup.dit
  lines = [
    f'## Sampler: loop overhead (T7), step bandwidth (T6), DiT DDIM-50 vs diffusers, '
    f'{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC',
    '',
    f'{jax.default_backend()} / {platform.machine()} with {os.cpu_count()} cores ({platform.processor() or "cpu"}); '
    f'jax {jax.__version__}, torch {torch.__version__} ({torch.get_num_threads()} threads), diffusers '
    f'{diffusers.__version__}. Other processes shared the CPUs during the run. Tiny DiT: {d.num_layers} layers, '
    f'width {d.inner_dim}, patch {d.patch_size}, {d.sample_size}x{d.sample_size}x{d.in_channels} latents, learned '
    f'sigma; batch {setup.batch} (CFG batch {2 * setup.batch}). Command: `python -m experiments.bench.sampler'
    f'{" --quick" if setup is QUICK else ""}`',
    '',
    f'(a) T7, DDPM learned-range, {setup.steps} steps, CFG 4 on 3 of 4 ε channels:',
    '',
    '| one CFG-batched forward ms | loop s | N x forward s | loop / (N x forward) | goal | loop compile s |',
    '|---|---|---|---|---|---|',
    f'| {a["forward_ms"]:.2f} | {a["loop_s"]:.3f} | {setup.steps * a["forward_ms"] / 1e3:.3f} | {a["ratio"]:.3f}x '
    f'| <= 1.02x | {a["loop_compile_s"]:.1f} |',
    '',
    f'GPU: {NOT_MEASURED}.',
    '',
    f'(b) T6, {setup.step_megabytes} MiB float32 per operand, GB/s of the bytes each must move (best of '
    f'{setup.repeats} medians):',
    '',
    '| kernel | operands moved | GB/s | % of copy |',
    '|---|---|---|---|',
  ]
  moved = {'copy (x * 1.0001)': 2, 'CFG + DDIM step, XLA': 5, 'CFG + learned-range DDPM step, XLA': '7 (v: 2C)'}
  copy = b['copy (x * 1.0001)']
  lines += [f'| {k} | {moved[k]} | {v:.1f} | {100 * v / copy:.0f}% |' for k, v in b.items()]
  lines += [f'| fused Pallas steps (Triton / Mosaic) | 5 / 7 | {NOT_MEASURED} | |', '',
            f'(c) DDIM-50, CFG 4, batch {setup.batch}:', '',
            '| mmjax images/s | diffusers images/s | mmjax / diffusers | mmjax compile s | max abs diff '
            '(sample max) |', '|---|---|---|---|---|',
            f'| {c["mmjax_images_per_s"]:.2f} | {c["diffusers_images_per_s"]:.2f} | {c["speedup"]:.2f}x | '
            f'{c["mmjax_compile_s"]:.1f} | {c["max_abs_diff"]:.1e} ({c["sample_scale"]:.1f}) |']
  return '\n'.join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--quick', action='store_true', help='smaller model, batch and operands (a smoke run)')
  parser.add_argument('--json', help='also write the numbers to this file')
  parser.add_argument('--torch-threads', type=int, default=1,
                      help="torch's intra-op threads (on a loaded 2-core machine 2 threads made each op wait ~15 ms)")
  args = parser.parse_args()
  setup = QUICK if args.quick else FULL
  module, params = dit_params(setup.dit)
  a = loop_vs_forwards(setup, module, params)
  b = step_bandwidth(setup)
  c = dit_pipeline(setup, module, params, args.torch_threads)
  print(report(setup, a, b, c))
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(dict(loop=a, bandwidth=b, dit_ddim50=c, gpu=NOT_MEASURED), f, indent=2)


if __name__ == '__main__':
  main()
