"""Parameterisations, the MSE losses with min-SNR-γ weighting, and the learned-range VB term (against a NumPy
re-derivation of guided-diffusion's `_vb_terms_bpd`)."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.diffusion import parameterization as P
from mmjax.diffusion.losses import DiffusionTables, learned_range_vb, mse_loss
from mmjax.diffusion.schedules import squaredcos_cap_v2_betas
from tests.numerics import assert_close

T = 1000
BETAS = squaredcos_cap_v2_betas(T)
TABLES = DiffusionTables.from_betas(BETAS)


def _data(seed=0):
  rng = np.random.default_rng(seed)
  x0 = np.clip(rng.standard_normal((4, 3, 3, 2)), -1, 1).astype(np.float32)
  noise = rng.standard_normal(x0.shape).astype(np.float32)
  t = np.array([0, 1, 500, 999])
  return x0, noise, t


@pytest.mark.parametrize('prediction_type', P.PREDICTION_TYPES)
def test_parameterisations_invert_each_other(prediction_type):
  x0, noise, _ = _data()
  alpha_bar = jnp.array([0.9, 0.5, 0.1, 0.01]).reshape(-1, 1, 1, 1)
  x_t = P.add_noise(x0, noise, alpha_bar)
  out = P.target(prediction_type, x0, noise, alpha_bar)
  assert_close(P.x0_and_eps(prediction_type, out, x_t, alpha_bar), (x0, noise), tol=1e-5)


def test_min_snr_weighting_is_the_same_x0_loss_in_every_parameterisation():
  x0, noise, t = _data()
  t = np.array([30, 200, 500, 900])  # SNR on both sides of γ
  alpha_bar = np.asarray(TABLES.alpha_bar)[t].reshape(-1, 1, 1, 1)
  x_t = P.add_noise(x0, noise, alpha_bar)
  predicted_x0 = x0 + 0.1 * np.random.default_rng(1).standard_normal(x0.shape).astype(np.float32)
  predicted_eps = P.eps_from_x0(x_t, predicted_x0, alpha_bar)
  outputs = {'epsilon': predicted_eps, 'sample': predicted_x0,
             'v_prediction': P.v_target(predicted_x0, predicted_eps, alpha_bar)}
  snr = alpha_bar.reshape(-1) / (1 - alpha_bar.reshape(-1))
  assert (snr > 5).any() and (snr < 5).any()
  expected = np.minimum(snr, 5.0) * np.mean((predicted_x0 - x0) ** 2, axis=(1, 2, 3))
  for prediction_type, out in outputs.items():
    loss = mse_loss(TABLES, out, x0, noise, t, prediction_type=prediction_type, min_snr_gamma=5.0)
    assert_close(loss, expected, tol=1e-5, msg=prediction_type)
  unweighted = mse_loss(TABLES, predicted_eps, x0, noise, t)
  assert_close(unweighted, np.mean((np.asarray(predicted_eps) - noise) ** 2, axis=(1, 2, 3)), tol=1e-6)


def reference_vb_bits(betas, eps, v, x0, x_t, t):
  """guided-diffusion's _vb_terms_bpd for LEARNED_RANGE, ε-prediction, clip_denoised=False, float64 NumPy."""
  ac = np.cumprod(1 - betas)
  ac_prev = np.append(1.0, ac[:-1])
  post_var = betas * (1 - ac_prev) / (1 - ac)
  post_log = np.log(np.append(post_var[1], post_var[1:]))
  c1 = betas * np.sqrt(ac_prev) / (1 - ac)
  c2 = (1 - ac_prev) * np.sqrt(1 - betas) / (1 - ac)
  b = lambda a: a[t].reshape(-1, 1, 1, 1)
  true_mean = b(c1) * x0 + b(c2) * x_t
  pred_x0 = np.sqrt(1 / b(ac)) * x_t - np.sqrt(1 / b(ac) - 1) * eps
  mean = b(c1) * pred_x0 + b(c2) * x_t
  frac = (v + 1) / 2
  log_var = frac * b(np.log(betas)) + (1 - frac) * b(post_log)
  kl = 0.5 * (-1 + log_var - b(post_log) + np.exp(b(post_log) - log_var) + (true_mean - mean) ** 2 * np.exp(-log_var))
  cdf = lambda z: 0.5 * (1 + np.tanh(math.sqrt(2 / math.pi) * (z + 0.044715 * z**3)))
  inv_std = np.exp(-0.5 * log_var)
  plus, minus = cdf(inv_std * (x0 - mean + 1 / 255)), cdf(inv_std * (x0 - mean - 1 / 255))
  log_probs = np.where(x0 < -0.999, np.log(np.maximum(plus, 1e-12)),
                       np.where(x0 > 0.999, np.log(np.maximum(1 - minus, 1e-12)),
                                np.log(np.maximum(plus - minus, 1e-12))))
  mean_flat = lambda a: a.mean(axis=(1, 2, 3)) / math.log(2)
  return np.where(t == 0, -mean_flat(log_probs), mean_flat(kl))


def test_learned_range_vb_matches_guided_diffusion_and_freezes_the_mean():
  x0, noise, t = _data()
  rng = np.random.default_rng(2)
  eps = (noise + 0.3 * rng.standard_normal(x0.shape)).astype(np.float32)
  v = rng.uniform(-1, 1, x0.shape).astype(np.float32)
  x_t = np.asarray(P.add_noise(x0, noise, np.cumprod(1 - BETAS)[t].reshape(-1, 1, 1, 1)), np.float64)
  vb = learned_range_vb(TABLES, eps, v, x0, x_t.astype(np.float32), t)
  expected = reference_vb_bits(BETAS, eps.astype(np.float64), v.astype(np.float64), x0, x_t, t)
  assert np.all(expected > 0)
  # At t = 0 the decoder NLL scales the mean's float32 rounding by 1/σ ≈ 150 (7e-5 relative seen); t > 0 is ≤ 2e-5.
  assert_close(vb, expected, tol=1e-4)

  grad_mean, grad_var = jax.grad(lambda e, s: learned_range_vb(TABLES, e, s, x0, x_t, t).sum(), (0, 1))(eps, v)
  assert not np.any(np.asarray(grad_mean))
  assert np.all(np.abs(np.asarray(grad_var)[1:]) > 0)

  # The true ε and the posterior variance (v = −1) make every KL term vanish.
  exact = learned_range_vb(TABLES, noise, -np.ones_like(v), x0, x_t.astype(np.float32), t)
  assert_close(exact[1:], 0.0, tol=1e-5)
