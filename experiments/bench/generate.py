"""Generation benchmark: mmjax `generate` against transformers `generate`, greedy, side by side in one process.

  python -m experiments.bench.generate            # ~100M Qwen2, prompt 128, 64 new tokens, batch 1 and 8
  python -m experiments.bench.generate --quick    # a small config, for a smoke run

The model is a random Qwen2 (hidden 768, 12 layers, 12 heads, 2 KV heads, MLP 2048, vocab 32000, tied embeddings:
98M parameters), built in transformers, saved, and imported into mmjax, so both run the same weights in float32.
Both generate exactly max_new tokens (no EOS); their calls alternate, so that both see the same machine load.
Per batch size it prints: mmjax's compile time (first call minus the median warm call); tokens/s of a whole call
(prefill included) for each and their ratio; decode-only tokens/s for each, from the difference of a max_new-token
and a 1-token call; and the bytes an mmjax decode step must read (all weights, the tied embedding being the LM
head, plus the K/V cache slots attended) divided by its time, beside the GB/s of a large array reduction measured
in the same run (its best time: the machine's practical read bandwidth). Writes JSON with --json.
"""
from __future__ import annotations

import argparse
import collections
import datetime
import functools
import json
import os
import platform
import statistics
import tempfile
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mmjax.generate import compile_counts, generate
from mmjax.generate.batching import bucket
from mmjax.weights import from_pretrained

FULL = dict(vocab_size=32000, hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12,
            num_key_value_heads=2)
QUICK = dict(vocab_size=8000, hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
             num_key_value_heads=2)


