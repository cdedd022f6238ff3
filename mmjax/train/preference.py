"""Preference-optimisation objectives (DPO, cDPO) over sequence log-probabilities, for any decoder's loss_fn.

Layout (the spec of SENSE, arXiv 2408.03256, section 2, and Rafailov et al. 2023): a sequence's log-probability is
the sum of its response tokens' log-probabilities, the prompt masked out and no length normalisation;
  Δ = β·[(log π_θ(y_w|x) − log π_ref(y_w|x)) − (log π_θ(y_l|x) − log π_ref(y_l|x))],
  DPO:  L = −mean log σ(Δ);   cDPO (label smoothing ε):  L = −mean[(1 − ε)·log σ(Δ) + ε·log σ(−Δ)].
The reference log-probabilities are inputs (precomputed once, e.g. with `mmjax.generate.score`), so no reference
model lives in memory while training. A batch holds B pairs as [B, 2, T] (`pack_pairs`; index 0 chosen, 1
rejected), so sharding the batch over devices never separates a pair; a DPO `loss_fn` runs the policy once on the
[2B, T] reshape, reshapes the logits back to [B, 2, T, V] and calls `sequence_logprobs` ([B, 2]) then `dpo_loss`.
The jax functions are pure and jit-safe.
"""
from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def response_mask(prompt_lengths: jax.Array, lengths: jax.Array, seq_len: int) -> jax.Array:
  """[..., T] float32: 1 at the response positions prompt_lengths <= t < lengths of each row, else 0.

  prompt_lengths, lengths: [...] int, in tokens (lengths counts prompt + response; positions past it are padding).
  """
  t = jnp.arange(seq_len)
  return ((t >= prompt_lengths[..., None]) & (t < lengths[..., None])).astype(jnp.float32)


def sequence_logprobs(logits: jax.Array, tokens: jax.Array, mask: jax.Array) -> jax.Array:
  """[...]: Σ_t mask[..., t]·log p(tokens[..., t] | tokens[..., :t]) from a decoder's next-token logits.

  logits: [..., T, V] from the decoder fed tokens [..., T], so logits[..., t, :] predicts tokens[..., t + 1];
  mask: [..., T] marks the response tokens (its first position is ignored: token 0 has no prediction). The
  log-softmax is taken in float32 (float64 for float64 logits) whatever the logits' dtype. Prompt and padding
  positions contribute exactly nothing, not even a NaN: masked terms are selected away, not multiplied by 0.
  """
  logp = jax.nn.log_softmax(logits[..., :-1, :].astype(jnp.promote_types(logits.dtype, jnp.float32)), axis=-1)
  picked = jnp.take_along_axis(logp, tokens[..., 1:, None].astype(jnp.int32), axis=-1)[..., 0]
  return jnp.sum(jnp.where(mask[..., 1:] > 0, picked, 0.0), axis=-1)


def dpo_margins(policy_chosen: jax.Array, policy_rejected: jax.Array, ref_chosen: jax.Array,
                ref_rejected: jax.Array, beta: float) -> jax.Array:
  """[B] Δ = β·[(π_w − ref_w) − (π_l − ref_l)] from [B] sequence log-probabilities (nats)."""
  return beta * ((policy_chosen - ref_chosen) - (policy_rejected - ref_rejected))


def weighted_mean(x: jax.Array, weights: jax.Array) -> jax.Array:
  """sum(w · x) / max(sum(w), 1): a mean over the rows with weight 1, 0 when no row has weight."""
  return jnp.sum(weights * x) / jnp.maximum(jnp.sum(weights), 1.0)


def dpo_loss(policy_chosen: jax.Array, policy_rejected: jax.Array, ref_chosen: jax.Array, ref_rejected: jax.Array,
             *, beta: float = 0.1, label_smoothing: float = 0.0,
             weights: jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """(loss, metrics) of DPO (label_smoothing ε = 0) or cDPO (0 < ε <= 0.5) over a batch of B pairs.

  Inputs are [B] sequence log-probabilities (`sequence_logprobs`) of the chosen (y_w) and rejected (y_l) responses
  under the policy and the frozen reference; beta and label_smoothing are Python floats (from the config).
  weights: optional [B] per-pair weights of the loss and metric means (0 leaves a row out, e.g. a batch row that is
  not a preference pair); the means are then `weighted_mean`.
  Metrics, each a scalar: reward_accuracy (fraction of pairs with Δ > 0), reward_margin (mean Δ), chosen_reward
  and rejected_reward (means of β·(π − ref) over y_w and y_l).
  """
  if not 0.0 <= label_smoothing <= 0.5:
    raise ValueError(f'dpo_loss: label_smoothing (cDPO ε) must lie in [0, 0.5], got {label_smoothing}')
  def mean(x):
    return jnp.mean(x) if weights is None else weighted_mean(x, weights)
  margins = dpo_margins(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta)
  per_pair = -(1.0 - label_smoothing) * jax.nn.log_sigmoid(margins) - label_smoothing * jax.nn.log_sigmoid(-margins)
  metrics = {
      'reward_accuracy': mean((margins > 0).astype(jnp.float32)),
      'reward_margin': mean(margins),
      'chosen_reward': mean(beta * (policy_chosen - ref_chosen)),
      'rejected_reward': mean(beta * (policy_rejected - ref_rejected)),
  }
  return mean(per_pair), metrics


def pack_pairs(prompts: Sequence[Sequence[int]], chosen: Sequence[Sequence[int]], rejected: Sequence[Sequence[int]],
               seq_len: int, pad_id: int = 0) -> dict[str, np.ndarray]:
  """The host-side batch of B preference pairs sharing their prompt x: row [b, 0] is x + y_w, row [b, 1] x + y_l,
  each right-padded with pad_id.

  Returns tokens [B, 2, T] int32 and mask [B, 2, T] float32 (1 on response tokens). A row longer than seq_len loses
  its prompt's oldest tokens (as `mmjax.generate.score(truncate='left')`, so precomputed reference log-probs see
  the same context); a response that leaves no room for one prompt token is an error naming the pair.
  """
  if not len(prompts) == len(chosen) == len(rejected):
    raise ValueError(f'pack_pairs: got {len(prompts)} prompts, {len(chosen)} chosen and {len(rejected)} rejected')
  tokens = np.full((len(prompts), 2, seq_len), pad_id, np.int32)
  mask = np.zeros((len(prompts), 2, seq_len), np.float32)
  for b, prompt in enumerate(prompts):
    for side, response in enumerate((list(chosen[b]), list(rejected[b]))):
      if not len(prompt) or len(response) >= seq_len:
        raise ValueError(f'pack_pairs: pair {b} ({("chosen", "rejected")[side]}) has a {len(prompt)}-token prompt '
                         f'and a {len(response)}-token response; seq_len {seq_len} must hold the response and at '
                         'least one prompt token')
      context = list(prompt)[max(0, len(prompt) + len(response) - seq_len):]
      tokens[b, side, :len(context) + len(response)] = context + response
      mask[b, side, len(context):len(context) + len(response)] = 1.0
  return {'tokens': tokens, 'mask': mask}
