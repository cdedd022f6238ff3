"""What the variance-preserving samplers (DDPM, DDIM, DPM-Solver) share: x_T ~ N(0, I) as is, the model input
unscaled. Euler, which works in sigma space, scales both."""
import jax


class VariancePreserving:
  """init_noise_sigma 1 and an identity scale_model_input; `Stateless` adds the empty step state."""

  @property
  def init_noise_sigma(self) -> float:
    return 1.0

  def scale_model_input(self, sample: jax.Array, i: jax.Array) -> jax.Array:
    del i
    return sample


class Stateless(VariancePreserving):
  """A single-step sampler: nothing carried between steps."""

  def init_state(self, sample: jax.Array) -> tuple[()]:
    del sample
    return ()
