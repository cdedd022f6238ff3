"""Rotary position embeddings, rotate-half convention (HF Llama/Qwen2 `apply_rotary_pos_emb`).

Channel i < D/2 pairs with channel i + D/2 and rotates by angle position * theta^(-2i/D). Positions are
absolute, so a KV-cache decoder passes the positions of the new tokens.
"""
import jax
import jax.numpy as jnp


def rope_frequencies(positions: jax.Array, head_dim: int, *, theta: float = 10000.0
                     ) -> tuple[jax.Array, jax.Array]:
  """cos and sin of the rotation angles, float32 [B, S, head_dim / 2] each, for integer positions [B, S]."""
  if head_dim % 2:
    raise ValueError(f'RoPE needs an even head_dim, got {head_dim}.')
  inv_freq = 1.0 / theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)
  angles = positions.astype(jnp.float32)[..., None] * inv_freq
  return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x: jax.Array, positions: jax.Array, *, theta: float = 10000.0) -> jax.Array:
  """Rotates x [B, S, H, D] by integer positions [B, S] (batch may be 1 to broadcast); returns x.dtype.

  The rotation is computed in float32.
  """
  if x.ndim != 4:
    raise ValueError(f'apply_rope expects x [B, S, H, D], got shape {x.shape}.')
  if positions.ndim != 2 or positions.shape[1] != x.shape[1] or positions.shape[0] not in (1, x.shape[0]):
    raise ValueError(f'positions must be [B, S] or [1, S] matching x {x.shape}, got shape {positions.shape}.')
  cos, sin = rope_frequencies(positions, x.shape[-1], theta=theta)
  cos, sin = cos[:, :, None, :], sin[:, :, None, :]
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return rotated.astype(x.dtype)
