"""Search throughput (questions/s) of best-of-N and beam search on the arithmetic task, with the KV-cache reuse of
`EnginePolicy` against re-prefilling every path each round (search-and-learn's way), in the same run.

  python -m experiments.bench.ttc_search                         # tiny random Qwen2 + PRM, N = 16 and 64, CPU
  python -m experiments.bench.ttc_search --workdir runs/ttc      # the trained smoke policy and PRM of a workdir
  python -m experiments.bench.ttc_search --n 16 --questions 4     # a quick run

Each setting runs once to compile its shapes, then `repeats` timed runs alternate the two modes (same seeds, so
both draw the same steps) and the fastest of each is reported. Prints a markdown table.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import time

import jax
import jax.numpy as jnp

from configs.test_time_compute import get_config
from experiments.test_time_compute import arithmetic, training
from experiments.test_time_compute.experiment import MAX_STEP_TOKENS
from experiments.test_time_compute.policy import EnginePolicy, EngineVerifier
from experiments.test_time_compute.search import Strategy
from mmjax.models.prm import from_decoder, from_decoder_params


def _models(workdir: str | None):
  config = get_config('variant=smoke')
  model = training.policy_model(config)
  if workdir:
    policy = training.load_params(os.path.join(workdir, 'policy', 'params.msgpack'))
    prm = training.load_params(os.path.join(workdir, 'prm', training.BEST))
  else:
    boxed = model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))['params']
    policy = jax.tree.map(lambda x: getattr(x, 'value', x), boxed, is_leaf=lambda x: hasattr(x, 'value'))
    prm = from_decoder_params(from_decoder(model), policy, jax.random.key(1))
  return config, model, policy, prm


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--workdir', default=None, help='a smoke workdir with trained policy and PRM params')
  parser.add_argument('--n', type=int, nargs='+', default=[16, 64])
  parser.add_argument('--questions', type=int, default=8)
  parser.add_argument('--repeats', type=int, default=2)
  args = parser.parse_args()
  config, model, policy_params, prm_params = _models(args.workdir)
  probs = arithmetic.make_problems(args.questions, min_len=5, max_len=5, seed=7)
  prompts = [p.prompt for p in probs]
  verifier = EngineVerifier(from_decoder(model), prm_params, encode=arithmetic.encode, questions=prompts,
                            max_rows=1024)
  print(f'# ttc_search {datetime.date.today()} {platform.machine()} {jax.devices()[0].device_kind} '
        f'jax {jax.__version__}; {args.questions} questions of 5 digits; '
        f"{'trained smoke models' if args.workdir else 'random tiny models'}\n")
  print('| strategy | N | reuse q/s | re-prefill q/s | speed-up |\n|---|---|---|---|---|')
  for n in args.n:
    for strategy in (Strategy('best_of_n'), Strategy('beam', 4)):
      best = {}
      for repeat in range(args.repeats + 1):
        for reuse in (True, False):
          policy = EnginePolicy(model, policy_params, encode=arithmetic.encode, decode=arithmetic.decode,
                                questions=prompts, eos_token_id=arithmetic.EOS, delimiter=arithmetic.DELIMITER,
                                max_step_tokens=MAX_STEP_TOKENS, temperature=1.0, seed=0, reuse_cache=reuse)
          start = time.perf_counter()
          strategy.run(policy, verifier, list(range(len(probs))), n, answer_fn=arithmetic.answer_fn, rounds=6)
          seconds = time.perf_counter() - start
          if repeat:  # the first run compiles
            best[reuse] = min(best.get(reuse, float('inf')), seconds)
      q = {k: args.questions / v for k, v in best.items()}
      print(f'| {strategy.name} | {n} | {q[True]:.2f} | {q[False]:.2f} | {q[True] / q[False]:.2f}x |', flush=True)


if __name__ == '__main__':
  main()
