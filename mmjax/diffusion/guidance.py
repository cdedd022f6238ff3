"""Classifier-free guidance: 2-way and N-way weighted, optionally on a subset of channels.

With K model outputs ordered from least to most conditioned, ε_0 (unconditional) … ε_{K−1} (all conditions), the
guided output is ε = ε_0 + Σ_{i≥1} s_i·(ε_i − ε_{i−1}). K = 2 is the usual ε_u + s·(ε_c − ε_u); IPAdapter-Instruct's
3-way form is K = 4 with (ε_U, ε_I, ε_E, ε_full) and scales (s_img, s_text, s_instr). The scales are an array, so
a jitted sampler takes new values without recompiling.
"""
import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class Guidance:
  """scales: [K − 1] (traced). channels: guide output channels [0, channels) only (upstream DiT guides 3 of 4 ε
  channels, Object Images all 4); None guides the sample's channels. The rest (a learned variance, unguided ε
  channels) come from the most conditioned output."""
  scales: jax.Array
  channels: int | None = struct.field(pytree_node=False, default=None)

  @property
  def num_branches(self) -> int:
    """K, the number of model outputs (conditionings) the scales combine."""
    return self.scales.shape[0] + 1


def cfg(scale: float | jax.Array, channels: int | None = None) -> Guidance:
  """2-way classifier-free guidance with scale s: branches (unconditional, conditional)."""
  return Guidance(jnp.reshape(jnp.asarray(scale, jnp.float32), (1,)), channels)


def combine(outputs: jax.Array, scales: jax.Array, channels: int) -> jax.Array:
  """Guided output from the K stacked model outputs [K, B, ..., C_out] and the scales [K − 1]: [B, ..., C_out].

  Channels [0, channels) are combined; channels from `channels` on are taken from outputs[K − 1].
  """
  if outputs.shape[0] != scales.shape[0] + 1:
    raise ValueError(f'guidance has {scales.shape[0]} scales for {outputs.shape[0]} conditionings; it needs one '
                     'scale per conditioning after the unconditional one (K − 1)')
  guided = outputs[..., :channels].astype(jnp.float32)
  differences = guided[1:] - guided[:-1]
  scales = scales.astype(jnp.float32).reshape((-1,) + (1,) * (guided.ndim - 1))
  result = (guided[0] + jnp.sum(scales * differences, axis=0)).astype(outputs.dtype)
  return jnp.concatenate([result, outputs[-1, ..., channels:]], axis=-1)
