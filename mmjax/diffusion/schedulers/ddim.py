"""DDIM (Song et al. 2021), step for step as diffusers' `DDIMScheduler` computes it.

x0 and ε come from the model output; x0 is optionally clipped (ε is not recomputed from the clipped x0, diffusers'
default `use_clipped_model_output=False`); then x_prev = √ᾱ_prev·x0 + √(1 − ᾱ_prev − σ²)·ε + σ·z with
σ = η·√((1−ᾱ_prev)/(1−ᾱ_t)·(1 − ᾱ_t/ᾱ_prev)). Like diffusers, the previous timestep is t − T//N whatever the
spacing, and ᾱ_prev past t = 0 is 1 (`set_alpha_to_one`) or ᾱ_0.
"""
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from mmjax.diffusion.parameterization import x0_and_eps
from mmjax.diffusion.schedulers.base import Stateless
from mmjax.pallas_kernels import sampler as fused


@struct.dataclass
class DDIMScheduler(Stateless):
  """Per-step tables over the N inference steps; index i is the position in `timesteps` (traceable)."""
  timesteps: jax.Array  # [N] int32, descending
  alpha_bar: jax.Array  # [N] ᾱ_t
  alpha_bar_prev: jax.Array  # [N] ᾱ_prev
  std: jax.Array  # [N] σ_t (η included)
  prediction_type: str = struct.field(pytree_node=False)
  clip_sample_range: float | None = struct.field(pytree_node=False)  # None: no clipping
  eta: float = struct.field(pytree_node=False)

  @classmethod
  def create(cls, alphas_cumprod: np.ndarray, timesteps: np.ndarray, num_train_timesteps: int, *, eta: float,
             set_alpha_to_one: bool, prediction_type: str, clip_sample_range: float | None) -> 'DDIMScheduler':
    """Tables from the training ᾱ [T] (float32) and the descending inference timesteps [N]."""
    ac = np.asarray(alphas_cumprod, np.float64)
    timesteps = np.asarray(timesteps, np.int64)
    prev = timesteps - num_train_timesteps // len(timesteps)
    final = 1.0 if set_alpha_to_one else ac[0]
    alpha_bar = ac[timesteps]
    alpha_bar_prev = np.where(prev >= 0, ac[np.maximum(prev, 0)], final)
    variance = (1 - alpha_bar_prev) / (1 - alpha_bar) * (1 - alpha_bar / alpha_bar_prev)
    f32 = lambda a: jnp.asarray(a, jnp.float32)
    return cls(jnp.asarray(timesteps, jnp.int32), f32(alpha_bar), f32(alpha_bar_prev), f32(eta * np.sqrt(variance)),
               prediction_type, clip_sample_range, float(eta))

  def step(self, state: tuple[()], model_output: jax.Array, i: jax.Array, sample: jax.Array,
           noise: jax.Array | None = None) -> tuple[jax.Array, tuple[()]]:
    """x_{t_i} -> x_{t_{i+1}}; `noise` ~ N(0, I) shaped like sample is required when η > 0."""
    if self.eta > 0 and noise is None:
      raise ValueError(f'DDIMScheduler.step with eta={self.eta} needs the variance noise: pass noise=')
    alpha_bar, alpha_bar_prev, std = self.alpha_bar[i], self.alpha_bar_prev[i], self.std[i]
    x0, eps = x0_and_eps(self.prediction_type, model_output, sample, alpha_bar)
    if self.clip_sample_range is not None:
      x0 = jnp.clip(x0, -self.clip_sample_range, self.clip_sample_range)
    prev = jnp.sqrt(alpha_bar_prev) * x0 + jnp.sqrt(1 - alpha_bar_prev - std**2) * eps
    if self.eta > 0:
      prev = prev + std * noise
    return prev.astype(sample.dtype), state

  def fused_step_spec(self, i: jax.Array) -> fused.StepSpec:
    """Step i for the fused Pallas kernel (`mmjax.pallas_kernels.sampler.guided_step`)."""
    return fused.ddim_spec(self.alpha_bar[i], self.alpha_bar_prev[i], self.std[i], eta=self.eta,
                           prediction_type=self.prediction_type, clip_sample_range=self.clip_sample_range)
