"""The geo2mat stage: materials (albedo, metalness, roughness) given an object's geometry and class, with imagen-
pytorch 1.26's continuous-time Gaussian diffusion as the official code runs it (pl_imagen_model.py).

Maths (imagen's GaussianDiffusionContinuousTimes, noise_schedule='cosine', pred_objective='v'):
  log_snr(t) = -log(max(cos((t + s)/(1 + s) * pi/2)^-2 - 1, 1e-5)), s = 0.008, t in [0, 1]
  alpha = sqrt(sigmoid(log_snr)), sigma = sqrt(sigmoid(-log_snr)); x_t = alpha * x0 + sigma * eps
  the U-Net sees log_snr(t) as its time and predicts v = alpha * eps - sigma * x0
Training draws t ~ U(0, 1) per example; the loss is the per-example MSE to v weighted by min(snr, gamma)/(snr + 1)
(min-SNR, gamma = 5), averaged. Sampling walks t over linspace(1, 0, steps + 1) with imagen's p_sample: x0 = alpha *
x_t - sigma * v, dynamic thresholding (per example, s = max(1, 95th percentile of |x0|); x0 = clip(x0, -s, s) / s),
the posterior q(x_next | x_t, x0) with c = -expm1(log_snr - log_snr_next): mean = alpha_next * (x_t * (1 - c) /
alpha + c * x0), variance = sigma_next^2 * c, no noise on the last step; the result is clipped to [-1, 1].

Library defaults, checked against imagen-pytorch 1.26.0 (`Imagen.__init__`): dynamic_thresholding=True with
dynamic_thresholding_percentile=0.95, min_snr_loss_weight=True with min_snr_gamma=5, loss 'l2', cond_drop_prob 0.1
as the Object Images code sets it; the class token is dropped, never the geometry. Sampling uses cond_scale 1 (no
guidance) and all `timesteps` = 1000 steps (the official `infer_steps` argument is unused).
"""
from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp

from experiments.object_images.geo2mat_unet import Geo2MatConfig, Geo2MatUNet
from experiments.object_images.omage import ALBEDO, OCCUPANCY, POSITION, ROUGHNESS
from mmjax.diffusion.guidance import combine

__all__ = ['COSINE_S', 'Geo2MatConfig', 'Geo2MatUNet', 'alpha_sigma', 'cosine_log_snr', 'dynamic_thresholding',
           'geo2mat_loss', 'p_sample_step', 'sample_materials', 'split_omage']

COSINE_S = 0.008
# The geometry condition (position, occupancy) and the denoised materials (albedo, metalness, roughness; normals are
# dropped as in the official 'nonormal' mode), as slices of the 12-channel omage.
GEOMETRY = slice(POSITION.start, OCCUPANCY + 1)
MATERIALS = slice(ALBEDO.start, ROUGHNESS + 1)


def split_omage(omage: jax.Array) -> tuple[jax.Array, jax.Array]:
  """[.., 12] model-space omage -> (geometry [.., 4], materials [.., 5])."""
  if omage.shape[-1] != 12:
    raise ValueError(f'geo2mat expects 12-channel omages [.., 12], got shape {omage.shape}.')
  return omage[..., GEOMETRY], omage[..., MATERIALS]


def cosine_log_snr(t: jax.Array, s: float = COSINE_S) -> jax.Array:
  """imagen's alpha_cosine_log_snr: t in [0, 1] -> log-SNR (float32), clamped where cos^-2 - 1 < 1e-5."""
  t = jnp.asarray(t, jnp.float32)
  return -jnp.log(jnp.maximum(jnp.cos((t + s) / (1 + s) * math.pi * 0.5) ** -2 - 1, 1e-5))


