"""DPM-Solver++ multistep (Lu et al. 2022), orders 1 and 2 ("2M"), as diffusers' `DPMSolverMultistepScheduler`
with algorithm_type='dpmsolver++' and solver_type='midpoint'.

In data prediction m_i = x0(x_i), with α_i = 1/√(σ_i²+1), s_i = σ_i·α_i, λ_i = log α_i − log s_i and h = λ_{i+1} − λ_i:
  first order:  x_{i+1} = (s_{i+1}/s_i)·x_i − α_{i+1}(e^{−h} − 1)·m_i
  second order: the same plus −½·α_{i+1}(e^{−h} − 1)·(h/h_prev)·(m_i − m_{i−1}), h_prev = λ_i − λ_{i−1}.
The first step has no m_{i−1} (first order); the last is first order when σ_N = 0, `euler_at_final`, or
`lower_order_final` with fewer than 15 steps (diffusers' rule). The state carries m_{i−1}.
"""
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from mmjax.diffusion.schedulers.base import VariancePreserving


class DPMSolverState(NamedTuple):
  previous_x0: jax.Array  # m_{i−1}, shaped like the sample, float32
  has_previous: jax.Array  # bool scalar: False before the first step


@struct.dataclass
class DPMSolverMultistepScheduler(VariancePreserving):
  """Per-step tables; index i is the position in `timesteps` (traceable)."""
  timesteps: jax.Array  # [N] int32, descending
  signal: jax.Array  # [N] α_i
  noise_scale: jax.Array  # [N] s_i
  coef_sample: jax.Array  # [N] s_{i+1}/s_i
  coef_x0: jax.Array  # [N] −α_{i+1}(e^{−h} − 1)
  coef_difference: jax.Array  # [N] second-order weight on (m_i − m_{i−1}); 0 where the step is first order
  prediction_type: str = struct.field(pytree_node=False)

  @classmethod
  def create(cls, alphas_cumprod: np.ndarray, timesteps: np.ndarray, *, prediction_type: str, solver_order: int,
             final_sigma_min: bool, final_first_order: bool) -> 'DPMSolverMultistepScheduler':
    """Tables from the training ᾱ [T] (float32) and the descending integer timesteps [N].

    final_first_order: the last step is first order even though σ_N > 0 (see the module docstring).
    """
    ac = np.asarray(alphas_cumprod, np.float32)
    train_sigmas = ((1 - ac) / ac) ** 0.5
    sigmas = np.interp(np.asarray(timesteps), np.arange(len(train_sigmas)), train_sigmas)
    sigmas = np.concatenate([sigmas, [train_sigmas[0] if final_sigma_min else 0.0]]).astype(np.float32)
    sigmas = sigmas.astype(np.float64)  # σ rounded to float32 as diffusers holds it; coefficients in float64
    alpha = 1 / np.sqrt(sigmas**2 + 1)
    scaled = sigmas * alpha
    with np.errstate(divide='ignore', invalid='ignore'):  # σ_N = 0: λ_N = +inf, e^{−h} = 0, both well defined
      lam = np.log(alpha) - np.log(scaled)
      h = lam[1:] - lam[:-1]
      coef_x0 = -alpha[1:] * np.expm1(-h)
      h_prev = np.concatenate([[np.nan], h[:-1]])
      coef_difference = 0.5 * coef_x0 * h / h_prev
    n = len(timesteps)
    second_order = np.arange(n) >= 1
    if solver_order == 1 or final_first_order or sigmas[-1] == 0:
      second_order[-1] = False
    if solver_order == 1:
      second_order[:] = False
    f32 = lambda a: jnp.asarray(a, jnp.float32)
    return cls(jnp.asarray(timesteps, jnp.int32), f32(alpha[:-1]), f32(scaled[:-1]),
               f32(scaled[1:] / scaled[:-1]), f32(coef_x0),
               f32(np.where(second_order, coef_difference, 0.0)), prediction_type)

  def init_state(self, sample: jax.Array) -> DPMSolverState:
    return DPMSolverState(jnp.zeros(sample.shape, jnp.float32), jnp.zeros((), bool))

  def step(self, state: DPMSolverState, model_output: jax.Array, i: jax.Array, sample: jax.Array,
           noise: jax.Array | None = None) -> tuple[jax.Array, DPMSolverState]:
    """x_i -> x_{i+1}; deterministic, so `noise` is not used."""
    del noise
    signal, noise_scale = self.signal[i], self.noise_scale[i]
    if self.prediction_type == 'epsilon':
      x0 = (sample - noise_scale * model_output) / signal
    elif self.prediction_type == 'v_prediction':
      x0 = signal * sample - noise_scale * model_output
    else:
      x0 = model_output
    # Before the first step there is no m_{i−1}: the second-order term is switched off rather than fed zeros.
    difference = jnp.where(state.has_previous, self.coef_difference[i], 0.0) * (x0 - state.previous_x0)
    x = sample.astype(jnp.float32)
    prev = self.coef_sample[i] * x + self.coef_x0[i] * x0 + difference
    return prev.astype(sample.dtype), DPMSolverState(x0.astype(jnp.float32), jnp.ones((), bool))
