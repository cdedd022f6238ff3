"""The programs of the test-time compute experiment on the arithmetic task (configs/test_time_compute.py), one per
stage, each reading what the previous stages wrote to the workdir:

  train      policy SFT (shared trainer)   -> policy/ (checkpoints, params.msgpack), policy.json (step accuracy q)
  label      Math-Shepherd soft labels     -> labels.jsonl (question, steps, labels)
  train_prm  PRM BCE training              -> prm/ (checkpoints, best_params.msgpack: the best validation step)
  search     strategies x budgets          -> search.jsonl (one line per question; a rerun skips finished ones)
  select     compute-optimal selection     -> select.json
  plots      the paper's figures           -> accuracy_vs_budget.png, accuracy_by_bin.png, compute_optimal.png

Every program also merges its headline numbers into summary.json and returns them.
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from typing import Any

import ml_collections
import numpy as np

from experiments.test_time_compute import arithmetic, plots, training
from experiments.test_time_compute.compute_optimal import (
  best_fixed_strategy,
  difficulty_bins,
  select_compute_optimal,
  select_fixed,
  two_folds,
)
from experiments.test_time_compute.labels import Labelled, complete, soft_labels
from experiments.test_time_compute.policy import EnginePolicy, EngineVerifier
from experiments.test_time_compute.protocols import Policy, Verifier
from experiments.test_time_compute.search import Strategy
from experiments.test_time_compute.verifiers import ExactVerifier
from mmjax.models.prm import from_decoder

MAX_STEP_TOKENS = 8  # the longest step, "9+9=8\n", is 6 tokens
DIFFICULTY_SEED = 1_000_003  # offsets the sampling stream of the difficulty samples from the searches' streams


def problems(config: ml_collections.ConfigDict, split: str) -> list[arithmetic.Problem]:
  """The problems of a split ('train', 'label', 'eval'): disjoint seeds off data.seed."""
  d = config.data
  offset = {'train': 0, 'label': 1, 'eval': 2}[split]
  return arithmetic.make_problems(d[f'{split}_questions'], min_len=d.min_len, max_len=d.max_len,
                                  seed=d.seed * 3 + offset)


def strategy(name: str) -> Strategy:
  """'best_of_n' or '<beam|dvts>_m<width|sqrt>_k<lookahead>' -> Strategy."""
  if name == 'best_of_n':
    return Strategy('best_of_n')
  m = re.fullmatch(r'(beam|dvts)_m(\d+|sqrt)_k(\d+)', name)
  if not m:
    raise ValueError(f"config.search.strategies: unknown strategy {name!r}; use 'best_of_n' or e.g. beam_m4_k0, "
                     'beam_msqrt_k3, dvts_m4_k0')
  return Strategy(m.group(1), None if m.group(2) == 'sqrt' else int(m.group(2)), int(m.group(3)))


def _summary(workdir: str, stage: str, numbers: dict[str, Any]) -> dict[str, Any]:
  path = os.path.join(workdir, 'summary.json')
  summary = json.load(open(path)) if os.path.exists(path) else {}
  summary[stage] = numbers
  with open(path, 'w') as f:
    json.dump(summary, f, indent=1)
  return numbers


def _policy(config: ml_collections.ConfigDict, params: Any, probs: list[arithmetic.Problem], *, temperature: float,
            seed: int, history: int = 4) -> EnginePolicy:
  return EnginePolicy(training.policy_model(config), params, encode=arithmetic.encode, decode=arithmetic.decode,
                      questions=[p.prompt for p in probs], eos_token_id=arithmetic.EOS,
                      delimiter=arithmetic.DELIMITER, max_step_tokens=MAX_STEP_TOKENS, temperature=temperature,
                      seed=seed, history=history)


def step_accuracy(policy: EnginePolicy, probs: list[arithmetic.Problem], max_steps: int) -> dict[str, float]:
  """One sampled solution per problem: q (the fraction of steps that are right after a right prefix) and the
  accuracy of the final answers."""
  steps, _ = complete(policy, [(i, ()) for i in range(len(probs))], max_steps=max_steps)
  right = total = 0
  for p, s in zip(probs, steps):
    ok = arithmetic.check_steps(p, s)
    total += sum(1 for i in range(len(ok)) if i == 0 or ok[i - 1])
    right += sum(ok)
  answers = [arithmetic.is_correct(p, arithmetic.answer_fn(''.join(s))) for p, s in zip(probs, steps)]
  return {'q': right / max(total, 1), 'pass1': float(np.mean(answers))}


def train_program(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  params = training.train_policy(config, os.path.join(workdir, 'policy'), problems(config, 'train'))
  training.save_params(os.path.join(workdir, 'policy', 'params.msgpack'), params)
  probs = problems(config, 'eval')
  return _summary(workdir, 'policy', step_accuracy(_policy(config, params, probs, temperature=config.search.temperature,
                                                           seed=config.seed), probs,
                                                         config.data.max_len + 2))


def _policy_params(workdir: str) -> Any:
  return training.load_params(os.path.join(workdir, 'policy', 'params.msgpack'))


def label_program(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  probs = problems(config, 'label')
  policy = _policy(config, _policy_params(workdir), probs, temperature=config.labels.temperature, seed=config.seed)
  c = config.labels
  out = []
  for start in range(0, len(probs), c.chunk):
    out += soft_labels(policy, range(start, min(start + c.chunk, len(probs))), samples=c.samples, rollouts=c.rollouts,
                       answer_fn=arithmetic.answer_fn, correct=lambda q, a: arithmetic.is_correct(probs[q], a),
                       max_steps=config.data.max_len + 2)
  with open(os.path.join(workdir, 'labels.jsonl'), 'w') as f:
    for x in out:
      f.write(json.dumps({'question': x.question, 'steps': x.steps, 'labels': x.labels}) + '\n')
  finals = [x.labels[-1] for x in out]
  return _summary(workdir, 'labels', {'samples': len(out), 'dropped': c.samples * len(probs) - len(out),
                                      'final_correct': float(np.mean(finals)),
                                      'mean_label': float(np.mean([v for x in out for v in x.labels]))})


def train_prm_program(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  path = os.path.join(workdir, 'labels.jsonl')
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path} does not exist: run --mode label first.')
  labelled = [Labelled(r['question'], tuple(r['steps']), tuple(r['labels'])) for r in map(json.loads, open(path))]
  probs = problems(config, 'label')
  held = set(np.random.default_rng(config.seed).permutation(len(probs))[:max(1, round(config.prm.val_fraction *
                                                                                       len(probs)))].tolist())
  length, max_steps = arithmetic.max_tokens(config.data.max_len), config.data.max_len
  prompts = [p.prompt for p in probs]
  train_rows = training.prm_examples([x for x in labelled if x.question not in held], prompts, length, max_steps)
  val_rows = training.prm_examples([x for x in labelled if x.question in held], prompts, length, max_steps)
  if not train_rows or not val_rows:
    raise ValueError(f'{path}: too few labelled samples to train ({len(train_rows)}) and validate ({len(val_rows)}) '
                     'the PRM; raise data.label_questions or labels.samples.')
  params, best = training.train_prm(config, os.path.join(workdir, 'prm'), train_rows, val_rows,
                                    _policy_params(workdir))
  verifier = EngineVerifier(from_decoder(training.policy_model(config)), params, encode=arithmetic.encode,
                            questions=prompts)
  held_out = [x for x in labelled if x.question in held]
  return _summary(workdir, 'prm', {**best, 'train_rows': len(train_rows), 'val_rows': len(val_rows),
                                   **step_separation(verifier, probs, held_out)})


def step_separation(verifier: Verifier, probs: list[arithmetic.Problem], labelled: list[Labelled]
                    ) -> dict[str, float]:
  """How well the PRM's step scores separate right from wrong steps (`arithmetic.check_steps`, the exact checker) on
  labelled samples: the AUC (the chance that a random right step outscores a random wrong one, ties half) and the
  mean score of each kind."""
  scores = verifier.score([(x.question, x.steps) for x in labelled])
  right, wrong = [], []
  for x, sc in zip(labelled, scores, strict=True):
    for s, ok in zip(sc, arithmetic.check_steps(probs[x.question], x.steps)):
      (right if ok else wrong).append(s)
  if not right or not wrong:
    return {'step_auc': None, 'right_steps': len(right), 'wrong_steps': len(wrong)}  # JSON null: undefined
  a, b = np.asarray(right)[:, None], np.asarray(wrong)[None, :]
  auc = float(np.mean((a > b) + 0.5 * (a == b)))
  return {'step_auc': auc, 'right_steps': len(right), 'wrong_steps': len(wrong),
          'right_score': float(np.mean(right)), 'wrong_score': float(np.mean(wrong))}


def _search_chunk(config: ml_collections.ConfigDict, policy_params: Any, prm_params: Any,
                  probs: list[arithmetic.Problem], chunk: list[int]) -> list[dict[str, Any]]:
  """One record per question of chunk: per strategy and budget, whether each selection is right; and the question's
  difficulty measures, oracle pass@1 and the mean verifier score, over `select.difficulty_samples` samples of their
  own (a separate sampling stream: bins read off the searched best-of-N samples would tell the selection which
  questions that very run got wrong)."""
  strategies = [strategy(s) for s in config.search.strategies]
  history = 2 + max(s.lookahead for s in strategies)
  policy = search_policy(config, policy_params, probs, seed=config.search.seed + chunk[0], history=history)
  verifier = make_verifier(config, prm_params, probs)
  records = {q: {'question': q, 'difficulty': probs[q].difficulty, 'runs': {}} for q in chunk}
  rounds = config.data.max_len + 2
  for s in strategies:
    for budget in config.search.budgets:
      if not s.fits(budget):
        continue
      result = s.run(policy, verifier, chunk, budget, answer_fn=arithmetic.answer_fn, rounds=rounds)
      for how in ('weighted', 'majority', 'argmax'):
        for q, a in zip(chunk, result.predictions(how)):
          records[q]['runs'].setdefault(s.name, {}).setdefault(str(budget), {})[how] = int(
              arithmetic.is_correct(probs[q], a))
  n = config.select.get('difficulty_samples', 0) or max(config.search.budgets)
  own = search_policy(config, policy_params, probs, seed=DIFFICULTY_SEED + config.search.seed + chunk[0])
  result = Strategy('best_of_n').run(own, verifier, chunk, n, answer_fn=arithmetic.answer_fn, rounds=rounds)
  for q, cs in zip(chunk, result.completions):
    records[q]['pass1'] = float(np.mean([arithmetic.is_correct(probs[q], c.answer) for c in cs]))
    records[q]['mean_score'] = float(np.mean([c.scores[-1] for c in cs]))
  return [records[q] for q in chunk]


def search_policy(config: ml_collections.ConfigDict, params: Any, probs: list[arithmetic.Problem], *, seed: int,
                  history: int = 4) -> Policy:
  """The search's policy by config.search.policy: the trained one (params, sampled at search.temperature) or spec
  §10's simulated one (arithmetic.SimulatedPolicy, per-step accuracy search.simulated_q; no model)."""
  kind = config.search.get('policy', 'trained')
  if kind == 'simulated':
    return arithmetic.SimulatedPolicy(probs, config.search.simulated_q, seed=seed)
  if kind != 'trained':
    raise ValueError(f"config.search.policy: unknown policy {kind!r}; use 'trained' or 'simulated'")
  return _policy(config, params, probs, temperature=config.search.temperature, seed=seed, history=history)


