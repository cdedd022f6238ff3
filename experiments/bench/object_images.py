"""Object Images benchmark (issue 15): GLB -> omage encoding throughput, omage -> mesh decoding, DiT-B/1 sampling.

  python -m experiments.bench.object_images           # 16 primitive objects at 1024^2 + 2 dense ones, DiT-B/1
  python -m experiments.bench.object_images --quick   # 3 objects at 256^2 and a tiny DiT (a smoke run, seconds)

(a) Encoding: seeded primitive objects (primitives.random_object, no UVs, so xatlas charts them) are written as GLB
    files, then each pass loads every file (data.load_glb) and encodes it (omage.mesh_to_omage: charts, packing,
    raster at `resolution`^2, bake, pooling to 64^2). Objects per second come from the median pass; the stages are
    timed by wrapping omage's own functions for the run, so the total is the unmodified encoder. A second set of
    dense objects (tens of thousands of faces, closer to an ABO GLB) shows how the stages scale with faces. The
    paper's Blender encoder takes about 6 s per GLB (spec section 2).
(b) Decoding: omage.omage_to_mesh on every encoded 64^2 omage, median per object.
(c) DiT-B/1 null2geo sampling (64x64x4, 4096 tokens, random weights): 250 respaced learned-range DDPM steps with
    CFG 4 on the four eps channels, at batch 1 and 8. A CPU run of 250 steps of this model takes hours, so the jitted
    loop runs `--timed-steps` steps (the same compiled step body) and the 250-step time is extrapolated linearly.
    A batch left out of `--run-batches` is not run; its time is extrapolated from the largest batch that ran (CPU
    throughput is flat in the batch once the cores are busy) and the report says so. Batch 8 (16 images with CFG)
    asked XLA on CPU for a 29 GB buffer (full attention scores): pass `--run-batches 1` on a machine with less.
Prints markdown for experiments/bench/RESULTS.md; --json writes the numbers.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import trimesh

from experiments.bench.sampler import make_denoise
from experiments.object_images import omage as omage_lib
from experiments.object_images.data import load_glb
from experiments.object_images.meshing import omage_to_mesh
from experiments.object_images.primitives import random_object
from mmjax.diffusion import cfg, from_diffusers_config, sample
from mmjax.models.dit import DiT, DiTConfig

NOT_MEASURED = 'not measured (no GPU)'
PAPER_SECONDS_PER_GLB = 6.0
# The spec's null2geo sampler: guided-diffusion's cosine schedule, learned range, x0 clipped, 250 respaced steps.
NULL2GEO = {'_class_name': 'DDPMScheduler', 'beta_schedule': 'squaredcos_cap_v2', 'variance_type': 'learned_range',
            'clip_sample': True, 'clip_sample_range': 1.0, 'timestep_spacing': 'linspace'}
# Encoder stages: report name -> omage function wrapped by a timer. 'charts' includes 'xatlas' (it calls it).
STAGES = {'corners': '_part_corners', 'charts': '_islands', 'xatlas': '_xatlas_uv', 'select': '_select_islands',
          'packing': '_pack', 'raster': '_rasterise', 'bake': '_bake', 'bake margin': '_extend',
          'pooling': 'sparse_pool'}


@dataclasses.dataclass(frozen=True)
class Setup:
  objects: int
  dense_objects: int
  resolution: int
  passes: int
  dit: DiTConfig
  batches: tuple[int, ...]
  steps: int
  timed_steps: int


DIT_B1 = DiTConfig(num_attention_heads=12, attention_head_dim=64, in_channels=4, out_channels=8, num_layers=12,
                   sample_size=64, patch_size=1, num_embeds_ada_norm=63, downscale_freq_shift=0.0)
FULL = Setup(objects=16, dense_objects=2, resolution=1024, passes=3, dit=DIT_B1, batches=(1, 8), steps=250,
             timed_steps=2)
QUICK = Setup(objects=3, dense_objects=0, resolution=256, passes=2,
              dit=DiTConfig(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=1,
                            sample_size=8, patch_size=1, num_embeds_ada_norm=63, downscale_freq_shift=0.0),
              batches=(1, 2), steps=250, timed_steps=2)
OMAGE_SIZE = 64


def dense_object(rng: np.random.Generator) -> trimesh.Trimesh:
  """A finely tessellated object (an icosphere of 20480 faces beside a torus of 16384), random face colours."""
  sphere = trimesh.creation.icosphere(subdivisions=5, radius=0.5)
  torus = trimesh.creation.torus(major_radius=0.5, minor_radius=0.15, major_sections=128, minor_sections=64)
  torus.apply_translation([1.0, 0.0, 0.0])
  for part in (sphere, torus):
    part.visual.face_colors = np.append(rng.integers(0, 256, 3), 255).astype(np.uint8)
  return trimesh.util.concatenate([sphere, torus])


def write_glbs(folder: Path, count: int, seed: int, dense: bool) -> list[Path]:
  """`count` seeded objects written as GLB files under folder."""
  rng = np.random.default_rng(seed)
  paths = []
  for i in range(count):
    mesh = dense_object(rng) if dense else random_object(rng)
    path = folder / f'{"dense" if dense else "primitive"}_{i:03d}.glb'
    path.write_bytes(trimesh.exchange.gltf.export_glb(trimesh.Scene(mesh)))
    paths.append(path)
  return paths


@contextlib.contextmanager
def stage_timers(totals: dict[str, float]) -> Iterator[None]:
  """While open, every call of a STAGES function of omage adds its wall seconds to totals[stage]."""
  originals = {stage: getattr(omage_lib, name) for stage, name in STAGES.items()}

  def timed(stage, fn):
    def wrapper(*args, **kwargs):
      start = time.perf_counter()
      try:
        return fn(*args, **kwargs)
      finally:
        totals[stage] += time.perf_counter() - start
    return wrapper

  for stage, fn in originals.items():
    setattr(omage_lib, STAGES[stage], timed(stage, fn))
  try:
    yield
  finally:
    for stage, fn in originals.items():
      setattr(omage_lib, STAGES[stage], fn)


def encode(paths: list[Path], setup: Setup) -> tuple[dict, list[np.ndarray]]:
  """(a) over `paths`: seconds per object (median pass), objects/s, mean seconds per stage and the 64^2 omages."""
  totals = dict.fromkeys(['load', *STAGES], 0.0)
  passes, omages = [], []
  for _ in range(setup.passes):
    omages, start = [], time.perf_counter()
    with stage_timers(totals):
      for path in paths:
        t = time.perf_counter()
        scene = load_glb(path)
        totals['load'] += time.perf_counter() - t
        omages.append(omage_lib.mesh_to_omage(scene, resolution=setup.resolution, size=OMAGE_SIZE))
    passes.append(time.perf_counter() - start)
  faces = [sum(len(g.faces) for g in load_glb(p).geometry.values()) for p in paths]
  calls = setup.passes * len(paths)
  stages = {k: v / calls for k, v in totals.items()}
  stages['charts'] -= stages['xatlas']  # report the weld + components without the xatlas call inside them
  seconds = statistics.median(passes) / len(paths)
  return dict(objects=len(paths), mean_faces=float(np.mean(faces)), pass_seconds=passes, seconds_per_object=seconds,
              objects_per_s=1 / seconds, speedup_vs_paper=PAPER_SECONDS_PER_GLB / seconds, stages=stages,
              occupied_fraction=float(np.mean([(o[..., omage_lib.OCCUPANCY] >= 0.5).mean() for o in omages]))), omages


def decode(omages: list[np.ndarray], passes: int) -> dict:
  """(b): median seconds of omage_to_mesh per object and the decoded meshes' mean face count."""
  times, meshes = [], []
  for _ in range(passes):
    start = time.perf_counter()
    meshes = [omage_to_mesh(o) for o in omages]
    times.append((time.perf_counter() - start) / len(omages))
  return dict(seconds_per_object=statistics.median(times), min_faces=min(len(m.faces) for m in meshes),
              mean_faces=float(np.mean([len(m.faces) for m in meshes])))


