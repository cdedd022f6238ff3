"""The two trained models of the arithmetic task, both through the shared trainer (`train_and_evaluate`):

- the policy: a Qwen2 decoder fine-tuned on the reference solutions (next-token cross-entropy on the solution
  tokens only);
- the PRM: a `RewardModel` started from the policy's weights, trained with BCE on the Monte-Carlo soft labels read
  at each step's last token (the delimiter, or the final line's last token).

Early stopping: the trainer has no early-stopping hook, so `BestValidation` (an `Experiment` hook) computes the
validation BCE on the held-out questions every prm.eval_every steps and writes the params of the best step so far to
`best_params.msgpack` beside the checkpoints; later stages load that file, never the last checkpoint.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import serialization

from experiments.test_time_compute import arithmetic
from experiments.test_time_compute.labels import Labelled
from mmjax.data import make_pipeline
from mmjax.models.prm import RewardModel, bce_loss, from_decoder
from mmjax.models.qwen2 import Qwen2Config, Qwen2ForCausalLM
from mmjax.train import Context, Experiment, train_and_evaluate

BEST = 'best_params.msgpack'


def policy_model(config: ml_collections.ConfigDict) -> Qwen2ForCausalLM:
  m = config.model
  return Qwen2ForCausalLM(Qwen2Config(
      vocab_size=arithmetic.VOCAB, hidden_size=m.hidden_size, intermediate_size=m.intermediate_size,
      num_hidden_layers=m.num_layers, num_attention_heads=m.num_heads, num_key_value_heads=m.num_kv_heads,
      max_position_embeddings=4 * arithmetic.max_tokens(config.data.max_len), tie_word_embeddings=False))


def save_params(path: str, params: Any) -> None:
  with open(path, 'wb') as f:
    f.write(serialization.msgpack_serialize(jax.tree.map(np.asarray, jax.device_get(params))))


def load_params(path: str) -> Any:
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path} does not exist: run the stage that writes it first (see the README).')
  with open(path, 'rb') as f:
    return serialization.msgpack_restore(f.read())


def stage_config(config: ml_collections.ConfigDict, **trainer: Any) -> ml_collections.ConfigDict:
  """A copy of config with trainer keys replaced (keys of the optimiser as optim_<key>)."""
  c = ml_collections.ConfigDict(config.to_dict())
  for k, v in trainer.items():
    if k.startswith('optim_'):
      c.optim[k[len('optim_'):]] = v
    else:
      c[k] = v
  return c


def train_policy(config: ml_collections.ConfigDict, workdir: str, problems: Sequence[arithmetic.Problem]) -> Any:
  """SFT of the policy on the reference solutions; returns its params (numpy tree)."""
  model = policy_model(config)
  length = arithmetic.max_tokens(config.data.max_len)
  examples = [arithmetic.sft_example(p, length) for p in problems]

  def init_params(rng):
    return model.init(rng, jnp.zeros((1, length), jnp.int32))['params']

  def loss_fn(params, batch, rng, step):
    del rng, step
    logits = model.apply({'params': params}, batch['tokens']).logits[:, :-1]
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch['tokens'][:, 1:])
    mask = batch['loss_mask'][:, :-1]
    return jnp.sum(ce * mask) / jnp.maximum(jnp.sum(mask), 1.0), {}

  data = make_pipeline(examples, global_batch_size=config.batch_size, seed=config.seed)
  out = train_and_evaluate(config, workdir, Experiment(init_params=init_params, loss_fn=loss_fn, train_data=data))
  return jax.device_get(nn.unbox(out['state'].params))


def prm_examples(labelled: Sequence[Labelled], prompts: Sequence[str], length: int, max_steps: int
                 ) -> list[dict[str, np.ndarray]]:
  """PRM training rows: tokens int32 [length] (EOS-padded), lengths int32, ends int32 [max_steps] (each step's last
  token), targets float32 [max_steps] (soft labels), mask float32 [max_steps]."""
  rows = []
  for x in labelled:
    ids, ends = arithmetic.encode(prompts[x.question]), []
    for s in x.steps:
      ids += arithmetic.encode(s)
      ends.append(len(ids) - 1)
    if len(ids) > length or len(ends) > max_steps:
      continue  # longer than any reference solution: the policy rambled; such samples carry no signal here
    row = {'tokens': np.full(length, arithmetic.EOS, np.int32), 'lengths': np.int32(len(ids)),
           'ends': np.zeros(max_steps, np.int32), 'targets': np.zeros(max_steps, np.float32),
           'mask': np.zeros(max_steps, np.float32)}
    row['tokens'][:len(ids)] = ids
    row['ends'][:len(ends)], row['targets'][:len(ends)], row['mask'][:len(ends)] = ends, x.labels, 1.0
    rows.append(row)
  return rows


def _prm_loss(model: RewardModel, params: Any, batch: dict[str, jax.Array]) -> jax.Array:
  real = jnp.arange(batch['tokens'].shape[1])[None, :] < batch['lengths'][:, None]
  logits = model.apply({'params': params}, batch['tokens'], attention_mask=real, read_at=batch['ends'])
  return bce_loss(logits, batch['targets'], batch['mask'] > 0)


class BestValidation:
  """Trainer hook: every `every` steps, the BCE on the validation rows; the best step's params go to `path`."""

  def __init__(self, model: RewardModel, rows: Sequence[dict[str, np.ndarray]], every: int, path: str):
    self.every, self.path = every, path
    self.at_end = True
    self.batch = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
    self.loss = jax.jit(lambda p, b: _prm_loss(model, p, b))
    self.best, self.best_step = np.inf, -1

  def __call__(self, state, step: int, ctx: Context) -> dict[str, float]:
    del ctx
    loss = float(self.loss(state.params, self.batch))
    if loss < self.best:
      self.best, self.best_step = loss, step
      save_params(self.path, state.params)
    return {'val_bce': loss, 'best_val_bce': self.best, 'best_step': float(self.best_step)}