def alpha_sigma(log_snr: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(alpha, sigma) = (sqrt(sigmoid(log_snr)), sqrt(sigmoid(-log_snr))); alpha^2 + sigma^2 = 1."""
  return jnp.sqrt(jax.nn.sigmoid(log_snr)), jnp.sqrt(jax.nn.sigmoid(-log_snr))


def _per_example(a: jax.Array, like: jax.Array) -> jax.Array:
  return a.reshape(a.shape + (1,) * (like.ndim - a.ndim))


def dynamic_thresholding(x0: jax.Array, percentile: float | None) -> jax.Array:
  """Imagen's dynamic thresholding on x0 [B, ...]: s = max(1, quantile(|x0_b|, percentile)) per example (linear
  interpolation, as torch.quantile), then clip(x0, -s, s) / s; percentile None clips to [-1, 1]."""
  if percentile is None:
    return jnp.clip(x0, -1.0, 1.0)
  s = jnp.quantile(jnp.abs(x0.reshape(x0.shape[0], -1)), percentile, axis=-1)
  s = _per_example(jnp.maximum(s, 1.0), x0)
  return jnp.clip(x0, -s, s) / s


def p_sample_step(x: jax.Array, v: jax.Array, t: jax.Array, t_next: jax.Array, noise: jax.Array, *,
                  percentile: float | None = 0.95) -> tuple[jax.Array, jax.Array]:
  """One imagen p_sample step from time t to t_next ([B] each, in [0, 1]) given the v prediction at x [B, ...]:
  returns (x_next, the thresholded x0). No noise is added where t_next == 0."""
  log_snr, log_snr_next = _per_example(cosine_log_snr(t), x), _per_example(cosine_log_snr(t_next), x)
  alpha, sigma = alpha_sigma(log_snr)
  alpha_next, sigma_next = alpha_sigma(log_snr_next)
  x0 = dynamic_thresholding(alpha * x - sigma * v, percentile)
  c = -jnp.expm1(log_snr - log_snr_next)
  mean = alpha_next * (x * (1 - c) / alpha + c * x0)
  log_variance = jnp.log(jnp.maximum(sigma_next ** 2 * c, 1e-20))
  nonzero = _per_example((t_next != 0).astype(x.dtype), x)
  return mean + nonzero * jnp.exp(0.5 * log_variance) * noise, x0


def geo2mat_loss(model: Geo2MatUNet, params: Any, batch: dict[str, jax.Array], rng: jax.Array, *,
                 cond_drop_prob: float = 0.1, min_snr_gamma: float | None = 5.0
                 ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """imagen's p_losses for the v objective on batch {'omage': [B, H, W, 12] in [-1, 1] (model space), 'label': int
  [B]}: the materials are noised, the geometry conditions. min_snr_gamma None turns the min-SNR weight off (weight
  snr / (snr + 1)). Returns (loss, {'mse': unweighted per-example MSE mean, 'weight': mean loss weight})."""
  geometry, x0 = split_omage(batch['omage'])
  t_rng, noise_rng, drop_rng = jax.random.split(rng, 3)
  b = x0.shape[0]
  t = jax.random.uniform(t_rng, (b,), jnp.float32)
  noise = jax.random.normal(noise_rng, x0.shape, x0.dtype)
  drop = jax.random.bernoulli(drop_rng, cond_drop_prob, (b,))
  log_snr = cosine_log_snr(t)
  alpha, sigma = (_per_example(a, x0) for a in alpha_sigma(log_snr))
  x_t = alpha * x0 + sigma * noise
  pred = model.apply({'params': params}, x_t, log_snr, geometry, batch['label'], drop)
  target = alpha * noise - sigma * x0
  mse = jnp.mean(jnp.square(pred.astype(jnp.float32) - target).reshape(b, -1), axis=-1)
  snr = jnp.exp(log_snr)
  clipped = snr if min_snr_gamma is None else jnp.minimum(snr, min_snr_gamma)
  weight = clipped / (snr + 1)
  return jnp.mean(mse * weight), {'mse': jnp.mean(mse), 'weight': jnp.mean(weight)}


@functools.partial(jax.jit, static_argnames=('model', 'steps', 'cond_scale', 'dynamic_threshold'))
def sample_materials(model: Geo2MatUNet, params: Any, geometry: jax.Array, labels: jax.Array, rng: jax.Array, *,
                     steps: int = 1000, cond_scale: float = 1.0, dynamic_threshold: float | None = 0.95) -> jax.Array:
  """Materials [B, H, W, 5] in [-1, 1] for geometry [B, H, W, 4] (model space) and labels int [B]: imagen's
  p_sample_loop over `steps` uniform steps of t from 1 to 0, one jitted lax.fori_loop. cond_scale (static) != 1 runs
  the class-dropped and conditional passes as one batch and guides v (imagen's forward_with_cond_scale)."""
  b, h, w, _ = geometry.shape
  noise_rng, step_rng = jax.random.split(rng)
  x = jax.random.normal(noise_rng, (b, h, w, model.config.channels), jnp.float32)
  times = jnp.linspace(1.0, 0.0, steps + 1, dtype=jnp.float32)
  guided = cond_scale != 1
  drop = jnp.concatenate([jnp.ones((b,), bool), jnp.zeros((b,), bool)]) if guided else jnp.zeros((b,), bool)
  branches = 2 if guided else 1
  geometry_in, labels_in = jnp.tile(geometry, (branches, 1, 1, 1)), jnp.tile(labels, branches)
  scales = jnp.reshape(jnp.asarray(cond_scale, jnp.float32), (1,))

  def body(i, x):
    t, t_next = jnp.full((b,), times[i]), jnp.full((b,), times[i + 1])
    v = model.apply({'params': params}, jnp.tile(x, (branches, 1, 1, 1)), jnp.tile(cosine_log_snr(t), branches),
                    geometry_in, labels_in, drop)
    if guided:  # null + (cond - null) * cond_scale
      v = combine(v.reshape(2, b, *v.shape[1:]), scales, v.shape[-1])
    noise = jax.random.normal(jax.random.fold_in(step_rng, i), x.shape, x.dtype)
    return p_sample_step(x, v, t, t_next, noise, percentile=dynamic_threshold)[0]

  return jnp.clip(jax.lax.fori_loop(0, steps, body, x), -1.0, 1.0)