def random_dit(config: DiTConfig, seed: int = 0) -> tuple[DiT, Any]:
  """A DiT with random weights, its adaLN-Zero zeros perturbed by N(0, 0.05^2) as sampler.dit_params does (a fresh
  init outputs zeros), made in one jitted call: per-leaf eager perturbation compiles one program per leaf shape."""
  module = DiT(config)
  s = config.sample_size

  def init(key: jax.Array) -> Any:
    params = module.init(key, jnp.zeros((1, s, s, config.in_channels)), jnp.zeros((1,), jnp.int32),
                         jnp.zeros((1,), jnp.int32))['params']
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.fold_in(key, 1), len(leaves))
    return jax.tree.unflatten(tree, [p + 0.05 * jax.random.normal(k, p.shape, p.dtype) for p, k in zip(leaves, keys)])
  return module, jax.jit(init)(jax.random.key(seed))


def dit_sampling(setup: Setup, run_batches: tuple[int, ...]) -> dict:
  """(c): per batch, compile seconds, seconds for `timed_steps` steps and the extrapolated `steps`-step time; the
  batches not in run_batches get the per-object time of the largest one that ran."""
  module, params = random_dit(setup.dit)
  denoise = make_denoise(module, eps_only=False)
  scheduler = from_diffusers_config(NULL2GEO, setup.timed_steps)
  guidance, rng = cfg(4.0, channels=setup.dit.in_channels), jax.random.key(1)
  s, null = setup.dit.sample_size, setup.dit.num_embeds_ada_norm
  rows = {}
  for batch in setup.batches:
    if batch not in run_batches:
      rows[batch] = dict(measured=False)
      continue
    noise = jax.random.normal(jax.random.key(0), (batch, s, s, setup.dit.in_channels))
    labels = jnp.stack([jnp.full((batch,), null), jnp.arange(batch) % null])
    start = time.perf_counter()
    compiled = sample.lower(denoise, params, scheduler, noise, cond=labels, guidance=guidance, rng=rng).compile()
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    out = jax.block_until_ready(compiled(params, scheduler, noise, cond=labels, guidance=guidance, rng=rng))
    run_s = time.perf_counter() - start
    per_step = run_s / setup.timed_steps
    rows[batch] = dict(measured=True, compile_s=compile_s, timed_s=run_s,
                       step_s=per_step, sampling_s=per_step * setup.steps,
                       seconds_per_object=per_step * setup.steps / batch,
                       finite=bool(np.isfinite(np.asarray(out)).all()), shape=list(out.shape))
  ran = [b for b in setup.batches if rows[b]['measured']]
  for batch in setup.batches:
    if not rows[batch]['measured'] and ran:
      base = rows[max(ran)]
      rows[batch].update(extrapolated_from=max(ran), seconds_per_object=base['seconds_per_object'],
                         sampling_s=base['seconds_per_object'] * batch)
  return rows


