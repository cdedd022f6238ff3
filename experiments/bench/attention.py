"""Attention benchmark on one GPU: mmjax Pallas kernels next to XLA, cuDNN and JAX's bundled Pallas ops.

Flash attention (bf16, head dim 64/128, S = 512..16k with B*S = 16k tokens and H*D = 2048, causal and
not, forward and forward+backward) and decode attention (B=16, S=4096, H=32, D=128, one new token).
Every implementation is checked against the float32 reference before it is timed; a wrong or failing
one is reported as such, never timed. Compile time (`.lower().compile()`) is recorded separately,
then 3 warm-up calls, then `--iters` timed calls (CUPTI through
`jax.experimental.mosaic.gpu.profiler.measure` when importable, else wall clock around
block_until_ready); the median is reported.

TFLOP/s: forward 4*B*S*S*H*D (halved when causal), forward+backward 3.5x that. Decode: GB/s of the
bytes of K + V (valid entries) + Q + O. Ratios are to cuDNN measured in the same run.

  python -m experiments.bench.attention --out runs/bench/attention.json
  python -m experiments.bench.attention --seq-lens 4096 --head-dims 128 --out /tmp/a.json --no-results-md

  python -m experiments.bench.attention --record-from-json run1.json run2.json   # saved runs -> RESULTS.md

Writes the JSON to --out (after every shape, so a run cut short keeps what it measured) and appends a dated
section to experiments/bench/RESULTS.md. On a machine without a GPU it exits with status 2 before measuring or
writing anything.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np

from mmjax.pallas_kernels import attention_reference, decode_attention, decode_attention_reference, flash_attention

RESULTS_MD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "RESULTS.md")
FORWARD_TOL = 2e-2  # bf16, relative to the reference's largest magnitude (as tests/pallas_kernels/helpers.py).
GRAD_TOL = 5e-2


def _measure_fn():
  try:
    from jax.experimental.mosaic.gpu import profiler
    return profiler.measure
  except Exception:  # Not importable on this jaxlib / platform: fall back to wall clock.
    return None


# ----------------------------------------------------------------------------------------------
# Implementations. Each takes (q, k, v, causal) with q [B, S, H, D] and returns [B, S, H, D].

def _mmjax_pallas(q, k, v, causal):
  return flash_attention(q, k, v, causal=causal)


def _xla(q, k, v, causal):
  return jax.nn.dot_product_attention(q, k, v, is_causal=causal, implementation="xla")


def _cudnn(q, k, v, causal):
  return jax.nn.dot_product_attention(q, k, v, is_causal=causal, implementation="cudnn")


def _jax_triton_mha(q, k, v, causal):
  from jax.experimental.pallas.ops.gpu import attention as triton_attention
  return triton_attention.mha(q, k, v, None, sm_scale=1.0 / math.sqrt(q.shape[-1]), causal=causal)


def _jax_mgpu_fa3(q, k, v, causal):
  from jax.experimental.pallas.ops.gpu import attention_mgpu
  config = attention_mgpu.TuningConfig(block_q=64, block_kv=128, max_concurrent_steps=2, causal=causal)
  return attention_mgpu.attention(q, k, v, config)


FLASH_IMPLS: dict[str, Callable] = {
    "mmjax_pallas": _mmjax_pallas,
    "cudnn": _cudnn,
    "xla": _xla,
    "jax_pallas_triton_mha": _jax_triton_mha,
    "jax_pallas_mgpu_fa3": _jax_mgpu_fa3,
}


def _decode_mmjax(q, k, v, lengths):
  return decode_attention(q, k, v, lengths)


def _decode_xla(q, k, v, lengths):
  return jax.nn.dot_product_attention(q, k, v, key_value_seq_lengths=lengths, implementation="xla")


def _decode_cudnn(q, k, v, lengths):
  return jax.nn.dot_product_attention(q, k, v, key_value_seq_lengths=lengths, implementation="cudnn")


def _decode_jax_pallas(q, k, v, lengths):
  from jax.experimental.pallas.ops.gpu import decode_attention as jax_decode
  return jax_decode.gqa(q[:, 0], k, v, kv_seq_len=lengths)[:, None]


DECODE_IMPLS: dict[str, Callable] = {
    "mmjax_pallas": _decode_mmjax,
    "cudnn": _decode_cudnn,
    "xla": _decode_xla,
    "jax_pallas_triton_gqa": _decode_jax_pallas,
}


# ----------------------------------------------------------------------------------------------

def _short_error(e: BaseException) -> str:
  text = f"{type(e).__name__}: {e}".replace("\n", " ")
  if "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower():
    return "OOM"
  return text[:200]


def _max_rel_err(actual, expected) -> float:
  actual = np.asarray(actual, np.float32)
  expected = np.asarray(expected, np.float32)
  return float(np.max(np.abs(actual - expected)) / max(1.0, float(np.max(np.abs(expected)))))


def _time(compiled, args, iters: int, warmup: int, measure) -> tuple[float, str]:
  """Median milliseconds per call and the method used."""
  for _ in range(warmup):
    jax.block_until_ready(compiled(*args))
  if measure is not None:
    try:
      _, times = measure(compiled, iterations=iters)(*args)
      if times is not None:
        return float(np.median(np.atleast_1d(np.asarray(times, np.float64)))), "cupti"
    except Exception:  # CUPTI unavailable (e.g. another profiler attached): use the wall clock.
      pass
  samples = []
  for _ in range(iters):
    start = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    samples.append((time.perf_counter() - start) * 1e3)
  return float(np.median(samples)), "wall"


def _compile(fn, args) -> tuple[Any, float]:
  start = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  return compiled, time.perf_counter() - start


def _flash_row(name, impl, q, k, v, d_out, causal, mode, iters, warmup, measure) -> dict:
  row = {"impl": name, "mode": mode}
  if mode == "fwd":
    def fn(q, k, v):
      return impl(q, k, v, causal)
    args = (q, k, v)
  else:
    def fn(q, k, v, d_out):
      out, vjp = jax.vjp(lambda q, k, v: impl(q, k, v, causal), q, k, v)
      return (out, *vjp(d_out))
    args = (q, k, v, d_out)
  try:
    compiled, row["compile_s"] = _compile(fn, args)
    result = compiled(*args)
  except Exception as e:  # Unsupported shape/dtype/platform for this implementation.
    row["error"] = _short_error(e)
    return row
  # Correctness on batch 0, head 0 (heads are independent; the full fp32 reference would not fit at 16k).
  one = lambda x: x[:1, :, :1].astype(jnp.float32)
  ref = jax.jit(lambda q, k, v: attention_reference(q, k, v, causal=causal))
  if mode == "fwd":
    errors = {"out": _max_rel_err(one(result), ref(one(q), one(k), one(v)))}
    tols = {"out": FORWARD_TOL}
  else:
    out_r, vjp_r = jax.vjp(ref, one(q), one(k), one(v))
    expected = (out_r, *vjp_r(one(d_out)))
    errors = {n: _max_rel_err(one(a), b) for n, a, b in zip(("out", "dq", "dk", "dv"), result, expected)}
    tols = {"out": FORWARD_TOL, "dq": GRAD_TOL, "dk": GRAD_TOL, "dv": GRAD_TOL}
  row["max_rel_err"] = errors
  bad = [n for n in errors if not errors[n] <= tols[n]]
  if bad:
    row["error"] = f"incorrect ({', '.join(f'{n} err {errors[n]:.3g}' for n in bad)}); not timed"
    return row
  del result
  row["ms"], row["timer"] = _time(compiled, args, iters, warmup, measure)
  return row


def bench_flash(args, measure, on_progress=lambda rows: None) -> list[dict]:
  rows = []
  for d in args.head_dims:
    heads = args.model_dim // d
    for s in args.seq_lens:
      batch = max(1, args.tokens // s)
      for causal in args.causal:
        keys = jax.random.split(jax.random.PRNGKey(0), 4)
        shape = (batch, s, heads, d)
        q, k, v, d_out = (jax.random.normal(key, shape, jnp.bfloat16) for key in keys)
        flops = 4 * batch * s * s * heads * d / (2 if causal else 1)
        config = {"batch": batch, "seq_len": s, "heads": heads, "head_dim": d, "causal": causal}
        for mode in args.modes:
          group = []
          for name in args.impls:
            if name not in FLASH_IMPLS:
              continue
            row = {**config, **_flash_row(name, FLASH_IMPLS[name], q, k, v, d_out, causal, mode, args.iters,
                                          args.warmup, measure)}
            if "ms" in row:
              row["tflops"] = flops * (3.5 if mode == "fwd_bwd" else 1.0) / (row["ms"] * 1e-3) / 1e12
            group.append(row)
            print(_format_flash(row), flush=True)
          _add_ratios(group, "tflops")
          _print_ratios(group)
          rows += group
          on_progress(rows)
  return rows


def bench_decode(args, measure) -> list[dict]:
  b, s, h, hkv, d = args.decode_batch, args.decode_len, args.decode_heads, args.decode_kv_heads, args.head_dim_decode
  keys = jax.random.split(jax.random.PRNGKey(1), 3)
  q = jax.random.normal(keys[0], (b, 1, h, d), jnp.bfloat16)
  k = jax.random.normal(keys[1], (b, s, hkv, d), jnp.bfloat16)
  v = jax.random.normal(keys[2], (b, s, hkv, d), jnp.bfloat16)
  lengths = jnp.full((b,), s, jnp.int32)
  nbytes = (2 * b * s * hkv * d + 2 * b * h * d) * 2  # K + V read, Q read, O written (bf16).
  ref = jax.jit(decode_attention_reference)(q, k, v, lengths)
  rows = []
  for name in args.impls:
    impl = DECODE_IMPLS.get(name)
    if impl is None:
      continue
    row = {"impl": name, "mode": "decode", "batch": b, "seq_len": s, "heads": h, "kv_heads": hkv, "head_dim": d}
    try:
      compiled, row["compile_s"] = _compile(impl, (q, k, v, lengths))
      err = _max_rel_err(compiled(q, k, v, lengths), ref)
      row["max_rel_err"] = {"out": err}
      if not err <= FORWARD_TOL:
        row["error"] = f"incorrect (out err {err:.3g}); not timed"
      else:
        row["ms"], row["timer"] = _time(compiled, (q, k, v, lengths), args.iters, args.warmup, measure)
        row["gbps"] = nbytes / (row["ms"] * 1e-3) / 1e9
    except Exception as e:
      row["error"] = _short_error(e)
    print(_format_decode(row), flush=True)
    rows.append(row)
  _add_ratios(rows, "gbps")
  _print_ratios(rows)
  return rows


def _add_ratios(group: list[dict], metric: str) -> None:
  base = next((r.get(metric) for r in group if r["impl"] == "cudnn"), None)
  for r in group:
    if base and r.get(metric):
      r["vs_cudnn"] = r[metric] / base


def _print_ratios(group: list[dict]) -> None:
  ratios = [f"{r['impl']} {r['vs_cudnn']:.2f}" for r in group if "vs_cudnn" in r]
  print("  vs cuDNN: " + (", ".join(ratios) if ratios else "no cuDNN baseline"), flush=True)


def _format_flash(r: dict) -> str:
  head = (f"B={r['batch']:<3} S={r['seq_len']:<6} H={r['heads']:<3} D={r['head_dim']:<4} "
          f"{'causal' if r['causal'] else 'full  '} {r['mode']:<8} {r['impl']:<24}")
  if "error" in r:
    return f"{head} {r['error']}"
  return f"{head} {r['ms']:9.3f} ms {r['tflops']:7.1f} TFLOP/s  compile {r['compile_s']:.1f}s ({r['timer']})"


def _format_decode(r: dict) -> str:
  head = f"decode B={r['batch']} S={r['seq_len']} H={r['heads']}/{r['kv_heads']} D={r['head_dim']} {r['impl']:<24}"
  if "error" in r:
    return f"{head} {r['error']}"
  return f"{head} {r['ms'] * 1e3:9.1f} us {r['gbps']:7.0f} GB/s  compile {r['compile_s']:.1f}s ({r['timer']})"


def environment() -> dict:
  dev = jax.devices()[0]
  env = {
      "date_utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
      "device_kind": dev.device_kind,
      "platform": dev.platform,
      "jax": jax.__version__,
      "jaxlib": jaxlib.__version__,
      "python": platform.python_version(),
  }
  try:
    from jax._src.lib import cuda_versions
    if cuda_versions is not None:
      env["cuda_runtime"] = cuda_versions.cuda_runtime_get_version()
      env["cudnn"] = cuda_versions.cudnn_get_version()
  except Exception:  # Not a CUDA build.
    pass
  try:
    smi = subprocess.run(["nvidia-smi", "--query-gpu=name,power.limit,clocks.max.sm,memory.total",
                          "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
    env["nvidia_smi"] = smi.stdout.strip().splitlines()[0] if smi.returncode == 0 and smi.stdout else None
  except (OSError, subprocess.SubprocessError):
    env["nvidia_smi"] = None
  return env


def _md_cell(r: dict, key: str, fmt: str) -> str:
  return format(r[key], fmt) if key in r else ""


def results_markdown(env: dict, flash_rows: list[dict], decode_rows: list[dict], command: str) -> str:
  lines = [f"\n## Attention kernels: {env['date_utc']}, {env['device_kind']}\n",
           f"jax {env['jax']}, jaxlib {env['jaxlib']}, CUDA runtime {env.get('cuda_runtime')}, "
           f"cuDNN {env.get('cudnn')}; nvidia-smi: {env.get('nvidia_smi')}.  ",
           f"Command: `{command}`\n"]
  if flash_rows:
    lines += ["| B | S | H | D | mask | mode | impl | ms | TFLOP/s | vs cuDNN | compile s | note |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in flash_rows:
      lines.append(
          f"| {r['batch']} | {r['seq_len']} | {r['heads']} | {r['head_dim']} | "
          f"{'causal' if r['causal'] else 'full'} | {r['mode']} | {r['impl']} | {_md_cell(r, 'ms', '.3f')} | "
          f"{_md_cell(r, 'tflops', '.1f')} | {_md_cell(r, 'vs_cudnn', '.2f')} | {_md_cell(r, 'compile_s', '.1f')} | "
          f"{r.get('error', '')} |")
  if decode_rows:
    lines += ["", "| decode (B, S, H/Hkv, D) | impl | us | GB/s | vs cuDNN | compile s | note |",
              "|---|---|---|---|---|---|---|"]
    for r in decode_rows:
      us = f"{r['ms'] * 1e3:.1f}" if "ms" in r else ""
      lines.append(
          f"| {r['batch']}, {r['seq_len']}, {r['heads']}/{r['kv_heads']}, {r['head_dim']} | {r['impl']} | {us} | "
          f"{_md_cell(r, 'gbps', '.0f')} | {_md_cell(r, 'vs_cudnn', '.2f')} | {_md_cell(r, 'compile_s', '.1f')} | "
          f"{r.get('error', '')} |")
  return "\n".join(lines) + "\n"


def _ints(text: str) -> list[int]:
  return [int(x) for x in text.split(",") if x]


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--out", required=True, help="JSON file to write the results to")
  p.add_argument("--results-md", default=RESULTS_MD, help="markdown file to append a dated section to")
  p.add_argument("--no-results-md", action="store_true", help="do not append to the markdown file")
  p.add_argument("--seq-lens", type=_ints, default=[512, 1024, 2048, 4096, 8192, 16384])
  p.add_argument("--head-dims", type=_ints, default=[64, 128])
  p.add_argument("--tokens", type=int, default=16384, help="B * S for the flash shapes")
  p.add_argument("--model-dim", type=int, default=2048, help="H * D for the flash shapes")
  p.add_argument("--causal", type=lambda t: [x == "causal" for x in t.split(",")], default=[False, True],
                 help="comma list of full,causal")
  p.add_argument("--modes", type=lambda t: t.split(","), default=["fwd", "fwd_bwd"])
  p.add_argument("--impls", type=lambda t: t.split(","),
                 default=sorted(set(FLASH_IMPLS) | set(DECODE_IMPLS), key=lambda n: (n != "mmjax_pallas", n)))
  p.add_argument("--iters", type=int, default=20)
  p.add_argument("--warmup", type=int, default=3)
  p.add_argument("--skip-flash", action="store_true")
  p.add_argument("--skip-decode", action="store_true")
  p.add_argument("--decode-batch", type=int, default=16)
  p.add_argument("--decode-len", type=int, default=4096)
  p.add_argument("--decode-heads", type=int, default=32)
  p.add_argument("--decode-kv-heads", type=int, default=32)
  p.add_argument("--head-dim-decode", type=int, default=128)
  return p.parse_args(argv)


def record_from_json(paths: list[str], results_md: str) -> None:
  """Appends the markdown of saved runs (e.g. fetched back from a GPU machine) to results_md."""
  for path in paths:
    with open(path) as f:
      saved = json.load(f)
    with open(results_md, "a") as f:
      f.write(results_markdown(saved["environment"], saved["flash"], saved["decode"], saved["command"]))
    print(f"appended {path} to {results_md}")


def main(argv=None) -> int:
  if argv is None:
    argv = sys.argv[1:]
  if argv and argv[0] == "--record-from-json":
    record_from_json(argv[1:], RESULTS_MD)
    return 0
  args = parse_args(argv)
  backend = jax.default_backend()
  if backend not in ("gpu", "cuda", "rocm"):
    print(f"experiments/bench/attention.py needs a GPU, but jax.default_backend() is {backend!r}. "
          "Nothing was measured and nothing was written.", file=sys.stderr)
    return 2
  measure = _measure_fn()
  env = environment()
  print(json.dumps(env), flush=True)
  flash_rows, decode_rows = [], []
  command = " ".join(["python -m experiments.bench.attention"] + list(argv))
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)

  def save(rows=None):  # After every group, so that a run cut short still leaves its measurements.
    with open(args.out, "w") as f:
      json.dump({"environment": env, "command": command, "flash": rows if rows is not None else flash_rows,
                 "decode": decode_rows}, f, indent=1)

  try:
    if not args.skip_flash:
      flash_rows = bench_flash(args, measure, save)
    if not args.skip_decode:
      decode_rows = bench_decode(args, measure)
  except KeyboardInterrupt:
    print("interrupted: writing the rows measured so far", file=sys.stderr)
  except Exception:
    traceback.print_exc()
    print("benchmark failed: writing the rows measured so far", file=sys.stderr)
  save()
  print(f"wrote {args.out}")
  if not args.no_results_md and (flash_rows or decode_rows):
    with open(args.results_md, "a") as f:
      f.write(results_markdown(env, flash_rows, decode_rows, command))
    print(f"appended to {args.results_md}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
