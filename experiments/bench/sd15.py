"""SD1.5 benchmark (issue 16): mmjax's UNet2DConditionModel against diffusers' on the same weights, side by side.

  taskset -c 1 python -m experiments.bench.sd15   # SD1.5 layout at 1/5 width (64-128-256-256), 64x64 latents, 1 core
  python -m experiments.bench.sd15 --quick        # two tiny levels at 16x16, a smoke run

On a shared machine pin it to one core (both sides then run one thread): unpinned, torch's OpenMP threads stall
behind other processes and the ratio follows the load (RESULTS.md, 2026-12-03).

The UNet keeps SD1.5's layout (3 cross-attention down blocks and a plain one, 2 resnets each, 8 heads, 77 text
tokens of width 768, 32 GroupNorm groups) at a fifth of its width, so one CFG-batched forward takes seconds on 2 CPU
cores; with 8 heads at every level its attention score matrices are as large as the full model's (8 x 4096^2 per
image at 64x64 latents). diffusers builds it with random weights; ours are read from its `save_pretrained` folder
with `mmjax.weights.from_pretrained`.

(a) One UNet forward on the CFG batch (2 x batch), jitted mmjax against diffusers under torch.no_grad: medians of
    alternated calls, their ratio and the outputs' max difference.
(b) DDIM-30 with simple CFG (the spec's DDIMScheduler config, guidance 7.5): `mmjax.diffusion.sample` (the whole
    loop in one jit) against StableDiffusionPipeline's loop (DDIMScheduler.set_timesteps(30), the UNet on the doubled
    latents with (uncond, cond) text states, CFG, scheduler.step): images/s, ratio, the latents' max difference.
On a GPU both also run in bfloat16, diffusers on cuda with its default attention processor (SDPA); on CPU those rows
read "not measured (no GPU)". Prints markdown for experiments/bench/RESULTS.md; --json writes the numbers.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime
import json
import os
import platform
import sys
import tempfile
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from experiments.bench.timing import median_time
from mmjax.diffusion import cfg, from_diffusers_config, sample
from mmjax.weights import from_pretrained

NOT_MEASURED = 'not measured (no GPU)'
# The spec's scheduler (ipadapter-instruct.md): DDIM, eta 0.
DDIM = {'_class_name': 'DDIMScheduler', 'num_train_timesteps': 1000, 'beta_start': 0.00085, 'beta_end': 0.012,
        'beta_schedule': 'scaled_linear', 'clip_sample': False, 'set_alpha_to_one': False, 'steps_offset': 1}
GUIDANCE = 7.5  # StableDiffusionPipeline's default


@dataclasses.dataclass(frozen=True)
class Setup:
  """unet: diffusers UNet2DConditionModel keyword arguments; latents: the latent side; batch: images per CFG branch;
  text_len: text tokens; *_repeats: alternated rounds of (a) and of (b), one call of each side per round."""
  unet: dict[str, Any]
  latents: int
  batch: int
  text_len: int
  steps: int
  forward_repeats: int
  sample_repeats: int


FULL = Setup(dict(block_out_channels=(64, 128, 256, 256), layers_per_block=2, attention_head_dim=8,
                  cross_attention_dim=768, norm_num_groups=32, sample_size=64),
             latents=64, batch=1, text_len=77, steps=30, forward_repeats=5, sample_repeats=1)
QUICK = Setup(dict(block_out_channels=(32, 64), layers_per_block=1, attention_head_dim=2, cross_attention_dim=32,
                   norm_num_groups=8, sample_size=16, down_block_types=('CrossAttnDownBlock2D', 'DownBlock2D'),
                   up_block_types=('UpBlock2D', 'CrossAttnUpBlock2D')),
              latents=16, batch=1, text_len=5, steps=3, forward_repeats=1, sample_repeats=1)


@dataclasses.dataclass(frozen=True)
class Models:
  """The same random weights on both sides: diffusers' model (float32, CPU) and mmjax's (module, params)."""
  torch_unet: Any
  module: Any
  params: Any


def build_models(setup: Setup, seed: int = 0) -> Models:
  """A random diffusers UNet (torch's default init, seeded), and mmjax's read from its save_pretrained folder."""
  import diffusers
  import torch

  torch.manual_seed(seed)
  torch_unet = diffusers.UNet2DConditionModel(**setup.unet).eval()
  with tempfile.TemporaryDirectory() as folder:
    torch_unet.save_pretrained(folder)
    module, params, _ = from_pretrained(folder)
  return Models(torch_unet, module, params)


def make_inputs(setup: Setup, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """noise [B, S, S, 4] (channels last) and text states [2, B, L, D] (uncond, cond), float32 N(0, 1)."""
  rng = np.random.default_rng(seed)
  b, s = setup.batch, setup.latents
  noise = rng.standard_normal((b, s, s, setup.unet.get('in_channels', 4))).astype(np.float32)
  text = rng.standard_normal((2, b, setup.text_len, setup.unet['cross_attention_dim'])).astype(np.float32)
  return noise, text


def on(models: Models, dtype: str, device: str) -> tuple[Any, Any, Any, Any]:
  """(module, params, torch_unet, torch_dtype) in `dtype` ('float32' / 'bfloat16'), diffusers on `device`."""
  import torch

  if dtype == 'float32' and device == 'cpu':
    return models.module, models.params, models.torch_unet, torch.float32
  jax_dtype, torch_dtype = jnp.dtype(dtype), getattr(torch, dtype)
  params = jax.tree.map(lambda p: p.astype(jax_dtype), models.params)
  # torch's Module.to: diffusers' override warns about keeping modules in float32 (none here) on every cast.
  torch_unet = torch.nn.Module.to(copy.deepcopy(models.torch_unet), device, torch_dtype)
  return models.module.clone(dtype=jax_dtype), params, torch_unet, torch_dtype


def unet_forward(setup: Setup, models: Models, noise: np.ndarray, text: np.ndarray, dtype: str = 'float32',
                 device: str = 'cpu') -> dict[str, float]:
  """(a): one forward on the CFG batch [2B, S, S, 4] at t = 500, mmjax (jitted) against diffusers."""
  import torch

  module, params, torch_unet, torch_dtype = on(models, dtype, device)
  x = np.concatenate([noise, noise])
  context = text.reshape(-1, *text.shape[2:])
  t = np.full((x.shape[0],), 500)
  forward = jax.jit(lambda p, x, t, c: module.apply({'params': p}, x, t, c))
  args = (params, jnp.asarray(x, module.dtype), jnp.asarray(t), jnp.asarray(context, module.dtype))
  x_t = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).to(device, torch_dtype)
  t_t, c_t = torch.from_numpy(t).to(device), torch.from_numpy(context).to(device, torch_dtype)

  def theirs() -> np.ndarray:
    with torch.no_grad():
      out = torch_unet(x_t, t_t, encoder_hidden_states=c_t).sample
    return out.float().cpu().numpy().transpose(0, 2, 3, 1)  # the copy back also waits for the device

  start = time.perf_counter()
  mine = np.asarray(jax.block_until_ready(forward(*args))).astype(np.float32)
  compile_s = time.perf_counter() - start
  reference = theirs()
  jax_t, torch_t = [], []
  for _ in range(setup.forward_repeats):  # alternate, so both see the same machine load
    jax_t.append(median_time(lambda: jax.block_until_ready(forward(*args)), 1, 0))
    torch_t.append(median_time(theirs, 1, 0))
  jax_s, torch_s = float(np.median(jax_t)), float(np.median(torch_t))
  return dict(mmjax_ms=jax_s * 1e3, diffusers_ms=torch_s * 1e3, speedup=torch_s / jax_s,
              mmjax_first_call_s=compile_s, max_abs_diff=float(np.max(np.abs(mine - reference))),
              output_scale=float(np.max(np.abs(reference))))


def diffusers_sampler(setup: Setup, torch_unet: Any, noise: np.ndarray, text: np.ndarray, torch_dtype: Any,
                      device: str):
  """StableDiffusionPipeline's denoising loop on `torch_unet`: a function () -> latents [B, S, S, 4] (float32)."""
  import diffusers
  import torch

  scheduler = diffusers.DDIMScheduler.from_config(DDIM)
  context = torch.from_numpy(text.reshape(-1, *text.shape[2:])).to(device, torch_dtype)  # (uncond, cond)
  start = torch.from_numpy(noise.transpose(0, 3, 1, 2).copy()).to(device, torch_dtype)

  def run() -> np.ndarray:
    scheduler.set_timesteps(setup.steps, device=device)
    latents = start * scheduler.init_noise_sigma
    with torch.no_grad():
      for t in scheduler.timesteps:
        model_input = scheduler.scale_model_input(torch.cat([latents] * 2), t)
        eps = torch_unet(model_input, t, encoder_hidden_states=context).sample
        uncond, cond = eps.chunk(2)
        latents = scheduler.step(uncond + GUIDANCE * (cond - uncond), t, latents).prev_sample
    return latents.float().cpu().numpy().transpose(0, 2, 3, 1)
  return run


def mmjax_sampler(setup: Setup, module: Any, params: Any, noise: np.ndarray, text: np.ndarray):
  """The same loop as one jitted `mmjax.diffusion.sample`, compiled ahead of time: (a function () -> latents
  [B, S, S, 4] (float32), the compile seconds)."""
  def denoise(p: Any, x: jax.Array, t: jax.Array, context: jax.Array) -> jax.Array:
    return module.apply({'params': p}, x, t, context)

  args = (params, from_diffusers_config(DDIM, setup.steps), jnp.asarray(noise, module.dtype))
  kwargs = dict(cond=jnp.asarray(text, module.dtype), guidance=cfg(GUIDANCE))
  start = time.perf_counter()
  compiled = sample.lower(denoise, *args, **kwargs).compile()  # the static denoise_fn is part of the program
  compile_s = time.perf_counter() - start
  return lambda: np.asarray(jax.block_until_ready(compiled(*args, **kwargs))).astype(np.float32), compile_s


def ddim_sample(setup: Setup, models: Models, noise: np.ndarray, text: np.ndarray, dtype: str = 'float32',
                device: str = 'cpu') -> dict[str, float]:
  """(b): DDIM-`steps` with CFG, mmjax's compiled loop against diffusers' pipeline loop, one sample each per round,
  alternated; the first round's latents are compared."""
  module, params, torch_unet, torch_dtype = on(models, dtype, device)
  ours, compile_s = mmjax_sampler(setup, module, params, noise, text)
  theirs = diffusers_sampler(setup, torch_unet, noise, text, torch_dtype, device)
  jax_t, torch_t, latents = [], [], []
  for _ in range(setup.sample_repeats):  # alternate, so both see the same machine load
    for fn, times in ((ours, jax_t), (theirs, torch_t)):
      start = time.perf_counter()
      latents.append(fn())
      times.append(time.perf_counter() - start)
  jax_s, torch_s = float(np.median(jax_t)), float(np.median(torch_t))
  mine, reference = latents[:2]
  b = setup.batch
  return dict(mmjax_images_per_s=b / jax_s, diffusers_images_per_s=b / torch_s, speedup=torch_s / jax_s,
              mmjax_compile_s=compile_s, max_abs_diff=float(np.max(np.abs(mine - reference))),
              latent_scale=float(np.max(np.abs(reference))))


def describe(setup: Setup) -> str:
  u = setup.unet
  blocks = len(u['block_out_channels'])
  cross = sum(name.startswith('CrossAttn') for name in u.get('down_block_types', ('CrossAttn',) * (blocks - 1)))
  return (f'UNet block_out {"-".join(map(str, u["block_out_channels"]))} ({cross} cross-attention levels), '
          f'{u["layers_per_block"]} resnets per block, {u["attention_head_dim"]} heads, {u["norm_num_groups"]} '
          f'GroupNorm groups, text {setup.text_len} x {u["cross_attention_dim"]}; {setup.latents}x{setup.latents}x4 '
          f'latents, batch {setup.batch} (CFG batch {2 * setup.batch})')


def usable_cores() -> int:
  """CPU cores this process may run on (`taskset` narrows them)."""
  return len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()


# Table rows: (label, goal, dtype, device); the GPU rows run only where jax sees a GPU and torch has cuda.
ROWS = (('CPU float32', '>= 1x', 'float32', 'cpu'), ('GPU float32', '', 'float32', 'cuda'),
        ('GPU bfloat16', '>= 1.5x', 'bfloat16', 'cuda'))


def report(setup: Setup, rows: dict[str, dict[str, dict[str, float]]], torch_threads: int, command: str) -> str:
  """The RESULTS.md section; rows[label] = {'forward': (a), 'sample': (b)}, absent when not measured."""
  import diffusers
  import torch

  lines = [
    f'## SD1.5 UNet and DDIM-{setup.steps} vs diffusers, {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC',
    '',
    f'{jax.default_backend()} / {platform.machine()}, {usable_cores()} of {os.cpu_count()} cores '
    f'({platform.processor() or "cpu"}); '
    f'jax {jax.__version__}, torch {torch.__version__} ({torch_threads} threads), diffusers {diffusers.__version__}. '
    f'{describe(setup)}; random weights (diffusers init) read by `from_pretrained`. Command: `{command}`',
    '',
    f'(a) One UNet forward on the CFG batch, median of {setup.forward_repeats} alternated calls per side:',
    '',
    '| run | mmjax ms | diffusers ms | mmjax / diffusers speed | goal | max abs diff (output max) | mmjax first '
    'call s |',
    '|---|---|---|---|---|---|---|',
  ]
  missing = NOT_MEASURED if jax.default_backend() != 'gpu' else 'not measured (GPU run)'
  for label, goal, _, _ in ROWS:
    a = rows.get(label, {}).get('forward')
    lines.append(f'| {label} | {missing} | | | {goal} | | |' if a is None else
                 f'| {label} | {a["mmjax_ms"]:.1f} | {a["diffusers_ms"]:.1f} | {a["speedup"]:.2f}x | {goal} | '
                 f'{a["max_abs_diff"]:.1e} ({a["output_scale"]:.2f}) | {a["mmjax_first_call_s"]:.1f} |')
  lines += ['', f'(b) DDIM-{setup.steps}, CFG {GUIDANCE}, the spec\'s scheduler config, median of '
            f'{setup.sample_repeats} alternated samples per side (mmjax compiled ahead of time):', '',
            '| run | mmjax s | diffusers s | mmjax images/s | diffusers images/s | mmjax / diffusers | goal | '
            'max abs diff (latent max) | mmjax compile s |', '|---|---|---|---|---|---|---|---|---|']
  for label, goal, _, _ in ROWS:
    b = rows.get(label, {}).get('sample')
    lines.append(f'| {label} | {missing} | | | | | {goal} | | |' if b is None else
                 f'| {label} | {setup.batch / b["mmjax_images_per_s"]:.1f} | '
                 f'{setup.batch / b["diffusers_images_per_s"]:.1f} | {b["mmjax_images_per_s"]:.4f} | '
                 f'{b["diffusers_images_per_s"]:.4f} | '
                 f'{b["speedup"]:.2f}x | {goal} | {b["max_abs_diff"]:.1e} ({b["latent_scale"]:.2f}) | '
                 f'{b["mmjax_compile_s"]:.1f} |')
  return '\n'.join(lines)


def main(argv: list[str] | None = None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--quick', action='store_true', help='two tiny UNet levels at 16x16, 3 steps (a smoke run)')
  parser.add_argument('--json', help='also write the numbers to this file')
  parser.add_argument('--torch-threads', type=int, default=usable_cores(),
                      help="torch's intra-op threads (default: the cores this process may use, as XLA's pool)")
  args = parser.parse_args(argv)
  import torch

  torch.set_num_threads(args.torch_threads)
  setup = QUICK if args.quick else FULL
  models = build_models(setup)
  noise, text = make_inputs(setup)
  gpu = jax.default_backend() == 'gpu' and torch.cuda.is_available()
  rows = {}
  for label, _, dtype, device in ROWS:
    if (device == 'cuda') != gpu:
      continue
    rows[label] = {'forward': unet_forward(setup, models, noise, text, dtype, device)}
    print(f'{label} (a): {rows[label]["forward"]}', file=sys.stderr, flush=True)  # partial results, as they come
    rows[label]['sample'] = ddim_sample(setup, models, noise, text, dtype, device)
    print(f'{label} (b): {rows[label]["sample"]}', file=sys.stderr, flush=True)
  argv = sys.argv[1:] if argv is None else argv
  print(report(setup, rows, args.torch_threads, ' '.join(['python -m experiments.bench.sd15', *argv])))
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(dict(setup=describe(setup), **rows), f, indent=2)
  return rows


if __name__ == '__main__':
  main()