def make_verifier(config: ml_collections.ConfigDict, prm_params: Any, probs: list[arithmetic.Problem]) -> Verifier:
  """The search's verifier by config.search.verifier: the learned PRM (prm_params) or the exact-noisy checker."""
  s = config.search
  if s.verifier == 'exact':
    return ExactVerifier(probs, q_hat=s.q_hat, sigma=s.noise, flip=s.flip, decoy=s.decoy, decoy_bonus=s.decoy_bonus,
                         seed=s.verifier_seed)
  if s.verifier != 'learned':
    raise ValueError(f"config.search.verifier: unknown verifier {s.verifier!r}; use 'learned' or 'exact'")
  return EngineVerifier(from_decoder(training.policy_model(config)), prm_params, encode=arithmetic.encode,
                        questions=[p.prompt for p in probs])


def search_program(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  if 'best_of_n' not in config.search.strategies:
    raise ValueError('config.search.strategies must hold best_of_n (the baseline of the vote comparisons).')
  os.makedirs(workdir, exist_ok=True)  # the simulated policy needs no train stage, so nothing may have made it yet
  path = os.path.join(workdir, 'search.jsonl')
  done = {json.loads(line)['question'] for line in open(path)} if os.path.exists(path) else set()
  probs = problems(config, 'eval')
  todo = [q for q in range(len(probs)) if q not in done]
  simulated = config.search.get('policy', 'trained') == 'simulated'
  policy_params = None if simulated else _policy_params(workdir)
  exact = config.search.verifier == 'exact'
  prm_params = None if exact else training.load_params(os.path.join(workdir, 'prm', training.BEST))
  for start in range(0, len(todo), config.search.chunk):
    lines = _search_chunk(config, policy_params, prm_params, probs, todo[start:start + config.search.chunk])
    with open(path, 'a') as f:  # a whole chunk at a time: a killed run redoes at most one chunk
      f.writelines(json.dumps(r) + '\n' for r in lines)
  return _summary(workdir, 'search', accuracy_table(read_search(path), config)[2])


def read_search(path: str) -> list[dict[str, Any]]:
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path} does not exist: run --mode search first.')
  return sorted(map(json.loads, open(path)), key=lambda r: r['question'])


