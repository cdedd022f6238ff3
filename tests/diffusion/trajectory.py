"""Run one sampler trajectory in diffusers and in mmjax with the same model outputs and the same noise.

The stand-in model is out_i = r_i + 0.9·[x_in, 0] with fixed random r_i ~ N(0, 0.3²): each output depends on the
sample it sees, so errors propagate along the chain as they would with a network, and, as a denoiser's would, the
ε (or v) output tracks the unit-variance model input, which keeps samples O(1) instead of letting
x0 = (x − √(1−ᾱ)·ε)/√ᾱ blow up at high noise. For 'learned_range' the extra channels of r_i are uniform in [−1, 1].
Arrays are channels-last [B, H, W, C] in mmjax and NCHW in diffusers.
"""
from __future__ import annotations

import diffusers
import jax
import jax.numpy as jnp
import numpy as np
import torch
from diffusers.schedulers import scheduling_ddpm

SHAPE = (2, 4, 4, 3)
INPUT_WEIGHT = 0.9


def make_inputs(steps: int, out_channels: int, seed: int = 0) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  c = SHAPE[-1]
  outputs = 0.3 * rng.standard_normal((steps, *SHAPE[:-1], out_channels)).astype(np.float32)
  outputs[..., c:] = rng.uniform(-1, 1, outputs[..., c:].shape)
  return {'init': rng.standard_normal(SHAPE).astype(np.float32), 'outputs': outputs,
          'noise': rng.standard_normal((steps, *SHAPE)).astype(np.float32)}


def _nchw(x: np.ndarray) -> torch.Tensor:
  return torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, -1, 1)))


def _model_torch(outputs: np.ndarray, x: torch.Tensor, i: int) -> torch.Tensor:
  out = _nchw(outputs[i])
  return out + INPUT_WEIGHT * torch.cat([x, torch.zeros(x.shape[0], out.shape[1] - x.shape[1], *x.shape[2:])], dim=1)


def _model_jax(outputs: jax.Array, x: jax.Array, i: jax.Array) -> jax.Array:
  out = outputs[i]
  return out + INPUT_WEIGHT * jnp.pad(x, [(0, 0)] * 3 + [(0, out.shape[-1] - x.shape[-1])])


def diffusers_trajectory(config: dict, steps: int, inputs: dict, monkeypatch, eta: float = 0.0
                         ) -> tuple[np.ndarray, np.ndarray, float]:
  """(timesteps [N], samples after each step [N, *SHAPE] channels-last, init_noise_sigma)."""
  scheduler = getattr(diffusers, config['_class_name']).from_config(config)
  scheduler.set_timesteps(steps)
  noise = [None]
  monkeypatch.setattr(scheduling_ddpm, 'randn_tensor', lambda *a, **k: noise[0])
  x = _nchw(inputs['init']) * scheduler.init_noise_sigma
  samples = []
  for i, t in enumerate(scheduler.timesteps):
    out = _model_torch(inputs['outputs'], scheduler.scale_model_input(x, t), i)
    noise[0] = _nchw(inputs['noise'][i])
    kwargs = {'eta': eta, 'variance_noise': noise[0]} if config['_class_name'] == 'DDIMScheduler' else {}
    x = scheduler.step(out, t, x, **kwargs).prev_sample
    samples.append(np.moveaxis(x.numpy(), 1, -1))
  return scheduler.timesteps.numpy(), np.stack(samples), float(scheduler.init_noise_sigma)


@jax.jit
def mmjax_trajectory(scheduler, init: jax.Array, outputs: jax.Array, noise: jax.Array) -> jax.Array:
  """The whole chain as one jitted `lax.scan` over the traced step index: samples after each step [N, *SHAPE]."""
  x = init * scheduler.init_noise_sigma

  def body(carry, i):
    x, state = carry
    out = _model_jax(outputs, scheduler.scale_model_input(x, i), i)
    x, state = scheduler.step(state, out, i, x, noise[i])
    return (x, state), x

  steps = scheduler.timesteps.shape[0]
  _, samples = jax.lax.scan(body, (x, scheduler.init_state(x)), jnp.arange(steps))
  return samples
