"""The class-conditional DiT of dit_digits and its diffusion training loss (mmjax.diffusion.class_conditional).

The DiT predicts ε (or v) for a noised digit x_t [B, S, S, 1] at an integer training timestep t [B] and a class
label [B] (10 = the null label; labels are dropped to it with `model.class_dropout` while training, for
classifier-free guidance). With learned sigma it also outputs the variance interpolation v ∈ [−1, 1] in a second
channel, trained by guided-diffusion's learned-range variational bound (DiT's loss: MSE + VB).
"""
from __future__ import annotations

import jax
import ml_collections

from mmjax.diffusion import class_conditional
from mmjax.diffusion.losses import DiffusionTables
from mmjax.models.dit import DiT, DiTConfig, dit_for_training

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
  return dit_for_training(dit_config(config), class_dropout=config.model.class_dropout,
                          remat_policy=config.remat_policy, compute_dtype=config.compute_dtype,
                          param_dtype=config.param_dtype)


def make_tables(config: ml_collections.ConfigDict) -> DiffusionTables:
  """The forward process of config.diffusion (the scheduler of the sample program reads the same keys)."""
  return class_conditional.make_tables(config.diffusion)


def diffusion_loss(model: DiT, tables: DiffusionTables, config: ml_collections.ConfigDict, params, x0: jax.Array,
                   labels: jax.Array, rng: jax.Array, *,
                   deterministic: bool = False) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Per-example loss [B] and its parts {'mse', 'vb'} [B] for clean images x0 [B, S, S, 1] in [−1, 1]
  (`mmjax.diffusion.class_conditional.class_conditional_loss` with config.diffusion's objective)."""
  d = config.diffusion
  return class_conditional.class_conditional_loss(
      model, tables, params, x0, labels, rng, learn_sigma=config.model.learn_sigma,
      prediction_type=d.prediction_type, min_snr_gamma=d.min_snr_gamma or None, deterministic=deterministic)
