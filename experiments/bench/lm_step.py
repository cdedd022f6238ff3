"""LM benchmark: the mmjax Qwen2 against transformers' Qwen2ForCausalLM, same random ~100M config,
measured side by side in one process.

  python -m experiments.bench.lm_step            # train step (AdamW, 8 x 256 tokens) + forward at 1024 tokens
  python -m experiments.bench.lm_step --quick    # a 4-layer model, for a fast look

Prints tokens/s for each and the ratio mmjax/torch, the achieved GFLOP/s of the train step
(6 x matmul params x tokens), and a large matmul's GFLOP/s in the same run (this machine's
practical ceiling). Appends to experiments/bench/RESULTS.md unless --no-record.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments.bench.qwen2_100m import QWEN2_100M
from experiments.bench.timing import median_time
from mmjax.data import make_global_batch
from mmjax.models.qwen2 import Qwen2Config, Qwen2ForCausalLM
from mmjax.train import Experiment, base_config
from mmjax.train.trainer import TrainSetup

HERE = os.path.dirname(os.path.abspath(__file__))


def matmul_gflops(n=2048, reps=10):
  """GFLOP/s of an n x n x n float32 matmul under jit: the machine's practical ceiling."""
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n))
  f = jax.jit(lambda a: a @ a)
  f(a).block_until_ready()
  t = median_time(lambda: f(a).block_until_ready(), reps, 2)
  return 2 * n ** 3 / t / 1e9


def matmul_params(cfg: Qwen2Config) -> int:
  d, kv = cfg.hidden_size, cfg.num_key_value_heads * cfg.head_dim
  per_layer = d * d * 2 + 2 * d * kv + 3 * d * cfg.intermediate_size
  return cfg.num_hidden_layers * per_layer + d * cfg.vocab_size  # the unembedding is a matmul too


def compiled_train_step(model, vocab_size: int, batch: int, seq: int):
  """The trainer's AdamW step for a causal LM on random tokens, compiled.

  Returns (step(state, batch) -> (state, metrics), state, batch, number of params, compile seconds)."""
  config = base_config()
  config.mesh = {'data': 1, 'fsdp': 1, 'tensor': 1}
  config.batch_size, config.total_steps = batch, 1000
  config.optim.lr, config.optim.weight_decay, config.optim.clip_norm = 1e-4, 0.0, 1.0

  def loss_fn(params, b, rng, step):
    del rng, step
    logits = model.apply({'params': params}, b['input_ids']).logits
    loss = optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], b['input_ids'][:, 1:]).mean()
    return loss, {}

  exp = Experiment(init_params=lambda rng: model.init(rng, jnp.zeros((1, 16), jnp.int32))['params'],
                   loss_fn=loss_fn, train_data=None)
  setup = TrainSetup(config, exp)
  state = setup.init_state(jax.random.PRNGKey(0))
  tokens = np.random.default_rng(0).integers(0, vocab_size, (batch, seq)).astype(np.int32)
  b = make_global_batch({'input_ids': tokens}, setup.batch_sharding)
  t0 = time.perf_counter()
  with setup.scope():
    compiled = setup.build_step().lower(state, b).compile()
  return compiled, state, b, setup.num_params, time.perf_counter() - t0


def mmjax_train_step(cfg, batch, seq, steps, warmup):
  compiled, state, b, num_params, compile_s = compiled_train_step(Qwen2ForCausalLM(cfg), cfg.vocab_size, batch, seq)
  holder = [state]

  def run():
    holder[0], m = compiled(holder[0], b)
    jax.block_until_ready(m)

  return compile_s, median_time(run, steps, warmup), num_params


def mmjax_forward(cfg, seq, steps, warmup):
  model = Qwen2ForCausalLM(cfg)
  ids = jnp.asarray(np.random.default_rng(1).integers(0, cfg.vocab_size, (1, seq)), jnp.int32)
  params = jax.jit(lambda r: model.init(r, ids[:, :8])['params'])(jax.random.PRNGKey(0))
  f = jax.jit(lambda p, x: model.apply({'params': p}, x).logits)
  f(params, ids).block_until_ready()
  return median_time(lambda: f(params, ids).block_until_ready(), steps, warmup)


def torch_model(cfg_dict):
  import torch
  import transformers
  torch.manual_seed(0)
  hf = transformers.Qwen2Config(**cfg_dict, attn_implementation='sdpa')
  return transformers.Qwen2ForCausalLM(hf).float()


