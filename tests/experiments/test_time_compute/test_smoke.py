"""The paper's qualitative search results on the arithmetic smoke task, with a really trained policy and the
exact-noisy verifier (experiments/test_time_compute/verifiers.py): the policy SFT (`--mode train`), then `--mode
search` and `--mode select` on held-out questions, as the CLI runs them.

Asserted, with seeds 0 everywhere (config.seed, data.seed, search.seed, search.verifier_seed, select.seed):
- the trained policy's per-step accuracy q at the search temperature is in the spec's range 0.6-0.9;
- (a) beam search (width 2) beats best-of-N weighted at budgets 4 and 8;
- (b) the verifier-weighted vote beats majority voting.
(c), the compute-optimal selection against the best fixed strategy, is asserted on the simulated policy below: on
60 questions of the trained policy the two differ by -0.07..+0.07 per budget across seeds, within noise (README).

Margins, measured (2-core machine, 8 virtual CPU devices as here, the policy's train step at XLA level 1): this
test's run (seed 0) trains the policy to q = 0.712 (pass@1 0.400 on its 60 questions) and gets best-of-N weighted
0.483 / 0.583 / 0.833 at budgets 2 / 4 / 8, beam 0.583 / 0.733 / 0.900, majority 0.417 / 0.317 / 0.450; so beam -
best-of-N (mean of budgets 4 and 8) 0.108 and weighted - majority (mean of 2, 4, 8) 0.239. The same policy searched
with seeds 1 and 2 (search.seed = verifier_seed = 1, 2): beam - best-of-N 0.133 and 0.092 (per budget 0.133 / 0.133
and 0.017 / 0.167), weighted - majority 0.194 and 0.217 (never below 0.117 at one budget). The test asserts >= 0.05
and >= 0.1, and each budget's difference > 0. About 60 CPU s, of which the 250 SFT steps and q are ~31 (at level 0
they took ~50: the same steps, a different trajectory, q 0.762).
"""
import json

import numpy as np
import pytest

from configs.test_time_compute import get_config
from experiments.test_time_compute import arithmetic, experiment
from experiments.test_time_compute.compute_optimal import (
  difficulty_bins,
  select_compute_optimal,
  select_fixed,
  two_folds,
)
from experiments.test_time_compute.verifiers import EPS, ExactVerifier


def _config():
  c = get_config('variant=smoke')
  c.total_steps = c.ckpt_every = 250  # q = 0.71 at T = 1 (level 1; 0.76 at level 0)
  c.optim.warmup_steps = 20
  c.data.eval_questions = 60
  c.search.temperature = 1.0
  c.search.strategies = ('best_of_n', 'beam_m2_k0')
  c.search.budgets = (2, 4, 8)
  c.search.chunk = 60
  c.search.verifier = 'exact'
  c.search.q_hat = 0.8
  c.search.noise = 0.1
  c.select.bins = 3
  c.xla_options = {'xla_backend_optimization_level': 1}  # the policy's 250 steps: ~50 -> ~31 CPU s
  return c


def test_search_beats_best_of_n_and_weighted_beats_majority(tmp_path):
  config, workdir = _config(), str(tmp_path)
  policy = experiment.train_program(config, workdir)
  assert 0.6 <= policy['q'] <= 0.9, policy
  experiment.search_program(config, workdir)
  selected = experiment.select_program(config, workdir)
  records = experiment.read_search(str(tmp_path / 'search.jsonl'))
  weighted = {n: experiment.accuracy_table(records, config)[2][n] for n in config.search.strategies}
  majority = experiment.accuracy_table(records, config, 'majority')[2]['best_of_n']
  summary = json.dumps({'policy': policy, 'weighted': weighted, 'majority': majority, 'select': selected})
  beam_gain = np.mean([weighted['beam_m2_k0'][b] - weighted['best_of_n'][b] for b in ('4', '8')])
  assert beam_gain >= 0.05, summary
  assert all(weighted['beam_m2_k0'][b] > weighted['best_of_n'][b] for b in ('4', '8')), summary
  vote_gain = np.mean([weighted['best_of_n'][b] - majority[b] for b in ('2', '4', '8')])
  assert vote_gain >= 0.1 and all(weighted['best_of_n'][b] > majority[b] for b in ('2', '4', '8')), summary


