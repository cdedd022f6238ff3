"""Train-step MFU of the mmjax Qwen2 at the LLaVA-OneVision-0.5B language-model shape, on one GPU.

Shape: Qwen2-0.5B (hidden 896, 24 layers, 14 heads, 2 KV heads, MLP 4864, vocab 151936, tied embeddings), random
weights, float32 parameters and AdamW state, bfloat16 compute, per-layer remat, causal LM loss over S tokens.
Each attention implementation (`--impls`, passed to `dot_product_attention`) gets its own compiled step, timed
in the same run, beside transformers' Qwen2ForCausalLM on the same GPU (bf16 autocast, SDPA attention,
activation checkpointing, fused AdamW) as the alternative. A large bf16 matmul measured in the same run gives the
card's practical ceiling.

FLOPs per step: 6 x matmul params x tokens (the unembedding included) plus causal attention,
6 x layers x S x H x D x tokens (the score and value matmuls, forward and backward, half of S^2 visible).
MFU is that over the step time and over the card's dense bf16 peak (`mmjax.train.metrics.peak_flops`).

  python -m experiments.bench.lm_mfu --batch 4 --seq 4096 --json runs/bench/lm_mfu.json
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

from experiments.bench.lm_step import compiled_train_step, matmul_params
from experiments.bench.timing import median_time
from mmjax.models.qwen2 import Qwen2Config, Qwen2ForCausalLM
from mmjax.train.metrics import peak_flops

QWEN2_0_5B = dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                  num_attention_heads=14, num_key_value_heads=2, rms_norm_eps=1e-6, rope_theta=1e6,
                  max_position_embeddings=32768, tie_word_embeddings=True)


def step_flops(cfg: Qwen2Config, batch: int, seq: int) -> float:
  tokens = batch * seq
  attention = 6 * cfg.num_hidden_layers * seq * cfg.num_attention_heads * cfg.head_dim * tokens
  return 6 * matmul_params(cfg) * tokens + attention


def bf16_matmul_tflops(n: int = 8192, reps: int = 10) -> float:
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.bfloat16)
  b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.bfloat16)
  f = jax.jit(lambda a, b: a @ b)
  f(a, b).block_until_ready()
  return 2 * n ** 3 / median_time(lambda: f(a, b).block_until_ready(), reps, 2) / 1e12


def mmjax_step(cfg: Qwen2Config, impl: str, batch: int, seq: int, steps: int, warmup: int) -> dict:
  model = Qwen2ForCausalLM(cfg, dtype=jnp.bfloat16, remat_policy='full', attn_impl=impl)
  compiled, state, b, num_params, compile_s = compiled_train_step(model, cfg.vocab_size, batch, seq)
  holder = [state]
  losses = []

  def run():
    holder[0], metrics = compiled(holder[0], b)
    losses.append(float(jax.device_get(metrics['loss'])))

  seconds = median_time(run, steps, warmup)
  return dict(impl=impl, params=num_params, compile_s=compile_s, step_s=seconds,
              first_loss=losses[0], last_loss=losses[-1])


def torch_step(cfg_dict: dict, batch: int, seq: int, steps: int, warmup: int) -> dict:
  import torch
  import transformers
  torch.manual_seed(0)
  hf = transformers.Qwen2Config(**cfg_dict, attn_implementation='sdpa')
  model = transformers.Qwen2ForCausalLM(hf).cuda().train()
  model.gradient_checkpointing_enable()
  opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0, fused=True)
  ids = torch.from_numpy(np.random.default_rng(0).integers(0, cfg_dict['vocab_size'], (batch, seq))).cuda()

  def run():
    opt.zero_grad(set_to_none=True)
    with torch.autocast('cuda', dtype=torch.bfloat16):
      loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    torch.cuda.synchronize()

  return dict(impl='transformers (sdpa, bf16 autocast)', step_s=median_time(run, steps, warmup),
              torch=torch.__version__, transformers=transformers.__version__)


def main() -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--batch', type=int, default=4)
  p.add_argument('--seq', type=int, default=4096)
  p.add_argument('--impls', default='cudnn,pallas,xla',
                 help='comma list of dot_product_attention impls (empty: transformers only)')
  p.add_argument('--steps', type=int, default=5)
  p.add_argument('--warmup', type=int, default=2)
  p.add_argument('--no-torch', action='store_true')
  p.add_argument('--json', help='write the results here')
  args = p.parse_args()
  if jax.default_backend() == 'cpu':
    print('lm_mfu.py measures a GPU/TPU train step; jax.default_backend() is cpu. Nothing was measured.',
          file=sys.stderr)
    return 2
  cfg = Qwen2Config(**QWEN2_0_5B)
  kind = jax.devices()[0].device_kind
  peak = peak_flops(kind)
  flops = step_flops(cfg, args.batch, args.seq)
  ceiling = bf16_matmul_tflops()
  env = dict(date=datetime.date.today().isoformat(), device=kind, jax=jax.__version__, peak_tflops=peak and peak / 1e12,
             matmul_ceiling_tflops=ceiling, batch=args.batch, seq=args.seq, step_tflop=flops / 1e12)
  print(json.dumps(env), flush=True)
  rows = []
  for impl in filter(None, args.impls.split(',')):
    try:
      row = mmjax_step(cfg, impl, args.batch, args.seq, args.steps, args.warmup)
    except Exception as e:  # An attention impl that does not support this shape on this backend.
      row = dict(impl=impl, error=f'{type(e).__name__}: {e}'[:300])
    rows.append(row)
    print(json.dumps(row), flush=True)
  if not args.no_torch:
    try:
      rows.append(torch_step(QWEN2_0_5B, args.batch, args.seq, args.steps, args.warmup))
    except Exception as e:
      rows.append(dict(impl='transformers', error=f'{type(e).__name__}: {e}'[:300]))
    print(json.dumps(rows[-1]), flush=True)
  base = next((r['step_s'] for r in rows if r['impl'].startswith('transformers') and 'step_s' in r), None)
  print(f"\nQwen2-0.5B train step, {args.batch} x {args.seq} tokens, {kind}, jax {jax.__version__}, {env['date']}. "
        f"bf16 matmul ceiling in this run {ceiling:.0f} TFLOP/s; peak {env['peak_tflops']} TFLOP/s.\n")
  print('| implementation | step s | tokens/s | TFLOP/s | MFU | % of matmul ceiling | vs transformers | compile s |')
  print('|---|---|---|---|---|---|---|---|')
  for r in rows:
    if 'step_s' not in r:
      print(f"| {r['impl']} | {r['error']} | | | | | | |")
      continue
    tflops = flops / r['step_s'] / 1e12
    r.update(tokens_s=args.batch * args.seq / r['step_s'], tflops=tflops,
             mfu=peak and flops / r['step_s'] / peak, vs_torch=base and base / r['step_s'])
    mfu = f"{r['mfu']:.1%}" if r['mfu'] else 'n/a'
    vs = f"{r['vs_torch']:.2f}x" if r['vs_torch'] else ''
    print(f"| {r['impl']} | {r['step_s']:.3f} | {r['tokens_s']:.0f} | {tflops:.0f} | {mfu} | "
          f"{tflops / ceiling:.0%} | {vs} | {r.get('compile_s', float('nan')):.0f} |")
  if args.json:
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, 'w') as f:
      json.dump(dict(env=env, rows=rows), f, indent=1)
  return 0


if __name__ == '__main__':
  sys.exit(main())
