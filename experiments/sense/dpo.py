"""SENSE stage 2: DPO / cDPO on execution-labelled (chosen, rejected) SQL pairs, through the shared trainer.

The policy starts from the SFT workdir (--config.init_from, the trainer's own start-from key) and the frozen
reference is the same checkpoint: its log-probabilities of every pair's chosen and rejected SQL (+ EOS) are
computed once, before training, through `mmjax.generate.score`, and stored with the pairs in <workdir>/pairs.jsonl.
So no reference model lives in memory while training and the trainer needs no frozen subtree: the default step
with a loss_fn that reads `ref` from the batch. A rerun (resume) reads pairs.jsonl back instead of rebuilding it.

Pairs: variant=smoke samples a weak model on the smoke world's training questions through `synthesis.weak_sample`
(executed in the sandboxed pool and labelled against the gold): config.dpo.pairs_from = 'mutator' is the gold-SQL
mutator of experiments/sense/smoke.py; 'policy' is the SFT checkpoint itself (`policy_sampler`: n_samples at
config.dpo.temperature, plus the gold SQL as one more candidate when config.dpo.gold_chosen). The paper's weak model
is itself SFT-trained on the same data, so it shares the strong data's blind spots; the SFT model's own samples are
the smoke's faithful stand-in for it. Otherwise config.dpo.pairs is a JSONL of such pairs (synthesis.weak_sample's
dicts, each with its prompt).

The loss is `mmjax.train.preference.dpo_loss` (β = config.dpo.beta, cDPO's ε = config.dpo.label_smoothing) over
summed response log-probs, plus config.dpo.nll_weight times the chosen SQL's mean per-token NLL (RPO / "DPO+NLL",
Pang et al. 2024; our departure: SENSE trains plain DPO / cDPO, i.e. nll_weight = 0). With config.dpo.anchor_weight
> 0 (smoke, also ours) the questions that give no pair (every kept sample right) add anchors: rows of their most
frequent right SQL with the DPO part masked (batch `pref` 0), adding anchor_weight times their mean token NLL, so
that DPO does not break what the SFT already gets right. Reward accuracy, margin, the chosen / rejected rewards,
chosen_nll (and anchor_nll) are logged beside it. At step 0 the policy equals the reference, so the DPO part of
the loss is log 2.
"""
from __future__ import annotations

import json
import os

import jax.numpy as jnp
import ml_collections
import numpy as np

from experiments.sense import smoke, synthesis, train
from mmjax.data import make_pipeline
from mmjax.generate import generate, score
from mmjax.train import Experiment
from mmjax.train.preference import dpo_loss, pack_pairs, sequence_logprobs, weighted_mean
from mmjax.weights.workdir import read_workdir_params

PAIRS = 'pairs.jsonl'
PAIRS_FROM = ('mutator', 'policy')


def policy_sampler(config: ml_collections.ConfigDict, model, params, tok: train.Tokenizer) -> synthesis.WeakSampler:
  """A WeakSampler over the SFT checkpoint: n samples per prompt at config.dpo.temperature (seed config.seed), each
  reduced to its SQL, plus the question's gold SQL as one more candidate when config.dpo.gold_chosen (so a question
  whose samples all share a blind spot still gets pairs that point at the gold). The sampling streams are numbered
  by the prompt's place in the call, and weak_sample calls it per batch of 64 questions, so question k and k + 64
  draw from the same stream (over different prompts); the README's numbers were measured so."""
  def sample(examples, prompts, n):
    ids = [tok.encode(p) or [tok.pad_id] for p in prompts]
    completions = generate(model, params, ids, max_new_tokens=config.max_new_tokens, temperature=config.dpo.temperature,
                           num_samples=n, eos_token_id=tok.eos_id, seed=config.seed, truncate='left')
    out = [[synthesis.extract_sql(tok.decode(c.tokens)) for c in row] for row in completions]
    return [s + [e.sql] for s, e in zip(out, examples)] if config.dpo.gold_chosen else out
  return sample


