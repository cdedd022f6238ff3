"""Diffusion training losses: ε/v/x0 MSE with optional min-SNR-γ weighting, and guided-diffusion's learned-range
variational-bound term (improved DDPM; DiT trains with MSE(ε) + this term).

Timesteps `t` are integer indices into the T training steps, one per example [B]; samples are [B, ...]. Every loss
returns one value per example [B] (mean over the non-batch axes), so a caller can weight or mask before averaging.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from mmjax.diffusion.parameterization import target, x0_and_eps


@struct.dataclass
class DiffusionTables:
  """Per-timestep scalars of the forward process over T steps, all [T] float32 (guided-diffusion's definitions)."""
  alpha_bar: jax.Array  # ᾱ_t
  log_beta: jax.Array  # log β_t
  posterior_log_variance: jax.Array  # log β̃_t, with β̃_0 replaced by β̃_1 (β̃_0 = 0)
  posterior_coef_x0: jax.Array  # √ᾱ_{t−1}·β_t/(1−ᾱ_t)
  posterior_coef_xt: jax.Array  # √(1−β_t)·(1−ᾱ_{t−1})/(1−ᾱ_t)

  @classmethod
  def from_betas(cls, betas: np.ndarray) -> 'DiffusionTables':
    """Tables from the training betas [T], computed in float64 as guided-diffusion does."""
    betas = np.asarray(betas, np.float64)
    alpha_bar = np.cumprod(1 - betas)
    alpha_bar_prev = np.concatenate([[1.0], alpha_bar[:-1]])
    posterior_variance = betas * (1 - alpha_bar_prev) / (1 - alpha_bar)
    clipped = np.concatenate([posterior_variance[1:2], posterior_variance[1:]])
    f32 = lambda a: jnp.asarray(a, jnp.float32)
    return cls(f32(alpha_bar), f32(np.log(betas)), f32(np.log(clipped)),
               f32(np.sqrt(alpha_bar_prev) * betas / (1 - alpha_bar)),
               f32(np.sqrt(1 - betas) * (1 - alpha_bar_prev) / (1 - alpha_bar)))


def _per_example(t: jax.Array, table: jax.Array, ndim: int) -> jax.Array:
  """table[t] shaped [B, 1, ..., 1] to broadcast over samples of rank `ndim`."""
  return table[t].reshape((-1,) + (1,) * (ndim - 1))


def _mean_flat(x: jax.Array) -> jax.Array:
  return jnp.mean(x, axis=tuple(range(1, x.ndim)))


def min_snr_weight(alpha_bar: jax.Array, prediction_type: str, gamma: float) -> jax.Array:
  """Min-SNR-γ loss weight (Hang et al. 2023) per example, for a loss on the `prediction_type` output.

  With SNR = ᾱ/(1−ᾱ), the x0 loss is weighted min(SNR, γ); the same weighting of the x0 error expressed in ε or v
  units divides by SNR or by SNR + 1.
  """
  snr = alpha_bar / (1 - alpha_bar)
  clipped = jnp.minimum(snr, gamma)
  if prediction_type == 'epsilon':
    return clipped / snr
  if prediction_type == 'v_prediction':
    return clipped / (snr + 1)
  return clipped


def mse_loss(tables: DiffusionTables, model_output: jax.Array, x0: jax.Array, noise: jax.Array, t: jax.Array, *,
             prediction_type: str = 'epsilon', min_snr_gamma: float | None = None) -> jax.Array:
  """‖output − target‖² averaged per example [B]; target is ε, x0 or v for x_t = add_noise(x0, noise, ᾱ_t)."""
  alpha_bar = _per_example(t, tables.alpha_bar, x0.ndim)
  loss = _mean_flat((model_output - target(prediction_type, x0, noise, alpha_bar)) ** 2)
  if min_snr_gamma is not None:
    loss = loss * min_snr_weight(tables.alpha_bar[t], prediction_type, min_snr_gamma)
  return loss


def normal_kl(mean1: jax.Array, log_var1: jax.Array, mean2: jax.Array, log_var2: jax.Array) -> jax.Array:
  """KL(N(mean1, e^log_var1) ‖ N(mean2, e^log_var2)) elementwise, in nats."""
  return 0.5 * (-1.0 + log_var2 - log_var1 + jnp.exp(log_var1 - log_var2) + (mean1 - mean2) ** 2 * jnp.exp(-log_var2))


def _approx_standard_normal_cdf(x: jax.Array) -> jax.Array:
  # The tanh approximation guided-diffusion uses; keeping it keeps the bits/dim comparable with its numbers.
  return 0.5 * (1.0 + jnp.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def discretized_gaussian_log_likelihood(x: jax.Array, mean: jax.Array, log_scale: jax.Array) -> jax.Array:
  """log P(x) in nats for data x in [−1, 1] quantised to 256 levels, under N(mean, e^{2·log_scale}), elementwise."""
  centered = x - mean
  inv_std = jnp.exp(-log_scale)
  cdf_plus = _approx_standard_normal_cdf(inv_std * (centered + 1.0 / 255.0))
  cdf_min = _approx_standard_normal_cdf(inv_std * (centered - 1.0 / 255.0))
  log_cdf_plus = jnp.log(jnp.maximum(cdf_plus, 1e-12))
  log_one_minus_cdf_min = jnp.log(jnp.maximum(1.0 - cdf_min, 1e-12))
  log_cdf_delta = jnp.log(jnp.maximum(cdf_plus - cdf_min, 1e-12))
  return jnp.where(x < -0.999, log_cdf_plus, jnp.where(x > 0.999, log_one_minus_cdf_min, log_cdf_delta))


def learned_range_vb(tables: DiffusionTables, model_output: jax.Array, model_var: jax.Array, x0: jax.Array,
                     x_t: jax.Array, t: jax.Array, *, prediction_type: str = 'epsilon') -> jax.Array:
  """The variational-bound term for a learned-range variance, in bits per dimension [B].

  model_output is the mean head (ε, x0 or v) and model_var the v ∈ [−1, 1] head, both shaped like x0. The mean head
  is frozen (stop-gradient) so that this term trains only the variance, the MSE term the mean (improved DDPM).
  KL(q(x_{t−1}|x_t, x0) ‖ p(x_{t−1}|x_t)) for t > 0 and the discretised decoder NLL of x0 at t = 0.
  """
  ndim = x0.ndim
  take = lambda table: _per_example(t, table, ndim)
  frozen = jax.lax.stop_gradient(model_output)
  predicted_x0, _ = x0_and_eps(prediction_type, frozen, x_t, take(tables.alpha_bar))
  coef_x0, coef_xt = take(tables.posterior_coef_x0), take(tables.posterior_coef_xt)
  frac = (model_var + 1) / 2
  log_var = frac * take(tables.log_beta) + (1 - frac) * take(tables.posterior_log_variance)
  model_mean = coef_x0 * predicted_x0 + coef_xt * x_t
  true_mean = coef_x0 * x0 + coef_xt * x_t
  kl = _mean_flat(normal_kl(true_mean, take(tables.posterior_log_variance), model_mean, log_var)) / math.log(2.0)
  nll = -_mean_flat(discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * log_var)) / math.log(2.0)
  return jnp.where(t == 0, nll, kl)
