"""SENSE stage 2: DPO / cDPO on execution-labelled (chosen, rejected) SQL pairs, through the shared trainer.

The policy starts from the SFT workdir (--config.init_from, the trainer's own start-from key) and the frozen
reference is the same checkpoint: its log-probabilities of every pair's chosen and rejected SQL (+ EOS) are
computed once, before training, through `mmjax.generate.score`, and stored with the pairs in <workdir>/pairs.jsonl.
So no reference model lives in memory while training and the trainer needs no frozen subtree: the default step
with a loss_fn that reads `ref` from the batch. A rerun (resume) reads pairs.jsonl back instead of rebuilding it.

Pairs: variant=smoke samples the mutator (the weak model of experiments/sense/smoke.py) on the smoke world's
training questions through `synthesis.weak_sample` (executed in the sandboxed pool and labelled against the gold);
otherwise config.dpo.pairs is a JSONL of such pairs (synthesis.weak_sample's dicts, each with its prompt). The loss
is `mmjax.train.preference.dpo_loss` (β = config.dpo.beta, cDPO's ε = config.dpo.label_smoothing) over summed
response log-probs; reward accuracy, margin and the chosen / rejected rewards are logged beside it. At step 0 the
policy equals the reference, so the loss is log 2.
"""
from __future__ import annotations

import json
import os

import ml_collections
import numpy as np

from experiments.sense import smoke, synthesis, train
from mmjax.data import make_pipeline
from mmjax.generate import score
from mmjax.train import Experiment
from mmjax.train.preference import dpo_loss, pack_pairs, sequence_logprobs
from mmjax.weights.workdir import read_workdir_params

PAIRS = 'pairs.jsonl'


def weak_pairs(config: ml_collections.ConfigDict, workdir: str) -> tuple[list[dict], dict]:
  """(pairs, stats): the smoke's mutator samples labelled by execution, or the pairs of config.dpo.pairs."""
  if config.variant == 'smoke':
    from mmjax.evals.sql import SqlPool  # starts worker processes
    world = train.smoke_world(config, workdir)
    with SqlPool(config.workers or None, timeout_s=config.timeout_s, max_rows=config.max_rows,
                 memory_mb=config.memory_mb, progress=False) as pool:
      return synthesis.weak_sample(world.train, os.path.join(world.root, 'database'),
                                   smoke.weak_sampler(world, config.seed), execute=pool.map,
                                   n_samples=config.dpo.n_samples, pairs_per_question=config.dpo.pairs_per_question,
                                   seed=config.seed)
  if not config.dpo.pairs:
    raise ValueError('set --config.dpo.pairs to a JSONL of preference pairs (synthesis.weak_sample: prompt, chosen, '
                     'rejected per line)')
  pairs = []
  with open(config.dpo.pairs, encoding='utf-8') as f:
    for n, line in enumerate(f, 1):
      if line.strip():
        pair = json.loads(line)
        if not all(isinstance(pair.get(k), str) for k in ('prompt', 'chosen', 'rejected')):
          raise ValueError(f'{config.dpo.pairs}:{n}: a pair needs string fields prompt, chosen and rejected')
        pairs.append(pair)
  return pairs, {'pairs': len(pairs)}


def reference_logprobs(config: ml_collections.ConfigDict, model,
                       encoded: list[tuple[list[int], list[int], list[int]]]) -> np.ndarray:
  """[N, 2] float32: Σ log π_ref of each pair's chosen and rejected response (SQL + EOS) after its prompt, under the
  SFT checkpoint config.init_from, through mmjax.generate.score (the prompts are already fitted to seq_len)."""
  params, _ = read_workdir_params(str(config.init_from), train.abstract_params(model))
  prompts = [p for p, _, _ in encoded for _ in range(2)]
  continuations = [r for _, c, rj in encoded for r in (c, rj)]
  sums = [float(np.sum(lp)) for lp in score(model, params, prompts, continuations)]
  return np.asarray(sums, np.float32).reshape(-1, 2)


