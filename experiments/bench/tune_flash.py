"""Tile and launch-parameter sweep for the mmjax Triton flash attention kernels on one GPU.

For each head dim and mask at one sequence length (bf16, B*S = 16k tokens, H*D = 2048, the attention.py shapes),
times the forward over forward candidates, then forward+backward over backward candidates (with the forward's
default tiles), each checked against the float32 reference on one head first. cuDNN is timed in the same run
as the yardstick. Prints one line per candidate and the best per group; writes JSON with --out.

  python -m experiments.bench.tune_flash --seq 4096 --out runs/bench/tune_flash.json
"""
from __future__ import annotations

import argparse
import json
import sys

import jax
import jax.numpy as jnp

from experiments.bench.attention import _compile, _max_rel_err, _measure_fn, _time
from mmjax.pallas_kernels import BlockSizes, attention_reference, flash_attention

# (block_q, block_k, num_warps, num_stages)
FORWARD = [(128, 64, 4, 2), (128, 64, 8, 2), (128, 64, 8, 3), (128, 128, 8, 2), (128, 128, 8, 3),
           (64, 64, 4, 2), (64, 128, 4, 2), (128, 32, 4, 3), (128, 128, 4, 2), (64, 64, 4, 3)]
# (block_q_dkv, block_k_dkv, block_q_dq, block_k_dq, num_warps_bwd, num_stages)
BACKWARD = [(32, 64, 64, 32, None, 2), (32, 128, 128, 32, 8, 2), (64, 64, 64, 64, 4, 2), (64, 128, 128, 64, 8, 2),
            (32, 64, 64, 32, 4, 3), (64, 64, 64, 64, 8, 2), (32, 128, 64, 64, 4, 2), (64, 128, 128, 64, 8, 3),
            (16, 64, 64, 16, 4, 2), (32, 32, 32, 32, 4, 2)]


def main() -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--seq", type=int, default=4096)
  p.add_argument("--head-dims", default="64,128")
  p.add_argument("--iters", type=int, default=20)
  p.add_argument("--tokens", type=int, default=16384, help="B * S")
  p.add_argument("--out")
  args = p.parse_args()
  measure = _measure_fn()
  rows = []
  for d in map(int, args.head_dims.split(",")):
    s, h = args.seq, 2048 // d
    b = max(1, args.tokens // s)
    keys = jax.random.split(jax.random.PRNGKey(0), 4)
    q, k, v, do = (jax.random.normal(key, (b, s, h, d), jnp.bfloat16) for key in keys)
    one = lambda x: x[:1, :, :1].astype(jnp.float32)
    for causal in (False, True):
      flops = 4 * b * s * s * h * d / (2 if causal else 1)
      ref = attention_reference(one(q), one(k), one(v), causal=causal)
      fwd_ref, vjp = jax.vjp(lambda q, k, v: attention_reference(q, k, v, causal=causal), one(q), one(k), one(v))
      bwd_ref = vjp(one(do))

      def run(label, mode, blocks, fn, fn_args):
        row = dict(head_dim=d, causal=causal, mode=mode, candidate=label)
        try:
          compiled, _ = _compile(fn, fn_args)
          out = compiled(*fn_args)
          if mode == "fwd":
            err = _max_rel_err(one(out), ref)
          else:
            err = max(_max_rel_err(one(a), r) for a, r in zip(out, (fwd_ref, *bwd_ref)))
          row["err"] = err
          if err > (2e-2 if mode == "fwd" else 5e-2):
            row["error"] = f"incorrect ({err:.3g})"
          else:
            ms, _ = _time(compiled, fn_args, args.iters, 3, measure)
            row.update(ms=ms, tflops=flops * (3.5 if mode == "fwd_bwd" else 1) / ms / 1e9)
        except Exception as e:  # A tile too large for shared memory, say.
          row["error"] = f"{type(e).__name__}: {e}"[:160].replace("\n", " ")
        print(json.dumps(row), flush=True)
        rows.append(row)

      cudnn = lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=causal, implementation="cudnn")
      run("cudnn", "fwd", None, cudnn, (q, k, v))
      for bq, bk, w, st in FORWARD:
        blocks = BlockSizes(bq, bk, num_warps=w, num_stages=st)
        run(f"fwd q{bq} k{bk} w{w} s{st}", "fwd", blocks,
            lambda q, k, v, blocks=blocks: flash_attention(q, k, v, causal=causal, block_sizes=blocks), (q, k, v))

      def grads(attend):
        def fn(q, k, v, do):
          out, vjp = jax.vjp(attend, q, k, v)
          return (out, *vjp(do))
        return fn

      run("cudnn", "fwd_bwd", None,
          grads(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=causal, implementation="cudnn")),
          (q, k, v, do))
      for qd, kd, qq, kq, w, st in BACKWARD:
        blocks = BlockSizes(128, 64, qd, kd, qq, kq, num_warps_bwd=w, num_stages=st)
        run(f"bwd dkv q{qd} k{kd} dq q{qq} k{kq} w{w} s{st}", "fwd_bwd", blocks,
            grads(lambda q, k, v, blocks=blocks: flash_attention(q, k, v, causal=causal, block_sizes=blocks)),
            (q, k, v, do))
  print("\nbest per group (TFLOP/s, vs cuDNN):")
  for d in sorted({r["head_dim"] for r in rows}):
    for causal in (False, True):
      for mode in ("fwd", "fwd_bwd"):
        group = [r for r in rows if (r["head_dim"], r["causal"], r["mode"]) == (d, causal, mode) and "tflops" in r]
        base = next((r["tflops"] for r in group if r["candidate"] == "cudnn"), None)
        ours = [r for r in group if r["candidate"] != "cudnn"]
        if ours:
          best = max(ours, key=lambda r: r["tflops"])
          ratio = f"{best['tflops'] / base:.2f}" if base else "n/a"
          print(f"D={d} {'causal' if causal else 'full'} {mode}: {best['candidate']} {best['tflops']:.0f} "
                f"(cuDNN {base or 0:.0f}, ratio {ratio})")
  if args.out:
    with open(args.out, "w") as f:
      json.dump(rows, f, indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main())
