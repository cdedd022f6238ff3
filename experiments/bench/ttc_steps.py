"""Step-generation benchmark for test-time search: cache reuse against re-prefilling every path each round.

  python -m experiments.bench.ttc_steps                          # tiny random Qwen2 on CPU, N = 16 and 64
  python -m experiments.bench.ttc_steps --rows 16 --rounds 3      # a smoke run

A search round continues N paths by one step each (`mmjax.generate.steps.StepGenerator`): best-of-N continues
every path; beam search (width 4) keeps N/4 paths by a random score and forks each 4 ways. With `reuse_cache` the
rounds read each history from its cache rows; without it every round prefills every history again, as
huggingface/search-and-learn does through vLLM. Both modes draw the same steps (same seed), so they do the same
generation work. Each setting runs once to compile every shape, then the two modes alternate `repeats` timed runs
and the fastest of each is reported. Prints a markdown table: steps (rows x rounds) per second, tokens generated,
prefilled and read from the cache, and the speed-up of reuse.
"""
from __future__ import annotations

import argparse
import datetime
import functools
import platform
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mmjax.generate.steps import StepGenerator
from mmjax.models.qwen2 import Qwen2Config, Qwen2ForCausalLM

TINY = dict(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=4096)
WIDTH = 4  # beam width M


def search(module, params, prompt: list[int], *, rows: int, rounds: int, beam: bool, reuse_cache: bool,
           step_tokens: int) -> tuple[float, StepGenerator]:
  """Seconds of `rounds` rounds over `rows` paths of one question; returns (seconds, the generator)."""
  gen = StepGenerator(module, params, delimiters=[[TINY['vocab_size'] - 1]], eos_token_id=None,
                      max_step_tokens=step_tokens, temperature=1.0, seed=0, reuse_cache=reuse_cache)
  rng = np.random.default_rng(0)
  start = time.perf_counter()
  paths = gen.start([prompt])
  paths, _ = gen.step(paths, [0] * rows)
  for _ in range(rounds - 1):
    if beam:  # the top N/M by a stand-in PRM score, each forked M ways
      keep = np.argsort(rng.random(rows))[:rows // WIDTH]
      parents = np.repeat(keep, WIDTH)
    else:
      parents = np.arange(rows)
    paths, _ = gen.step(paths, parents)
  jax.block_until_ready(paths.session.cache if paths.session is not None else paths.sequences)
  return time.perf_counter() - start, gen


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--rows', type=int, nargs='+', default=[16, 64], help='N, the paths per round')
  parser.add_argument('--rounds', type=int, default=6, help='search rounds')
  parser.add_argument('--search', nargs='+', choices=['best-of-n', 'beam'], default=['best-of-n', 'beam'])
  parser.add_argument('--repeats', type=int, default=2, help='timed runs per setting (the fastest is reported)')
  parser.add_argument('--prompt', type=int, default=256, help='prompt tokens (a few-shot prompt)')
  parser.add_argument('--step-tokens', type=int, default=32, help='most tokens per step')
  args = parser.parse_args()
  module = Qwen2ForCausalLM(Qwen2Config(**TINY))
  params = nn.unbox(module.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))['params'])
  prompt = [int(t) for t in np.random.default_rng(1).integers(0, TINY['vocab_size'] - 1, args.prompt)]
  print(f'{datetime.date.today()} {platform.processor() or platform.machine()} {jax.devices()[0].device_kind} '
        f'jax {jax.__version__}; Qwen2 {TINY}; prompt {args.prompt} tokens, steps <= {args.step_tokens} tokens, '
        f'{args.rounds} rounds, fastest of {args.repeats}\n')
  print('| N | search | mode | steps/s | tokens generated | prefilled | read from cache | speed-up |')
  print('|---|---|---|---|---|---|---|---|')
  for rows in args.rows:
    for beam in [name == 'beam' for name in args.search]:
      runs = {reuse: functools.partial(search, module, params, prompt, rows=rows, rounds=args.rounds, beam=beam,
                                       reuse_cache=reuse, step_tokens=args.step_tokens) for reuse in (False, True)}
      for run in runs.values():
        run()  # compiles every shape
      seconds, gens = {False: [], True: []}, {}
      for _ in range(args.repeats):  # alternating, so both modes see the same machine load
        for reuse, run in runs.items():
          elapsed, gens[reuse] = run()
          seconds[reuse].append(elapsed)
      best = {reuse: min(times) for reuse, times in seconds.items()}
      for reuse in (False, True):
        counts = gens[reuse].rounds
        ratio = f'{best[False] / best[True]:.2f}x' if reuse else ''
        print(f'| {rows} | {"beam" if beam else "best-of-N"} | {"reuse" if reuse else "re-prefill"} | '
              f'{rows * args.rounds / best[reuse]:.1f} | {sum(r.generated for r in counts)} | '
              f'{sum(r.prefilled for r in counts)} | {sum(r.reused for r in counts)} | {ratio} |', flush=True)


if __name__ == '__main__':
  main()