def weak_pairs(config: ml_collections.ConfigDict, workdir: str, model=None,
               tok: train.Tokenizer | None = None) -> tuple[list[dict], dict]:
  """(pairs, stats): the smoke's weak samples (config.dpo.pairs_from: the mutator's, or with the model and
  tokenizer the SFT policy's own) labelled by execution, or the pairs of config.dpo.pairs."""
  if config.variant == 'smoke':
    from mmjax.evals.sql import SqlPool  # starts worker processes
    world = train.smoke_world(config, workdir)
    source = config.dpo.get('pairs_from', 'mutator')
    if source not in PAIRS_FROM:
      raise ValueError(f"config.dpo.pairs_from must be one of {', '.join(PAIRS_FROM)}, got {source!r}")
    if source == 'policy':
      if model is None or tok is None:
        raise ValueError("dpo.pairs_from='policy' samples the SFT checkpoint: pass the model and its tokenizer")
      params, _ = read_workdir_params(str(config.init_from), train.abstract_params(model))
      sampler = policy_sampler(config, model, params, tok)
    else:
      sampler = smoke.weak_sampler(world, config.seed)
    with SqlPool(config.workers or None, timeout_s=config.timeout_s, max_rows=config.max_rows,
                 memory_mb=config.memory_mb, progress=False) as pool:
      return synthesis.weak_sample(world.train, os.path.join(world.root, 'database'), sampler, execute=pool.map,
                                   n_samples=config.dpo.n_samples, pairs_per_question=config.dpo.pairs_per_question,
                                   seed=config.seed, rejected_must_run=config.dpo.get('rejected_must_run', False),
                                   anchors=config.dpo.get('anchor_weight', 0.0) > 0)
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
  pairs, stats = weak_pairs(config, workdir, model, tok)
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
  # an anchor (chosen = rejected, DPO part masked) needs no reference log-probs
  scored = [i for i, pair in enumerate(kept) if not pair.get('anchor')]
  ref = np.zeros((len(kept), 2), np.float32)
  if scored:
    ref[scored] = reference_logprobs(config, model, [encoded[i] for i in scored])
  out = [{**pair, 'prompt_ids': p, 'chosen_ids': c, 'rejected_ids': r, 'ref_chosen': float(lp[0]),
          'ref_rejected': float(lp[1])} for pair, (p, c, r), lp in zip(kept, encoded, ref)]
  train.write_stats(workdir, {'stage': 'dpo', **stats, 'kept': len(out), 'dropped_too_long': dropped,
                              'init_from': str(config.init_from)})
  with open(path + '.tmp', 'w', encoding='utf-8') as f:
    f.writelines(json.dumps(row) + '\n' for row in out)
  os.replace(path + '.tmp', path)
  return out


def dpo_loss_fn(model, beta: float, label_smoothing: float, nll_weight: float = 0.0, anchor_weight: float = 0.0):
  """(params, batch, rng, step) -> (loss, metrics); batch tokens/mask [B, 2, T] (0 chosen, 1 rejected), ref [B, 2]
  and optionally pref [B] (1 a preference pair, 0 an anchor; all pairs when absent). One forward over the [2B, T]
  reshape. The loss is DPO / cDPO over the pairs + nll_weight * their chosen SQL's mean per-token NLL +
  anchor_weight * the anchors' mean per-token NLL (config.dpo.anchor_weight; each mean over its own rows)."""
  def loss_fn(params, batch, rng, step):
    del rng, step
    tokens = batch['tokens']
    b, _, t = tokens.shape
    logits = model.apply({'params': params}, tokens.reshape(2 * b, t)).logits.reshape(b, 2, t, -1)
    logp = sequence_logprobs(logits, tokens, batch['mask'])
    # sequence_logprobs scores token t from position t - 1, so the response mask from position 1 counts its tokens
    n_chosen = jnp.maximum(jnp.sum(batch['mask'][:, 0, 1:], axis=-1), 1.0)
    nll = -logp[:, 0] / n_chosen
    w = batch.get('pref')  # anchors: 0, left out of the DPO part
    loss, metrics = dpo_loss(logp[:, 0], logp[:, 1], batch['ref'][:, 0], batch['ref'][:, 1], beta=beta,
                             label_smoothing=label_smoothing, weights=w)
    if w is None:
      metrics['chosen_nll'] = jnp.mean(nll)
      return loss + nll_weight * metrics['chosen_nll'], metrics
    metrics['chosen_nll'] = weighted_mean(nll, w)
    metrics['anchor_nll'] = weighted_mean(nll, 1.0 - w)
    return loss + nll_weight * metrics['chosen_nll'] + anchor_weight * metrics['anchor_nll'], metrics
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
  anchor_weight = config.dpo.get('anchor_weight', 0.0)
  if anchor_weight > 0:  # anchors: NLL rows with the DPO part masked off (pref 0)
    for row, pair in zip(rows, pairs):
      row['pref'] = np.float32(0.0 if pair.get('anchor') else 1.0)
  train_data = make_pipeline(train.ListSource(rows), global_batch_size=config.batch_size, seed=config.seed)
  return Experiment(init_params=train.init_fn(model),
                    loss_fn=dpo_loss_fn(model, config.dpo.beta, config.dpo.label_smoothing,
                                        config.dpo.get('nll_weight', 0.0), anchor_weight), train_data=train_data)

