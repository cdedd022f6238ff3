"""Ancestral DDPM sampling (Ho et al. 2020) with fixed or learned-range variance, as diffusers' `DDPMScheduler`.

x_prev = c1·x0 + c2·x_t + 1[t > 0]·σ·z with c1 = √ᾱ_prev·β_t/(1−ᾱ_t), c2 = √(1−β_t)·(1−ᾱ_prev)/(1−ᾱ_t) and
β_t = 1 − ᾱ_t/ᾱ_prev over the (possibly respaced) chain. σ² is the posterior variance β̃_t = (1−ᾱ_prev)/(1−ᾱ_t)·β_t
('fixed_small'), β_t ('fixed_large'), or exp(f·log β_t + (1−f)·log β̃_t) with f = (v+1)/2 from the model's extra
channels ('learned_range', improved DDPM / guided-diffusion / DiT).

Layout is channels-last: with 'learned_range' the model output is [..., 2C], ε (or x0, v) then the v channels.
"""
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from mmjax.diffusion.parameterization import x0_and_eps
from mmjax.diffusion.schedulers.base import Stateless
from mmjax.pallas_kernels import sampler as fused

VARIANCE_TYPES = ('fixed_small', 'fixed_large', 'learned_range')


@struct.dataclass
class DDPMScheduler(Stateless):
  """Per-step tables over the N inference steps; index i is the position in `timesteps` (traceable)."""
  timesteps: jax.Array  # [N] int32, descending
  alpha_bar: jax.Array  # [N] ᾱ_t
  coef_x0: jax.Array  # [N] c1
  coef_xt: jax.Array  # [N] c2
  log_beta: jax.Array  # [N] log β_t
  log_posterior_variance: jax.Array  # [N] log max(β̃_t, 1e-20)
  noise_mask: jax.Array  # [N] 1 where t > 0, else 0
  prediction_type: str = struct.field(pytree_node=False)
  variance_type: str = struct.field(pytree_node=False)
  clip_sample_range: float | None = struct.field(pytree_node=False)  # None: no clipping

  @classmethod
  def create(cls, alphas_cumprod: np.ndarray, timesteps: np.ndarray, *, variance_type: str, prediction_type: str,
             clip_sample_range: float | None) -> 'DDPMScheduler':
    """Tables from the training ᾱ [T] (float32) and the descending inference timesteps [N] (any subset)."""
    if variance_type not in VARIANCE_TYPES:
      raise ValueError(f'variance_type {variance_type!r} is not supported; use one of {VARIANCE_TYPES}')
    ac = np.asarray(alphas_cumprod, np.float64)
    timesteps = np.asarray(timesteps, np.int64)
    alpha_bar = ac[timesteps]
    alpha_bar_prev = np.concatenate([alpha_bar[1:], [1.0]])
    beta = 1 - alpha_bar / alpha_bar_prev
    posterior_variance = np.maximum((1 - alpha_bar_prev) / (1 - alpha_bar) * beta, 1e-20)
    f32 = lambda a: jnp.asarray(a, jnp.float32)
    return cls(
      timesteps=jnp.asarray(timesteps, jnp.int32), alpha_bar=f32(alpha_bar),
      coef_x0=f32(np.sqrt(alpha_bar_prev) * beta / (1 - alpha_bar)),
      coef_xt=f32(np.sqrt(1 - beta) * (1 - alpha_bar_prev) / (1 - alpha_bar)),
      log_beta=f32(np.log(beta)), log_posterior_variance=f32(np.log(posterior_variance)),
      noise_mask=f32(timesteps > 0), prediction_type=prediction_type, variance_type=variance_type,
      clip_sample_range=clip_sample_range)

  def step(self, state: tuple[()], model_output: jax.Array, i: jax.Array, sample: jax.Array,
           noise: jax.Array | None = None) -> tuple[jax.Array, tuple[()]]:
    """x_{t_i} -> x_{t_{i+1}} given `noise` ~ N(0, I) shaped like sample (unused where t_i = 0)."""
    if noise is None:
      raise ValueError('DDPMScheduler.step is ancestral sampling: pass its variance noise as noise=')
    channels = sample.shape[-1]
    if self.variance_type == 'learned_range':
      if model_output.shape[-1] != 2 * channels:
        raise ValueError(f"variance_type 'learned_range' needs a model output with 2×{channels} channels (last "
                         f'axis), got shape {model_output.shape}')
      model_output, v = model_output[..., :channels], model_output[..., channels:]
      frac = (v + 1) / 2
      log_variance = frac * self.log_beta[i] + (1 - frac) * self.log_posterior_variance[i]
    elif self.variance_type == 'fixed_large':
      log_variance = self.log_beta[i]
    else:
      log_variance = self.log_posterior_variance[i]
    x0, _ = x0_and_eps(self.prediction_type, model_output, sample, self.alpha_bar[i])
    if self.clip_sample_range is not None:
      x0 = jnp.clip(x0, -self.clip_sample_range, self.clip_sample_range)
    mean = self.coef_x0[i] * x0 + self.coef_xt[i] * sample
    prev = mean + self.noise_mask[i] * jnp.exp(0.5 * log_variance) * noise
    return prev.astype(sample.dtype), state

  def fused_step_spec(self, i: jax.Array) -> fused.StepSpec:
    """Step i for the fused Pallas kernel (`mmjax.pallas_kernels.sampler.guided_step`)."""
    return fused.ddpm_spec(self.alpha_bar[i], self.coef_x0[i], self.coef_xt[i], self.log_beta[i],
                           self.log_posterior_variance[i], self.noise_mask[i], prediction_type=self.prediction_type,
                           variance_type=self.variance_type, clip_sample_range=self.clip_sample_range)