def report(setup: Setup, enc: dict, dense: dict | None, dec: dict, dit: dict, command: str) -> str:
  d = setup.dit
  lines = [
    f'## Object Images: GLB -> omage encoding, omage -> mesh decoding, DiT-B/1 sampling, '
    f'{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC',
    '',
    f'{jax.default_backend()} / {platform.machine()} with {os.cpu_count()} cores ({platform.processor() or "cpu"}); '
    f'jax {jax.__version__}, numpy {np.__version__}, trimesh {trimesh.__version__}. Other processes shared the CPUs '
    f'during the run. Command: `{command}`',
    '',
    f'(a) Encoding GLB -> {OMAGE_SIZE}^2 omage at a {setup.resolution}^2 bake (load, xatlas charts, AABB packing, '
    f'raster, bake, sparse pooling), {setup.passes} passes, median pass; the paper\'s Blender encoder: ~'
    f'{PAPER_SECONDS_PER_GLB:.0f} s per GLB:',
    '',
    '| objects | mean faces | s per object | objects/s | vs Blender ~6 s |',
    '|---|---|---|---|---|',
  ]
  rows = [('primitives', enc)] + ([('dense', dense)] if dense else [])
  ratio = lambda x: f'{x:.1f}x faster' if x >= 1 else f'{1 / x:.1f}x slower'
  lines += [f'| {r["objects"]} {name} | {r["mean_faces"]:.0f} | {r["seconds_per_object"]:.3f} | '
            f'{r["objects_per_s"]:.2f} | {ratio(r["speedup_vs_paper"])} |' for name, r in rows]
  lines += ['', 'Where the time goes, mean ms per object (charts excludes the xatlas call inside it):', '',
            '| stage | ' + ' | '.join(name for name, _ in rows) + ' |', '|---|' + '---|' * len(rows)]
  for stage in enc['stages']:
    lines.append(f'| {stage} | ' + ' | '.join(
        f'{1e3 * r["stages"][stage]:.1f} ({100 * r["stages"][stage] / r["seconds_per_object"]:.0f}%)'
        for _, r in rows) + ' |')
  lines += ['', f'(b) Decoding a {OMAGE_SIZE}^2 omage to a mesh (omage_to_mesh): '
            f'{1e3 * dec["seconds_per_object"]:.1f} ms per object (median of {setup.passes}), '
            f'{dec["mean_faces"]:.0f} faces on average.', '',
            f'(c) DiT-B/1 null2geo sampling with random weights ({d.num_layers} layers, width {d.inner_dim}, patch '
            f'{d.patch_size}, {d.sample_size}x{d.sample_size}x{d.in_channels}, '
            f'{(d.sample_size // d.patch_size) ** 2} tokens), {setup.steps} learned-range DDPM steps, CFG 4 on the '
            f'4 eps channels; {setup.timed_steps} steps timed, {setup.steps} extrapolated:', '',
            '| device | batch | compile s | s per step | s per batch (250 steps) | s per object |',
            '|---|---|---|---|---|---|']
  for batch, r in dit.items():
    if r['measured']:
      lines.append(f'| CPU float32 | {batch} | {r["compile_s"]:.1f} | {r["step_s"]:.2f} | {r["sampling_s"]:.0f} | '
                   f'{r["seconds_per_object"]:.0f} ({r["seconds_per_object"] / 3600:.2g} h) |')
    elif 'extrapolated_from' in r:
      lines.append(f'| CPU float32 | {batch} | not run | | ~{r["sampling_s"]:.0f} (from batch '
                   f'{r["extrapolated_from"]}) | ~{r["seconds_per_object"]:.0f} |')
    else:
      lines.append(f'| CPU float32 | {batch} | not run | | | |')
  lines += [f'| GPU | {b} | {NOT_MEASURED} | | | |' for b in setup.batches]
  skipped = [b for b, r in dit.items() if not r['measured']]
  if skipped:
    lines += ['', f'Batch {", ".join(map(str, skipped))} not run (--run-batches); the per-object time of the largest '
              'batch that ran stands in.']
  return '\n'.join(lines)