def accuracy_table(records: list[dict[str, Any]], config: ml_collections.ConfigDict, how: str = 'weighted'
                   ) -> tuple[list[str], np.ndarray, dict[str, Any]]:
  """(strategy names, acc [S, Q, B] (0 where a strategy does not fit a budget), {name: {budget: mean}})."""
  names, budgets = list(config.search.strategies), [str(b) for b in config.search.budgets]
  acc = np.zeros((len(names), len(records), len(budgets)))
  for i, name in enumerate(names):
    for j, r in enumerate(records):
      for k, b in enumerate(budgets):
        acc[i, j, k] = r['runs'].get(name, {}).get(b, {}).get(how, 0)
  means = {n: {b: float(acc[i, :, k].mean()) for k, b in enumerate(budgets)} for i, n in enumerate(names)}
  return names, acc, means


def select_program(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  records = read_search(os.path.join(workdir, 'search.jsonl'))
  names, acc, means = accuracy_table(records, config)
  majority = accuracy_table(records, config, 'majority')[2]['best_of_n']
  out: dict[str, Any] = {'budgets': list(config.search.budgets), 'weighted': means,
                         'best_of_n_majority': majority}
  best, best_acc = best_fixed_strategy(acc)
  out['best_fixed'] = {'strategy': [names[i] for i in best], 'accuracy': best_acc.tolist()}
  for source in ('pass1', 'mean_score'):
    bins = difficulty_bins(np.array([r[source] for r in records]), config.select.bins)
    folds = two_folds(bins, config.select.seed)
    if source == 'pass1':  # the fair baseline: one strategy per budget, chosen on one fold, scored on the other
      fixed = select_fixed(acc, folds)
      out['fixed_cv'] = {'accuracy': fixed.accuracy.tolist(),
                         'chosen': [[names[i] for i in f] for f in fixed.chosen[0].tolist()]}
    chosen = select_compute_optimal(acc, bins, folds, config.select.bins)
    out[f'compute_optimal_{source}'] = {'accuracy': chosen.accuracy.tolist(),
                                        'bin_accuracy': np.nan_to_num(chosen.bin_accuracy).tolist(),
                                        'chosen': [[[names[i] for i in f] for f in b] for b in chosen.chosen.tolist()]}
    out[f'bins_{source}'] = bins.tolist()
  with open(os.path.join(workdir, 'select.json'), 'w') as f:
    json.dump(out, f, indent=1)
  return _summary(workdir, 'select', {k: out[k] for k in ('best_fixed', 'fixed_cv', 'best_of_n_majority')} |
                  {'compute_optimal': out['compute_optimal_pass1']['accuracy']})


def plots_program(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  path = os.path.join(workdir, 'select.json')
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path} does not exist: run --mode select first.')
  selected = json.load(open(path))
  records = read_search(os.path.join(workdir, 'search.jsonl'))
  names, acc, _ = accuracy_table(records, config)
  files = plots.write_all(workdir, selected, names, acc, np.array(selected['bins_pass1']), config.select.bins)
  return _summary(workdir, 'plots', {'files': files})


PROGRAMS: dict[str, Callable[[ml_collections.ConfigDict, str], dict[str, Any]]] = {
    'train': train_program, 'label': label_program, 'train_prm': train_prm_program, 'search': search_program,
    'select': select_program, 'plots': plots_program,
}