def test_compute_optimal_beats_the_best_fixed_strategy_on_the_simulated_policy(tmp_path):
  """(c) on spec §10's toy written as the arithmetic task: `arithmetic.SimulatedPolicy` (per-step accuracy 0.75, chains
  of 3-9 digits) searched with the exact verifier with decoys (noise 0.1, decoy 0.03, bonus 0.1), 1000 held-out
  questions, best-of-N and beam search (width 4) at budgets 4 / 8 / 12 / 16, 5 difficulty bins from 16 samples of
  their own; `--mode search` and `--mode select` as the CLI runs them. No model: numpy only, the same numbers on any
  machine. About 25 CPU s.

  Measured (search.seed = verifier_seed = s; s = 2 with data.seed = 1), the selection averaged over fold seeds 0-9:
  compute-optimal - best fixed (held out) at budgets 4/8/12/16: s0 0.000/+0.024/-0.005/-0.003, s1 0.000/+0.031/
  +0.009/0.000, s2 -0.002/+0.022/+0.004/0.000. Budget 8 is where the strategies cross (beam 0.847 vs best-of-N 0.801
  overall, s0) and the bins want different ones: bin 1 best-of-N 0.96 vs beam 0.89, bin 5 beam 0.75 vs 0.60 (s0;
  s1 0.97/0.91 and 0.73/0.66, s2 0.98/0.91 and 0.79/0.58), the paper's pattern (best-of-N on easy questions, beam
  search on hard ones). Over-optimisation (the spec's decoy toy): beam falls from 0.833 to 0.787 between budgets 4
  and 16 while best-of-N rises from 0.634 to 0.896 (s0). Asserted on s0: compute-optimal >= best fixed - 0.01 at every
  budget and >= best fixed + 0.01 at budget 8; at budget 8 best-of-N wins bin 1 and beam bin 5 (by > 0.03); beam at
  16 below beam at 4, best-of-N at 16 above best-of-N at 4 by > 0.2."""
  config = get_config('variant=smoke')
  config.search.update(policy='simulated', simulated_q=0.75, verifier='exact', noise=0.1, decoy=0.03, decoy_bonus=0.1,
                       strategies=('best_of_n', 'beam_m4_k0'), budgets=(4, 8, 12, 16), chunk=1000)
  config.data.update(min_len=3, max_len=9, eval_questions=1000)
  config.select.bins = 5
  workdir = str(tmp_path)
  experiment.search_program(config, workdir)
  selected = experiment.select_program(config, workdir)
  assert set(selected) >= {'best_fixed', 'fixed_cv', 'compute_optimal'}
  records = experiment.read_search(str(tmp_path / 'search.jsonl'))
  names, acc, _ = experiment.accuracy_table(records, config)
  bins = difficulty_bins(np.array([r['pass1'] for r in records]), 5)
  optimal = np.mean([select_compute_optimal(acc, bins, two_folds(bins, s), 5).accuracy for s in range(10)], axis=0)
  fixed = np.mean([select_fixed(acc, two_folds(bins, s)).accuracy for s in range(10)], axis=0)
  by_bin = {n: np.array([acc[i, bins == b].mean(axis=0) for b in (1, 5)]) for i, n in enumerate(names)}
  summary = json.dumps({'optimal': optimal.tolist(), 'fixed': fixed.tolist(), 'means': acc.mean(axis=1).tolist(),
                        'bins_1_5': {n: v.tolist() for n, v in by_bin.items()}})
  assert (optimal >= fixed - 0.01).all() and optimal[1] >= fixed[1] + 0.01, summary
  assert by_bin['best_of_n'][0, 1] > by_bin['beam_m4_k0'][0, 1] + 0.03, summary  # easy: best-of-N
  assert by_bin['beam_m4_k0'][1, 1] > by_bin['best_of_n'][1, 1] + 0.03, summary  # hard: beam search
  means = acc.mean(axis=1)
  assert means[1, 3] < means[1, 0] and means[0, 3] > means[0, 0] + 0.2, summary


