"""Euler sampling of the probability-flow ODE in σ space (Karras et al. 2022), as diffusers'
`EulerDiscreteScheduler` without churn.

σ_t = √((1−ᾱ_t)/ᾱ_t) interpolated linearly at (possibly fractional) timesteps; the model sees x/√(σ²+1); then
x0 = x − σ·ε (or the v form) and x_next = x + (x − x0)/σ_i·(σ_{i+1} − σ_i), with σ_N = 0 or σ_min.
"""
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from mmjax.pallas_kernels import sampler as fused


@struct.dataclass
class EulerDiscreteScheduler:
  """Per-step tables; index i is the position in `timesteps` (traceable)."""
  timesteps: jax.Array  # [N] float32, descending (fractional under 'linspace' spacing, as in diffusers)
  sigmas: jax.Array  # [N + 1]
  prediction_type: str = struct.field(pytree_node=False)
  init_noise_sigma: float = struct.field(pytree_node=False)

  @classmethod
  def create(cls, alphas_cumprod: np.ndarray, timesteps: np.ndarray, *, prediction_type: str,
             final_sigma_min: bool, init_sigma_with_unit_variance: bool) -> 'EulerDiscreteScheduler':
    """Tables from the training ᾱ [T] (float32) and the descending timesteps [N] (float).

    final_sigma_min: end at σ_min = σ(t=0) instead of 0. init_sigma_with_unit_variance: the initial noise has
    std √(σ_max²+1) (diffusers' 'leading' spacing) instead of σ_max.
    """
    ac = np.asarray(alphas_cumprod, np.float32)
    train_sigmas = ((1 - ac) / ac) ** 0.5
    sigmas = np.interp(np.asarray(timesteps, np.float32), np.arange(len(train_sigmas)), train_sigmas)
    sigmas = np.concatenate([sigmas, [train_sigmas[0] if final_sigma_min else 0.0]]).astype(np.float32)
    sigma_max = float(sigmas.max())
    init = (sigma_max**2 + 1) ** 0.5 if init_sigma_with_unit_variance else sigma_max
    return cls(jnp.asarray(timesteps, jnp.float32), jnp.asarray(sigmas), prediction_type, float(init))

  def scale_model_input(self, sample: jax.Array, i: jax.Array) -> jax.Array:
    """x / √(σ_i² + 1), the model's input at step i."""
    return sample / jnp.sqrt(self.sigmas[i] ** 2 + 1)

  def init_state(self, sample: jax.Array) -> tuple[()]:
    del sample
    return ()

  def step(self, state: tuple[()], model_output: jax.Array, i: jax.Array, sample: jax.Array,
           noise: jax.Array | None = None) -> tuple[jax.Array, tuple[()]]:
    """x at σ_i -> x at σ_{i+1}; deterministic, so `noise` is not used."""
    del noise
    sigma, sigma_next = self.sigmas[i], self.sigmas[i + 1]
    x = sample.astype(jnp.float32)
    if self.prediction_type == 'epsilon':
      x0 = x - sigma * model_output
    elif self.prediction_type == 'v_prediction':
      x0 = model_output * (-sigma / jnp.sqrt(sigma**2 + 1)) + x / (sigma**2 + 1)
    else:
      x0 = model_output
    prev = x + (x - x0) / sigma * (sigma_next - sigma)
    return prev.astype(sample.dtype), state

  def fused_step_spec(self, i: jax.Array) -> fused.StepSpec:
    """Step i for the fused Pallas kernel (`mmjax.pallas_kernels.sampler.guided_step`)."""
    return fused.euler_spec(self.sigmas[i], self.sigmas[i + 1], prediction_type=self.prediction_type)
