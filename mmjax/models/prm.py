"""Reward models on the decoder family: a scalar head over the last hidden states, read where a score belongs.

A process reward model (PRM, Snell et al. 2024 §2; Math-Shepherd) reads its head at the last token of every step
(the step delimiter): sigmoid(logit) estimates the chance that the solution so far still reaches the right answer.
An outcome reward model (ORM, the revision verifier) reads the same head once, at the last token of the sequence.
Both are trained with binary cross-entropy on soft targets (`bce_loss`); a solution's step scores reduce to one by
`aggregate` ('last' is the paper's choice, 'min' and 'prod' the alternatives).

`RewardModel` is a `DecoderForCausalLM` (Qwen2 or Llama configuration) whose forward pass stops at the final norm
and applies `reward_head` (a Dense E -> 1 with bias) instead of the LM head; its parameter tree is the decoder's
without lm_head, plus reward_head/{kernel [E, 1], bias [1]}, so `from_decoder_params` starts one from a policy.
"""
from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from mmjax.models.decoder import INIT, DecoderForCausalLM
from mmjax.nn.linear import Dense

AGGREGATIONS = ('last', 'min', 'prod')


class RewardModel(DecoderForCausalLM):
  """Token ids -> reward logits (pre-sigmoid) at chosen positions; fields as in `DecoderForCausalLM`."""

  def setup(self):
    super().setup()  # the LM head it declares is never called, so it holds no parameters
    self.reward_head = Dense(1, ('embed', None), dtype=self.dtype, param_dtype=self.param_dtype,
                             kernel_init=INIT)

  def __call__(self, input_ids: jax.Array, *, attention_mask: jax.Array | None = None,
               read_at: jax.Array | None = None) -> jax.Array:
    """input_ids int [B, S], right-padded with attention_mask [B, S] (1 = real; default all real).

    read_at: int [B, K] positions whose logits to return (a step's last token for a PRM, the sequence's last for
    an ORM); default all S. Returns float32 logits [B, K] (or [B, S]); meaningless at padding positions.
    """
    real = jnp.ones(input_ids.shape, bool) if attention_mask is None else attention_mask.astype(bool)
    x = self.embed(input_ids)
    self._check_shapes(x, attention_mask, None, None, None)
    positions = jnp.maximum(jnp.cumsum(real.astype(jnp.int32), axis=1) - 1, 0)
    x, _, _ = self._layers(x, positions, None, None, None, real.astype(jnp.int32))
    if read_at is not None:
      x = jnp.take_along_axis(x, read_at[:, :, None].astype(jnp.int32), axis=1)
    return self.reward_head(self.norm(x))[..., 0].astype(jnp.float32)


def from_decoder(module: DecoderForCausalLM) -> RewardModel:
  """The reward model of a decoder module's configuration and dtypes."""
  return RewardModel(module.config, dtype=module.dtype, param_dtype=module.param_dtype, attn_impl=module.attn_impl,
                     remat_policy=module.remat_policy)


def from_decoder_params(model: RewardModel, decoder_params: dict[str, Any], rng: jax.Array) -> dict[str, Any]:
  """Reward-model parameters (unboxed): the decoder's (e.g. the policy's from `from_pretrained`, whose LM head is
  dropped) and a freshly initialised head."""
  head = Dense(1, ('embed', None), dtype=model.dtype, param_dtype=model.param_dtype, kernel_init=INIT)
  hidden = jnp.zeros((1, model.config.hidden_size), model.param_dtype)
  body = {k: v for k, v in decoder_params.items() if k != 'lm_head'}
  return {**body, 'reward_head': nn.unbox(head.init(rng, hidden)['params'])}


@functools.partial(jax.jit, static_argnames=('model',))
def step_scores(model: RewardModel, params: Any, tokens: jax.Array, lengths: jax.Array, ends: jax.Array
                ) -> jax.Array:
  """sigmoid of the reward logits float32 [B, K] at positions ends int [B, K] of right-padded tokens [B, S]
  (lengths [B] real tokens each). A PRM passes each step's last position; an ORM passes lengths - 1 as [B, 1]."""
  mask = jnp.arange(tokens.shape[1])[None, :] < lengths[:, None]
  return jax.nn.sigmoid(model.apply({'params': params}, tokens, attention_mask=mask, read_at=ends))


def aggregate(scores: jax.Array, mask: jax.Array, how: str = 'last') -> jax.Array:
  """One score per solution from its step scores [B, K] in (0, 1), mask [B, K] (True = a step; steps first):
  'last' (the PRM value at the final step), 'min' or 'prod'. A row without steps gets 1 ('min', 'prod') or 0."""
  if how not in AGGREGATIONS:
    raise ValueError(f'unknown aggregation {how!r}; choose one of {AGGREGATIONS}.')
  scores, mask = jnp.asarray(scores, jnp.float32), jnp.asarray(mask, bool)
  if how == 'min':
    return jnp.min(jnp.where(mask, scores, 1.0), axis=-1)
  if how == 'prod':
    return jnp.prod(jnp.where(mask, scores, 1.0), axis=-1)
  last = jnp.maximum(jnp.sum(mask, axis=-1) - 1, 0)
  return jnp.where(jnp.any(mask, axis=-1), jnp.take_along_axis(scores, last[:, None], axis=-1)[:, 0], 0.0)


def bce_loss(logits: jax.Array, targets: jax.Array, mask: jax.Array) -> jax.Array:
  """Mean binary cross-entropy of reward logits [B, K] against soft targets [B, K] in [0, 1] (the Monte-Carlo
  fraction of rollouts that reach the right answer) over the positions where mask [B, K] is True."""
  losses = optax.sigmoid_binary_cross_entropy(logits.astype(jnp.float32), targets.astype(jnp.float32))
  mask = mask.astype(jnp.float32)
  return jnp.sum(losses * mask) / jnp.maximum(jnp.sum(mask), 1.0)
