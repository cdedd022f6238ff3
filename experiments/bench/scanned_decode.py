"""Decode step time of a scanned decoder (stacked KV cache carried through `nn.scan`, written in place) against the
same decoder unrolled (one cache buffer per layer), side by side in one run.

  python -m experiments.bench.scanned_decode [--layers 8] [--max_len 4096] [--batch 4]

Prints one JSON line: ms per decode step of each layout and the ratio scanned / unrolled.
"""
import argparse
import dataclasses
import json

import flax.linen as nn
import jax
import jax.numpy as jnp

from experiments.bench.timing import median_time
from mmjax.models import LlamaConfig, LlamaForCausalLM, init_cache
from mmjax.models.decoder import stack_layers


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--layers', type=int, default=8)
  parser.add_argument('--hidden', type=int, default=512)
  parser.add_argument('--max_len', type=int, default=4096)
  parser.add_argument('--batch', type=int, default=4)
  parser.add_argument('--steps', type=int, default=20)
  args = parser.parse_args()
  config = LlamaConfig(vocab_size=4096, hidden_size=args.hidden, intermediate_size=2 * args.hidden,
                       num_hidden_layers=args.layers, num_attention_heads=args.hidden // 64,
                       num_key_value_heads=args.hidden // 128, max_position_embeddings=args.max_len)
  ids = jnp.ones((args.batch, 1), jnp.int32)
  params = nn.unbox(LlamaForCausalLM(config).init(jax.random.key(0), ids)['params'])
  result = {'layers': args.layers, 'hidden': args.hidden, 'max_len': args.max_len, 'batch': args.batch,
            'backend': jax.default_backend(), 'jax': jax.__version__}
  for name, scan in (('unrolled', False), ('scanned', True)):
    cfg = dataclasses.replace(config, scan_layers=scan)
    module, p = LlamaForCausalLM(cfg), stack_layers(params) if scan else params
    step = jax.jit(lambda p, ids, cache, m=module: m.apply({'params': p}, ids, cache=cache).cache, donate_argnums=2)
    prompt = jnp.ones((args.batch, args.max_len // 2), jnp.int32)
    state = {'cache': jax.jit(lambda p, c, m=module: m.apply({'params': p}, prompt, cache=c).cache)(
        p, init_cache(cfg, args.batch, args.max_len))}

    def run(step=step, p=p, state=state):
      state['cache'] = jax.block_until_ready(step(p, ids, state['cache']))

    result[f'{name}_ms'] = 1e3 * median_time(run, args.steps, warmup=2)
  result['ratio_scanned_over_unrolled'] = result['scanned_ms'] / result['unrolled_ms']
  print(json.dumps(result))


if __name__ == '__main__':
  main()
