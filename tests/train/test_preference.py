"""DPO / cDPO (mmjax.train.preference): log 2 at initialisation, gradients against finite differences, cDPO's
limits, and prompt masking of the sequence log-probabilities."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.train import preference

B, T, V = 3, 7, 11


def _batch(seed=0, dtype=np.float32):
  """Random logits [B, 2, T, V] and tokens [B, 2, T] of B pairs, with prompt and total lengths [B, 2]."""
  rng = np.random.default_rng(seed)
  logits = rng.normal(size=(B, 2, T, V)).astype(dtype)
  tokens = rng.integers(0, V, size=(B, 2, T))
  prompt_lengths = rng.integers(1, 4, size=(B, 2))
  lengths = prompt_lengths + rng.integers(1, T - 3, size=(B, 2))
  return logits, tokens, prompt_lengths, lengths


def _loss_from_logits(logits, tokens, mask, ref, beta, eps):
  logps = preference.sequence_logprobs(logits, tokens, mask)
  return preference.dpo_loss(logps[:, 0], logps[:, 1], ref[:, 0], ref[:, 1], beta=beta, label_smoothing=eps)


def test_masked_sum_equals_hand_sum():
  logits, tokens, prompt_lengths, lengths = _batch()
  mask = preference.response_mask(jnp.asarray(prompt_lengths), jnp.asarray(lengths), T)
  got = np.asarray(preference.sequence_logprobs(jnp.asarray(logits), jnp.asarray(tokens), mask))
  assert got.shape == (B, 2)
  for b, side in np.ndindex(B, 2):
    want = 0.0
    for t in range(prompt_lengths[b, side], lengths[b, side]):
      row = logits[b, side, t - 1].astype(np.float64)
      want += row[tokens[b, side, t]] - (row.max() + math.log(np.exp(row - row.max()).sum()))
    np.testing.assert_allclose(got[b, side], want, rtol=1e-5, atol=1e-5)


def test_prompt_and_padding_tokens_contribute_nothing():
  logits, tokens, prompt_lengths, lengths = _batch(1)
  mask = preference.response_mask(jnp.asarray(prompt_lengths), jnp.asarray(lengths), T)
  base = preference.sequence_logprobs(jnp.asarray(logits), jnp.asarray(tokens), mask)
  # Changing what lies before the last prompt token's prediction, or after the end, changes nothing.
  noisy, other = logits.copy(), tokens.copy()
  for b, side in np.ndindex(B, 2):
    p, n = prompt_lengths[b, side], lengths[b, side]
    noisy[b, side, :p - 1] = np.nan
    noisy[b, side, n:] = 1e4
    other[b, side, :p] = (tokens[b, side, :p] + 1) % V
  got = preference.sequence_logprobs(jnp.asarray(noisy), jnp.asarray(other), mask)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(base))


def test_loss_is_log2_at_initialisation():
  logits, tokens, prompt_lengths, lengths = _batch(2)
  mask = preference.response_mask(jnp.asarray(prompt_lengths), jnp.asarray(lengths), T)
  ref = preference.sequence_logprobs(jnp.asarray(logits), jnp.asarray(tokens), mask)  # policy == reference
  for eps in (0.0, 0.1):
    loss, metrics = _loss_from_logits(jnp.asarray(logits), jnp.asarray(tokens), mask, ref, 0.1, eps)
    np.testing.assert_allclose(float(loss), math.log(2), rtol=1e-6)
    assert float(metrics['reward_accuracy']) == 0.0 and float(metrics['reward_margin']) == 0.0


def test_gradient_matches_finite_differences():
  with jax.enable_x64(True):
    logits, tokens, prompt_lengths, lengths = _batch(3, np.float64)
    mask = preference.response_mask(jnp.asarray(prompt_lengths), jnp.asarray(lengths), T)
    ref = jnp.asarray(np.random.default_rng(4).normal(size=(B, 2)) - 8.0)
    for eps in (0.0, 0.2):
      f = jax.jit(lambda x, eps=eps: _loss_from_logits(x, jnp.asarray(tokens), mask, ref, 0.5, eps)[0])
      grad = np.asarray(jax.grad(f)(jnp.asarray(logits)))
      assert grad.dtype == np.float64 and np.abs(grad).max() > 1e-3
      rng = np.random.default_rng(5)
      for _ in range(3):
        direction = rng.normal(size=logits.shape)
        h = 1e-6
        fd = (float(f(jnp.asarray(logits + h * direction))) - float(f(jnp.asarray(logits - h * direction)))) / (2 * h)
        np.testing.assert_allclose(np.sum(grad * direction), fd, rtol=1e-6, atol=1e-9)


def test_gradient_signs_and_cdpo_half_cancels():
  zeros = jnp.zeros(B)
  grads = jax.grad(lambda w, l: preference.dpo_loss(w, l, zeros, zeros)[0], argnums=(0, 1))(zeros, zeros)
  assert np.all(np.asarray(grads[0]) < 0) and np.all(np.asarray(grads[1]) > 0)
  half = jax.grad(lambda w: preference.dpo_loss(w, zeros, zeros, zeros, label_smoothing=0.5)[0])(zeros)
  np.testing.assert_allclose(np.asarray(half), 0.0, atol=1e-7)


def test_cdpo_with_zero_smoothing_equals_dpo_and_metrics():
  rng = np.random.default_rng(6)
  w, l, rw, rl = (jnp.asarray(rng.normal(size=8), jnp.float32) for _ in range(4))
  dpo, m = preference.dpo_loss(w, l, rw, rl, beta=0.3)
  cdpo, _ = preference.dpo_loss(w, l, rw, rl, beta=0.3, label_smoothing=0.0)
  assert float(dpo) == float(cdpo)
  margins = 0.3 * ((np.asarray(w) - np.asarray(rw)) - (np.asarray(l) - np.asarray(rl)))
  np.testing.assert_allclose(float(dpo), np.mean(np.log1p(np.exp(-margins))), rtol=1e-5)
  smoothed, _ = preference.dpo_loss(w, l, rw, rl, beta=0.3, label_smoothing=0.1)
  want = np.mean(0.9 * np.log1p(np.exp(-margins)) + 0.1 * np.log1p(np.exp(margins)))
  np.testing.assert_allclose(float(smoothed), want, rtol=1e-5)
  np.testing.assert_allclose(float(m['reward_accuracy']), np.mean(margins > 0), rtol=1e-6)
  np.testing.assert_allclose(float(m['reward_margin']), margins.mean(), rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match='label_smoothing'):
    preference.dpo_loss(w, l, rw, rl, label_smoothing=0.7)


def test_weights_leave_rows_out_of_the_means():
  rng = np.random.default_rng(7)
  w, l, rw, rl = (jnp.asarray(rng.normal(size=8), jnp.float32) for _ in range(4))
  keep = np.array([1, 0, 1, 1, 0, 1, 1, 0], np.float32)
  loss, m = preference.dpo_loss(w, l, rw, rl, beta=0.3, label_smoothing=0.1, weights=jnp.asarray(keep))
  rows = keep > 0
  sub, sub_m = preference.dpo_loss(w[rows], l[rows], rw[rows], rl[rows], beta=0.3, label_smoothing=0.1)
  np.testing.assert_allclose(float(loss), float(sub), rtol=1e-6)
  for k in sub_m:
    np.testing.assert_allclose(float(m[k]), float(sub_m[k]), rtol=1e-6, atol=1e-7)
  ones, _ = preference.dpo_loss(w, l, rw, rl, beta=0.3, weights=jnp.ones(8))
  np.testing.assert_allclose(float(ones), float(preference.dpo_loss(w, l, rw, rl, beta=0.3)[0]), rtol=1e-6)
  none, _ = preference.dpo_loss(w, l, rw, rl, weights=jnp.zeros(8))  # no pair in the batch: 0, not NaN
  assert float(none) == 0.0


def test_pack_pairs_layout_and_bigram_logprobs():
  rng = np.random.default_rng(7)
  table = rng.normal(size=(V, V)).astype(np.float32)  # a bigram decoder: logits[t] = table[tokens[t]]
  prompts = [[1, 2, 3, 4, 5], [6]]
  chosen, rejected = [[7, 8], [9, 10, 1]], [[2], [3, 4, 5, 6]]
  batch = preference.pack_pairs(prompts, chosen, rejected, seq_len=6, pad_id=0)
  assert batch['tokens'].shape == batch['mask'].shape == (2, 2, 6) and batch['tokens'].dtype == np.int32
  np.testing.assert_array_equal(batch['tokens'][0, 0], [2, 3, 4, 5, 7, 8])  # the prompt's oldest tokens dropped
  np.testing.assert_array_equal(batch['mask'][1, 1], [0, 1, 1, 1, 1, 0])
  flat = jnp.asarray(batch['tokens']).reshape(4, 6)  # the policy's [2B, T] forward, reshaped back
  logits = jnp.asarray(table)[flat].reshape(2, 2, 6, V)
  got = np.asarray(preference.sequence_logprobs(logits, jnp.asarray(batch['tokens']), jnp.asarray(batch['mask'])))
  logp = table - np.log(np.exp(table.astype(np.float64)).sum(-1, keepdims=True))
  for b, side in np.ndindex(2, 2):
    prompt, response = prompts[b], (chosen, rejected)[side][b]
    seq = prompt + response
    want = sum(logp[seq[t - 1], seq[t]] for t in range(len(prompt), len(seq)))
    np.testing.assert_allclose(got[b, side], want, rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match='pair 1 \\(rejected\\)'):
    preference.pack_pairs(prompts, chosen, rejected, seq_len=4)