def prepared_pairs(config: ml_collections.ConfigDict, workdir: str, model, tok: train.Tokenizer) -> list[dict]:
  """The pairs with their token ids and reference log-probs: <workdir>/pairs.jsonl, built once (see module doc)."""
  path = os.path.join(workdir, PAIRS)
  if os.path.isfile(path):
    with open(path, encoding='utf-8') as f:
      return [json.loads(line) for line in f if line.strip()]
  pairs, stats = weak_pairs(config, workdir)
  kept, encoded, dropped = [], [], 0
  for pair in pairs:
    chosen = train.encode_pair(tok, pair['prompt'], pair['chosen'], config.seq_len)
    rejected = train.encode_pair(tok, pair['prompt'], pair['rejected'], config.seq_len)
    if chosen is None or rejected is None:
      dropped += 1
      continue
    room = config.seq_len - max(len(chosen[1]), len(rejected[1]))  # one prompt for both sides
    encoded.append((chosen[0][-room:], chosen[1], rejected[1]))
    kept.append(pair)
  if not kept:
    raise ValueError(f'no preference pairs to train on (weak sampling: {stats})')
  ref = reference_logprobs(config, model, encoded)
  out = [{**pair, 'prompt_ids': p, 'chosen_ids': c, 'rejected_ids': r, 'ref_chosen': float(lp[0]),
          'ref_rejected': float(lp[1])} for pair, (p, c, r), lp in zip(kept, encoded, ref)]
  train.write_stats(workdir, {'stage': 'dpo', **stats, 'kept': len(out), 'dropped_too_long': dropped,
                              'init_from': str(config.init_from)})
  with open(path + '.tmp', 'w', encoding='utf-8') as f:
    f.writelines(json.dumps(row) + '\n' for row in out)
  os.replace(path + '.tmp', path)
  return out


def dpo_loss_fn(model, beta: float, label_smoothing: float):
  """(params, batch, rng, step) -> (DPO / cDPO loss, metrics); batch tokens/mask [B, 2, T] (0 chosen, 1 rejected)
  and ref [B, 2]. One forward over the [2B, T] reshape."""
  def loss_fn(params, batch, rng, step):
    del rng, step
    tokens = batch['tokens']
    b, _, t = tokens.shape
    logits = model.apply({'params': params}, tokens.reshape(2 * b, t)).logits.reshape(b, 2, t, -1)
    logp = sequence_logprobs(logits, tokens, batch['mask'])
    return dpo_loss(logp[:, 0], logp[:, 1], batch['ref'][:, 0], batch['ref'][:, 1], beta=beta,
                    label_smoothing=label_smoothing)
  return loss_fn


def dpo_experiment(config: ml_collections.ConfigDict, workdir: str) -> Experiment:
  """The DPO Experiment (see the module docstring); needs --config.init_from = the SFT workdir."""
  if not config.init_from or not isinstance(config.init_from, str):
    raise ValueError('stage=dpo: set --config.init_from to the SFT workdir (the policy and the reference start '
                     'from its latest checkpoint)')
  os.makedirs(workdir, exist_ok=True)
  tok = train.tokenizer_for(config, workdir)
  model = train.build_model(config, tok.vocab_size)
  pairs = prepared_pairs(config, workdir, model, tok)
  packed = pack_pairs([p['prompt_ids'] for p in pairs], [p['chosen_ids'] for p in pairs],
                      [p['rejected_ids'] for p in pairs], config.seq_len, tok.pad_id)
  ref = np.asarray([[p['ref_chosen'], p['ref_rejected']] for p in pairs], np.float32)
  rows = [{'tokens': packed['tokens'][i], 'mask': packed['mask'][i], 'ref': ref[i]} for i in range(len(pairs))]
  train_data = make_pipeline(train.ListSource(rows), global_batch_size=config.batch_size, seed=config.seed)
  return Experiment(init_params=train.init_fn(model),
                    loss_fn=dpo_loss_fn(model, config.dpo.beta, config.dpo.label_smoothing), train_data=train_data)

