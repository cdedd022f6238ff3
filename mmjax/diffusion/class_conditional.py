"""Training and sampling pieces of a class-conditional diffusion model with classifier-free guidance (DiT's recipe).

The model is any flax module called as `model.apply({'params': p}, x_t [B, ..., C], t [B], labels [B],
deterministic=..., rngs={'dropout': key})` that drops labels to the null label itself while training (as
`mmjax.models.dit.DiT` does with its class_dropout_prob) and returns [B, ..., C] (ε, x0 or v), or [B, ..., 2C]
with a learned sigma: the prediction, then the variance interpolation v ∈ [−1, 1] trained by guided-diffusion's
learned-range variational bound (DiT's loss: MSE + VB, the VB term with a stop-gradient on the mean).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.diffusion.losses import DiffusionTables, learned_range_vb, mse_loss
from mmjax.diffusion.parameterization import add_noise
from mmjax.diffusion.schedules import make_betas


def make_tables(diffusion: Any) -> DiffusionTables:
  """The forward process of a config block in diffusers' scheduler-config names (beta_schedule,
  num_train_timesteps, beta_start, beta_end), the same keys a sample program builds its scheduler from."""
  d = diffusion
  return DiffusionTables.from_betas(make_betas(d.beta_schedule, d.num_train_timesteps, d.beta_start, d.beta_end))


def class_conditional_loss(model: nn.Module, tables: DiffusionTables, params: Any, x0: jax.Array, labels: jax.Array,
                           rng: jax.Array, *, learn_sigma: bool, prediction_type: str = 'epsilon',
                           min_snr_gamma: float | None = None,
                           deterministic: bool = False) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Per-example loss [B] and its parts {'mse', 'vb'} [B] for clean samples x0 [B, ..., C] and labels [B].

  t ~ U{0, …, T−1} (T = the tables' length), ε ~ N(0, I) and the model's label dropout all draw from `rng`;
  deterministic=True keeps every label. The model output is cast to float32 before the loss (bf16 compute).
  """
  channels = x0.shape[-1]
  t_rng, noise_rng, dropout_rng = jax.random.split(rng, 3)
  t = jax.random.randint(t_rng, (x0.shape[0],), 0, tables.alpha_bar.shape[0])
  noise = jax.random.normal(noise_rng, x0.shape, x0.dtype)
  x_t = add_noise(x0, noise, tables.alpha_bar[t].reshape((-1,) + (1,) * (x0.ndim - 1)))
  out = model.apply({'params': params}, x_t, t, labels, deterministic=deterministic,
                    rngs={'dropout': dropout_rng}).astype(jnp.float32)
  mean_out = out[..., :channels]
  mse = mse_loss(tables, mean_out, x0, noise, t, prediction_type=prediction_type, min_snr_gamma=min_snr_gamma)
  vb = (learned_range_vb(tables, mean_out, out[..., channels:], x0, x_t, t, prediction_type=prediction_type)
        if learn_sigma else jnp.zeros_like(mse))
  return mse + vb, {'mse': mse, 'vb': vb}


def make_denoise_fn(model: nn.Module, out_channels: int) -> Callable:
  """`denoise_fn(params, x [M, ..., C], t [M], labels [M]) -> [M, ..., out_channels]` for `mmjax.diffusion.sample`:
  out_channels = C gives the prediction alone (DDIM, Euler, DPM-Solver), 2C adds the learned variance channels
  (DDPM with variance_type learned_range). Make it once and pass the same object every call (it keys the jit)."""
  def denoise_fn(params, x: jax.Array, t: jax.Array, labels: jax.Array) -> jax.Array:
    return model.apply({'params': params}, x, t, labels)[..., :out_channels]
  return denoise_fn
