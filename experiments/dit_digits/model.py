"""The class-conditional DiT of dit_digits and its diffusion training loss.

The DiT predicts ε (or v) for a noised digit x_t [B, S, S, 1] at an integer training timestep t [B] and a class
label [B] (10 = the null label; labels are dropped to it with `model.class_dropout` while training, for
classifier-free guidance). With learned sigma it also outputs the variance interpolation v ∈ [−1, 1] in a second
channel, trained by guided-diffusion's learned-range variational bound (DiT's loss: MSE + VB).
"""
from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections

from mmjax.diffusion import make_betas
from mmjax.diffusion.losses import DiffusionTables, learned_range_vb, mse_loss
from mmjax.diffusion.parameterization import add_noise
from mmjax.models.dit import DiT, DiTConfig

NUM_CLASSES = 10
CHANNELS = 1  # grayscale digits


def dit_config(config: ml_collections.ConfigDict) -> DiTConfig:
  m = config.model
  if m.width % m.num_heads:
    raise ValueError(f'config.model.width={m.width} must be a multiple of config.model.num_heads={m.num_heads}')
  return DiTConfig(num_attention_heads=m.num_heads, attention_head_dim=m.width // m.num_heads,
                   in_channels=CHANNELS, out_channels=2 * CHANNELS if m.learn_sigma else CHANNELS,
                   num_layers=m.depth, sample_size=config.data.image_size, patch_size=m.patch,
                   num_embeds_ada_norm=NUM_CLASSES)


def make_model(config: ml_collections.ConfigDict) -> DiT:
  if config.remat_policy not in ('none', 'full'):
    raise ValueError(f"config.remat_policy={config.remat_policy!r}: the DiT rematerialises whole blocks, "
                     "choose 'none' or 'full'")
  return DiT(dit_config(config), class_dropout_prob=config.model.class_dropout,
             remat=config.remat_policy == 'full', dtype=jnp.dtype(config.compute_dtype),
             param_dtype=jnp.dtype(config.param_dtype))


def make_tables(config: ml_collections.ConfigDict) -> DiffusionTables:
  """The forward process of config.diffusion (the scheduler of the sample program reads the same keys)."""
  d = config.diffusion
  return DiffusionTables.from_betas(make_betas(d.beta_schedule, d.num_train_timesteps, d.beta_start, d.beta_end))


def diffusion_loss(model: DiT, tables: DiffusionTables, config: ml_collections.ConfigDict, params, x0: jax.Array,
                   labels: jax.Array, rng: jax.Array, *,
                   deterministic: bool = False) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Per-example loss [B] and its parts {'mse', 'vb'} [B] for clean images x0 [B, S, S, 1] in [−1, 1].

  t ~ U{0, …, T−1}, ε ~ N(0, I) and the label dropout all draw from `rng`; deterministic=True keeps every label.
  """
  d = config.diffusion
  t_rng, noise_rng, dropout_rng = jax.random.split(rng, 3)
  t = jax.random.randint(t_rng, (x0.shape[0],), 0, d.num_train_timesteps)
  noise = jax.random.normal(noise_rng, x0.shape, x0.dtype)
  x_t = add_noise(x0, noise, tables.alpha_bar[t].reshape(-1, 1, 1, 1))
  out = model.apply({'params': params}, x_t, t, labels, deterministic=deterministic,
                    rngs={'dropout': dropout_rng}).astype(jnp.float32)
  mean_out = out[..., :CHANNELS]
  mse = mse_loss(tables, mean_out, x0, noise, t, prediction_type=d.prediction_type,
                 min_snr_gamma=d.min_snr_gamma or None)
  vb = (learned_range_vb(tables, mean_out, out[..., CHANNELS:], x0, x_t, t, prediction_type=d.prediction_type)
        if config.model.learn_sigma else jnp.zeros_like(mse))
  return mse + vb, {'mse': mse, 'vb': vb}


def make_denoise_fn(model: DiT, out_channels: int) -> Callable:
  """`denoise_fn(params, x [M, S, S, 1], t [M], labels [M]) -> [M, S, S, out_channels]` for
  `mmjax.diffusion.sample`: out_channels = 1 gives ε (or v) alone (DDIM, Euler, DPM-Solver), 2 adds the learned
  variance channel (DDPM with variance_type learned_range). Make it once and pass the same object every call."""
  def denoise_fn(params, x: jax.Array, t: jax.Array, labels: jax.Array) -> jax.Array:
    return model.apply({'params': params}, x, t, labels)[..., :out_channels]
  return denoise_fn