def torch_train_step(cfg_dict, batch, seq, steps, warmup):
  import torch
  model = torch_model(cfg_dict).train()
  opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0)
  ids = torch.from_numpy(np.random.default_rng(0).integers(0, cfg_dict['vocab_size'], (batch, seq)))

  def run():
    opt.zero_grad(set_to_none=True)
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()

  return median_time(run, steps, warmup)


def torch_forward(cfg_dict, seq, steps, warmup):
  import torch
  model = torch_model(cfg_dict).eval()
  ids = torch.from_numpy(np.random.default_rng(1).integers(0, cfg_dict['vocab_size'], (1, seq)))
  with torch.inference_mode():
    return median_time(lambda: model(input_ids=ids), steps, warmup)


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--quick', action='store_true', help='4 layers instead of 12')
  p.add_argument('--batch', type=int, default=8)
  p.add_argument('--seq', type=int, default=256)
  p.add_argument('--forward-seq', type=int, default=1024)
  p.add_argument('--steps', type=int, default=5)
  p.add_argument('--warmup', type=int, default=2)
  p.add_argument('--no-record', action='store_true')
  args = p.parse_args()
  import torch
  import transformers

  cfg_dict = dict(QWEN2_100M, num_hidden_layers=4 if args.quick else QWEN2_100M['num_hidden_layers'])
  cfg = Qwen2Config(**cfg_dict)
  ceiling = matmul_gflops()
  compile_s, jt, nparams = mmjax_train_step(cfg, args.batch, args.seq, args.steps, args.warmup)
  tt = torch_train_step(cfg_dict, args.batch, args.seq, args.steps, args.warmup)
  jf = mmjax_forward(cfg, args.forward_seq, args.steps, args.warmup)
  tf = torch_forward(cfg_dict, args.forward_seq, args.steps, args.warmup)
  tokens = args.batch * args.seq
  flops = 6 * matmul_params(cfg) * tokens
  row = {'params': nparams, 'matmul_ceiling_gflops': ceiling, 'mmjax_compile_s': compile_s,
         'mmjax_step_tok_s': tokens / jt, 'torch_step_tok_s': tokens / tt, 'step_ratio': tt / jt,
         'mmjax_step_gflops': flops / jt / 1e9, 'torch_step_gflops': flops / tt / 1e9,
         'mmjax_fwd_tok_s': args.forward_seq / jf, 'torch_fwd_tok_s': args.forward_seq / tf, 'fwd_ratio': tf / jf}
  print(json.dumps(row, indent=1))
  date = datetime.date.today().isoformat()
  lines = [
      f"\n## Qwen2 LM step vs transformers ({nparams / 1e6:.0f}M params{', quick' if args.quick else ''}), {date}\n",
      f"{jax.devices()[0].device_kind} / {platform.machine()} with {os.cpu_count()} cores; jax {jax.__version__}, "
      f"torch {torch.__version__} ({torch.get_num_threads()} threads), transformers {transformers.__version__}. "
      f"Median of {args.steps} after {args.warmup} warm-ups.\n",
      '| measure | mmjax | transformers | mmjax / transformers |', '|---|---|---|---|',
      f"| train step tokens/s ({args.batch} x {args.seq}, AdamW) | {row['mmjax_step_tok_s']:.0f} | "
      f"{row['torch_step_tok_s']:.0f} | {row['step_ratio']:.2f}x |",
      f"| train step GFLOP/s (6 x matmul params x tokens) | {row['mmjax_step_gflops']:.1f} "
      f"({row['mmjax_step_gflops'] / ceiling:.0%} of ceiling) | {row['torch_step_gflops']:.1f} "
      f"({row['torch_step_gflops'] / ceiling:.0%}) | |",
      f"| forward tokens/s (1 x {args.forward_seq}) | {row['mmjax_fwd_tok_s']:.0f} | {row['torch_fwd_tok_s']:.0f} | "
      f"{row['fwd_ratio']:.2f}x |",
      f"\nMatmul ceiling (2048^3 fp32 under jit, same run): {ceiling:.1f} GFLOP/s. mmjax compile time "
      f"{compile_s:.1f} s. Command: `python -m experiments.bench.lm_step{' --quick' if args.quick else ''}`\n"]
  print('\n'.join(lines))
  if not args.no_record:
    with open(os.path.join(HERE, 'RESULTS.md'), 'a') as f:
      f.write('\n'.join(lines))


if __name__ == '__main__':
  main()