def reduction_gbps(megabytes: int, repeats: int) -> float:
  """Best GB/s of `repeats` jitted float32 sums over a `megabytes` array (each reads it once).

  The best, not the median: on a shared machine a sum gets both cores only some of the time, and the reference is
  the bandwidth the machine can deliver.
  """
  x = jnp.ones((megabytes * 2 ** 20 // 4,), jnp.float32)
  total = jax.jit(jnp.sum)
  total(x).block_until_ready()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    total(x).block_until_ready()
    times.append(time.perf_counter() - start)
  return x.nbytes / min(times) / 1e9


def compare(module, params, hf, prompts: np.ndarray, new_tokens: int, repeats: int) -> dict[str, Any]:
  """Times mmjax and transformers calls of new_tokens and of 1 token, interleaved so that both see the same load.

  Returns medians (seconds) of each, mmjax's compile time, and both sides' generated tokens.
  """
  import torch
  ids = torch.from_numpy(prompts.astype(np.int64)).to(hf.device)
  sync = torch.cuda.synchronize if hf.device.type == 'cuda' else (lambda: None)
  calls = {
      'mmjax': lambda n: generate(module, params, prompts.tolist(), max_new_tokens=n),
      'hf': lambda n: (hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                                   do_sample=False, pad_token_id=0), sync())[0],
  }
  start = time.perf_counter()
  ours = calls['mmjax'](new_tokens)
  first = time.perf_counter() - start
  calls['mmjax'](1)
  with torch.no_grad():
    theirs = calls['hf'](new_tokens)
    times = collections.defaultdict(list)
    for _ in range(repeats):
      for name, call in calls.items():
        for n in (new_tokens, 1):
          start = time.perf_counter()
          call(n)
          times[name, n].append(time.perf_counter() - start)
  median = {key: statistics.median(value) for key, value in times.items()}
  return dict(median=median, compile_s=first - median['mmjax', new_tokens],
              same_tokens=[c.tokens for (c,) in ours] == theirs[:, prompts.shape[1]:].cpu().tolist())


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--quick', action='store_true', help='small model, prompt 32, 16 new tokens')
  parser.add_argument('--batch', type=int, nargs='+', default=[1, 8])
  parser.add_argument('--repeats', type=int, default=5)
  parser.add_argument('--json', help='also write the results here')
  args = parser.parse_args()

  import torch
  import transformers
  dims, prompt_len, new_tokens = (QUICK, 32, 16) if args.quick else (FULL, 128, 64)
  torch.manual_seed(0)
  hf = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(tie_word_embeddings=True, **dims)).eval()
  with tempfile.TemporaryDirectory() as directory:
    hf.save_pretrained(directory)
    module, params, config = from_pretrained(directory)
  if jax.default_backend() == 'gpu' and torch.cuda.is_available():
    hf = hf.cuda()  # Side by side on the same card.
  param_bytes = sum(x.nbytes for x in jax.tree.leaves(params))
  reduction = functools.partial(reduction_gbps, 256 if args.quick else 1024, 2 * args.repeats)
  gbps = reduction()
  rows = []
  for batch in args.batch:
    gbps = max(gbps, reduction())
    prompts = np.random.default_rng(batch).integers(0, dims['vocab_size'], (batch, prompt_len))
    result = compare(module, params, hf, prompts, new_tokens, args.repeats)
    t = result['median']
    mm_step, hf_step = ((t[name, new_tokens] - t[name, 1]) / (new_tokens - 1) for name in ('mmjax', 'hf'))
    cache_len = bucket(prompt_len + bucket(new_tokens, minimum=8))
    cache_bytes = 2 * config.num_hidden_layers * batch * cache_len * config.num_key_value_heads * config.head_dim * 4
    rows.append(dict(
        batch=batch, mmjax_compile_s=result['compile_s'], mmjax_tok_s=batch * new_tokens / t['mmjax', new_tokens],
        hf_tok_s=batch * new_tokens / t['hf', new_tokens], ratio=t['hf', new_tokens] / t['mmjax', new_tokens],
        mmjax_decode_tok_s=batch / mm_step, hf_decode_tok_s=batch / hf_step, decode_ratio=hf_step / mm_step,
        mmjax_prefill_s=t['mmjax', 1], hf_prefill_s=t['hf', 1],
        decode_gbps=(param_bytes + cache_bytes) / mm_step / 1e9, same_tokens=result['same_tokens']))
  env = dict(date=datetime.date.today().isoformat(), device=jax.devices()[0].device_kind, cpus=os.cpu_count(),
             machine=platform.processor() or platform.machine(), jax=jax.__version__, torch=torch.__version__,
             transformers=transformers.__version__, torch_threads=torch.get_num_threads(),
             params=sum(x.size for x in jax.tree.leaves(params)), reduction_gbps=gbps,
             compilations=compile_counts())
  print(f"\n## Greedy generation, Qwen2 {env['params'] / 1e6:.0f}M float32, prompt {prompt_len}, {new_tokens} new "
        f"tokens, {env['date']}\n")
  print(f"{env['device']} ({env['machine']}, {env['cpus']} cores); jax {env['jax']}, torch {env['torch']} "
        f"({env['torch_threads']} threads), transformers {env['transformers']}. Median of {args.repeats} calls. "
        f"Reduction read bandwidth (best of {2 * args.repeats * (1 + len(args.batch))} sums) "
        f"{gbps:.1f} GB/s.\n")
  print('| batch | mmjax compile s | mmjax tok/s | transformers tok/s | ratio | 1-token call s (mmjax / tf) | '
        'decode tok/s (mmjax / tf) | decode ratio | decode GB/s (weights + cache) | % of reduction | same tokens |')
  print('|---|---|---|---|---|---|---|---|---|---|---|')
  for r in rows:
    print(f"| {r['batch']} | {r['mmjax_compile_s']:.2f} | {r['mmjax_tok_s']:.1f} | {r['hf_tok_s']:.1f} | "
          f"{r['ratio']:.2f}x | {r['mmjax_prefill_s']:.3f} / {r['hf_prefill_s']:.3f} | "
          f"{r['mmjax_decode_tok_s']:.1f} / {r['hf_decode_tok_s']:.1f} | {r['decode_ratio']:.2f}x | "
          f"{r['decode_gbps']:.1f} | {100 * r['decode_gbps'] / gbps:.0f}% | {r['same_tokens']} |")
  print(f'\ntok/s: new tokens / whole call (prefill included); ratio = transformers time / mmjax time. Decode: '
        f'({new_tokens}-token call - 1-token call) / {new_tokens - 1} steps.')
  print(f"\nCommand: `python -m experiments.bench.generate{' --quick' if args.quick else ''}`")
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(dict(env=env, rows=rows), f, indent=1)


if __name__ == '__main__':
  main()