def test_simulated_policy_step_accuracy():
  probs = arithmetic.make_problems(2000, min_len=4, max_len=4, seed=0)
  policy = arithmetic.SimulatedPolicy(probs, 0.7, seed=0)
  paths = [(q, ()) for q in range(len(probs))]
  for _ in range(4):  # 3 additions, then the answer line
    paths = [(q, s + (step.text,)) for (q, s), step in zip(paths, policy.extend(paths))]
  right = np.mean([arithmetic.is_correct(probs[q], arithmetic.answer_fn(''.join(s))) for q, s in paths])
  assert abs(right - 0.7 ** 3) < 4 * np.sqrt(0.343 * 0.657 / 2000)  # pass@1 = q ** (K - 1); 4 sd
  assert all(len(arithmetic.check_steps(probs[q], s)) == 4 and s[-1].startswith('a=') for q, s in paths)
  assert policy.extend([(0, paths[0][1][:3])])[0].finished  # the answer line ends the solution
  greedy = arithmetic.SimulatedPolicy(probs, 0.7).extend([(q, ()) for q in range(50)], greedy=True)
  assert all(arithmetic.check_steps(probs[q], (s.text,)) == [True] for q, s in enumerate(greedy))
  never = arithmetic.SimulatedPolicy(probs, 0.0).extend([(q, ()) for q in range(50)])
  assert not any(arithmetic.check_steps(probs[q], (s.text,))[0] for q, s in enumerate(never))
  with pytest.raises(ValueError, match='q must be in'):
    arithmetic.SimulatedPolicy(probs, 1.5)


def test_exact_verifier_formula_noise_and_flips():
  probs = [arithmetic.Problem((3, 5, 8))]  # reference: '3+5=8\n', '8+8=6\n', 'a=6'
  right, wrong = ('3+5=8\n', '8+8=6\n', 'a=6'), ('3+5=8\n', '8+8=7\n', 'a=7')
  exact = ExactVerifier(probs, q_hat=0.5)
  assert exact.score([(0, right), (0, wrong)]) == [[0.25, 0.5, 1 - EPS], [0.25, EPS, EPS]]
  noisy = ExactVerifier(probs, q_hat=0.5, sigma=0.2, seed=3)
  a = noisy.score([(0, right), (0, wrong), (0, right[:2])])
  assert a == noisy.score([(0, right[:2]), (0, right), (0, wrong)])[1:] + [a[2]]  # per prefix, any batch or order
  assert a[0][:2] == a[2] and a[0][0] == a[1][0]  # a shared prefix scores the same in every path
  assert a[0] != exact.score([(0, right)])[0] and a != ExactVerifier(probs, q_hat=0.5, sigma=0.2, seed=4).score(
      [(0, right), (0, wrong), (0, right[:2])])
  flips = ExactVerifier(probs, q_hat=0.5, flip=1.0).score([(0, right), (0, wrong)])
  assert flips == [[EPS, EPS, EPS], [EPS, 0.5, 1 - EPS]]  # every verdict inverted: wrong steps get q_hat ** remaining
  decoys = ExactVerifier(probs, q_hat=0.5, decoy=1.0, decoy_bonus=0.2).score([(0, right), (0, wrong)])
  assert decoys == [[0.25, 0.5, 1 - EPS], [0.25, 0.7, 1 - EPS]]  # from where it goes wrong: as if right, + bonus
  many = arithmetic.make_problems(40, min_len=3, max_len=3, seed=0)
  some = ExactVerifier(many, q_hat=0.5, decoy=0.5, decoy_bonus=0.2, seed=1)
  first = [(q, (f'{p.digits[0]}+{p.digits[1]}={(p.digits[0] + p.digits[1] + w) % 10}\n',))
           for q, p in enumerate(many) for w in range(1, 10)]  # 360 wrong first steps, one draw each
  is_decoy = np.isclose([s[0] for s in some.score(first)], 0.25 + 0.2)
  assert 0.4 < is_decoy.mean() < 0.6 and set(np.round([s[0] for s in some.score(first)], 6)) == {EPS, 0.45}
  later = some.score([(q, steps + ('0+0=0\n', 'a=0')) for q, steps in first])  # wrong continuations
  assert [np.allclose(s, [0.45, 0.7, 1 - EPS]) for s in later] == is_decoy.tolist()  # decoys stay decoys
  assert not any(np.allclose(s, [EPS] * 3) != (not d) for s, d in zip(later, is_decoy))
  with pytest.raises(ValueError, match='q_hat must be in'):
    ExactVerifier(probs, q_hat=0.0)
  with pytest.raises(ValueError, match='names question 1'):
    exact.score([(1, right)])


def test_unknown_verifier_is_named():
  config = _config()
  config.search.verifier = 'oracle'
  with pytest.raises(ValueError, match="unknown verifier 'oracle'"):
    experiment.make_verifier(config, None, [])
