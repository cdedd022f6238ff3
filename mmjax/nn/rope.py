"""Rotary position embeddings, rotate-half convention (HF Llama/Qwen2 `apply_rotary_pos_emb`), with the frequency
scalings that released checkpoints use.

Channel i < D/2 pairs with channel i + D/2 and rotates by angle position * inv_freq[i], inv_freq[i] =
theta^(-2i/D) before scaling. Positions are absolute, so a KV-cache decoder passes the positions of the new tokens.

Scalings (`RopeScaling`, HF `rope_scaling` / `rope_parameters`):
  linear  every inv_freq / factor (positions interpolated by `factor`, e.g. CodeLlama-style context extension).
  llama3  Llama-3.1: wavelengths 2 pi / inv_freq shorter than original_max_position_embeddings / high_freq_factor
          are kept, longer than original_max_position_embeddings / low_freq_factor divided by `factor`, and the
          band between interpolates smoothly between the two in 1 / wavelength.
"""
import dataclasses
import math

import jax
import jax.numpy as jnp

ROPE_TYPES = ('default', 'linear', 'llama3')


@dataclasses.dataclass(frozen=True)
class RopeScaling:
  """A RoPE frequency scaling; the llama3 fields are read only by rope_type 'llama3'."""
  rope_type: str = 'default'
  factor: float = 1.0
  low_freq_factor: float = 1.0
  high_freq_factor: float = 4.0
  original_max_position_embeddings: int = 8192

  def __post_init__(self):
    if self.rope_type not in ROPE_TYPES:
      raise ValueError(f'unsupported RoPE type {self.rope_type!r}; supported: {list(ROPE_TYPES)}.')
    if self.rope_type == 'llama3' and self.high_freq_factor <= self.low_freq_factor:
      raise ValueError(f'llama3 RoPE needs high_freq_factor > low_freq_factor, got {self.high_freq_factor} <= '
                       f'{self.low_freq_factor}.')


def inverse_frequencies(head_dim: int, *, theta: float = 10000.0, scaling: RopeScaling | None = None) -> jax.Array:
  """float32 [head_dim / 2]: the rotation speed (radians per position) of each channel pair, after `scaling`."""
  if head_dim % 2:
    raise ValueError(f'RoPE needs an even head_dim, got {head_dim}.')
  inv_freq = 1.0 / theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)
  if scaling is None or scaling.rope_type == 'default':
    return inv_freq
  if scaling.rope_type == 'linear':
    return inv_freq / scaling.factor
  original = scaling.original_max_position_embeddings
  wavelength = 2 * math.pi / inv_freq
  # Where the wavelength lies between original / high_freq_factor (kept) and original / low_freq_factor (divided by
  # factor): 0 at the long end, 1 at the short end.
  smooth = (original / wavelength - scaling.low_freq_factor) / (scaling.high_freq_factor - scaling.low_freq_factor)
  banded = (1 - smooth) * inv_freq / scaling.factor + smooth * inv_freq
  scaled = jnp.where(wavelength > original / scaling.low_freq_factor, inv_freq / scaling.factor, inv_freq)
  in_band = (wavelength >= original / scaling.high_freq_factor) & (wavelength <= original / scaling.low_freq_factor)
  return jnp.where(in_band, banded, scaled)


def rope_frequencies(positions: jax.Array, head_dim: int, *, theta: float = 10000.0,
                     scaling: RopeScaling | None = None) -> tuple[jax.Array, jax.Array]:
  """cos and sin of the rotation angles, float32 [B, S, head_dim / 2] each, for integer positions [B, S]."""
  inv_freq = inverse_frequencies(head_dim, theta=theta, scaling=scaling)
  angles = positions.astype(jnp.float32)[..., None] * inv_freq
  return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x: jax.Array, positions: jax.Array, *, theta: float = 10000.0,
               scaling: RopeScaling | None = None) -> jax.Array:
  """Rotates x [B, S, H, D] by integer positions [B, S] (batch may be 1 to broadcast); returns x.dtype.

  The rotation is computed in float32.
  """
  if x.ndim != 4:
    raise ValueError(f'apply_rope expects x [B, S, H, D], got shape {x.shape}.')
  if positions.ndim != 2 or positions.shape[1] != x.shape[1] or positions.shape[0] not in (1, x.shape[0]):
    raise ValueError(f'positions must be [B, S] or [1, S] matching x {x.shape}, got shape {positions.shape}.')
  cos, sin = rope_frequencies(positions, x.shape[-1], theta=theta, scaling=scaling)
  cos, sin = cos[:, :, None, :], sin[:, :, None, :]
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return rotated.astype(x.dtype)