def train_prm(config: ml_collections.ConfigDict, workdir: str, train_rows: Sequence[dict[str, np.ndarray]],
              val_rows: Sequence[dict[str, np.ndarray]], policy_params: Any) -> tuple[Any, dict[str, float]]:
  """BCE training of the PRM from the policy's weights; returns (best-validation params, {best_step, val_bce})."""
  model = from_decoder(policy_model(config))
  length = train_rows[0]['tokens'].shape[0]

  def init_params(rng):
    boxed = model.init(rng, jnp.zeros((1, length), jnp.int32))['params']
    start = {**{k: v for k, v in policy_params.items() if k != 'lm_head'}}
    is_box = lambda x: isinstance(x, nn.meta.AxisMetadata)  # noqa: E731
    return {k: (v if k not in start else jax.tree.map(lambda b, w: b.replace_boxed(jnp.asarray(w)) if is_box(b)
                                                      else jnp.asarray(w), v, start[k], is_leaf=is_box))
            for k, v in boxed.items()}

  def loss_fn(params, batch, rng, step):
    del rng, step
    return _prm_loss(model, params, batch), {}

  p = config.prm
  stage = stage_config(config, total_steps=p.total_steps, batch_size=p.batch_size, optim_lr=p.lr, optim_b1=p.b1,
                       optim_b2=p.b2, optim_warmup_steps=p.warmup_steps, ckpt_every=p.total_steps)
  os.makedirs(workdir, exist_ok=True)
  hook = BestValidation(model, val_rows, p.eval_every, os.path.join(workdir, BEST))
  data = make_pipeline(list(train_rows), global_batch_size=p.batch_size, seed=config.seed)
  train_and_evaluate(stage, workdir, Experiment(init_params=init_params, loss_fn=loss_fn, train_data=data,
                                                hooks=(hook,)))
  return load_params(hook.path), {'best_step': hook.best_step, 'val_bce': hook.best}