def main(argv: list[str] | None = None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--quick', action='store_true', help='3 objects at 256^2 and a tiny DiT (a smoke run)')
  parser.add_argument('--json', help='also write the numbers to this file')
  parser.add_argument('--timed-steps', type=int, help='DiT steps actually run (default: the setup\'s, 2)')
  parser.add_argument('--run-batches', type=int, nargs='+',
                      help='DiT batches actually timed (default: all of the setup\'s); the others are extrapolated')
  parser.add_argument('--seed', type=int, default=0, help='seed of the primitive objects')
  args = parser.parse_args(argv)
  setup = QUICK if args.quick else FULL
  if args.timed_steps:
    setup = dataclasses.replace(setup, timed_steps=args.timed_steps)
  with tempfile.TemporaryDirectory() as folder:
    enc, omages = encode(write_glbs(Path(folder), setup.objects, args.seed, dense=False), setup)
    print(f'(a) {enc}', file=sys.stderr, flush=True)  # partial results, as they come
    dense = None
    if setup.dense_objects:
      dense, _ = encode(write_glbs(Path(folder), setup.dense_objects, args.seed, dense=True), setup)
      print(f'(a, dense) {dense}', file=sys.stderr, flush=True)
  dec = decode(omages, setup.passes)
  print(f'(b) {dec}', file=sys.stderr, flush=True)
  dit = dit_sampling(setup, tuple(args.run_batches or setup.batches))
  print(f'(c) {dit}', file=sys.stderr, flush=True)
  argv = sys.argv[1:] if argv is None else argv
  print(report(setup, enc, dense, dec, dit, ' '.join(['python -m experiments.bench.object_images', *argv])))
  results = dict(encode=enc, encode_dense=dense, decode=dec, dit={str(b): r for b, r in dit.items()},
                 gpu=NOT_MEASURED)
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(results, f, indent=2)
  return results


if __name__ == '__main__':
  main()
