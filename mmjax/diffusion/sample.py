"""The sampling loop: all N scheduler steps as one jitted `lax.fori_loop`, one host dispatch per batch.

`denoise_fn(params, x, t, cond) -> output` is the model: x [M, ..., C] (channels-last), t [M] the scheduler's
timesteps, cond a pytree of [M, ...] leaves, output [M, ..., C_out]. With guidance over K conditionings, cond's
leaves are [K, B, ...] (least to most conditioned, e.g. class labels (null, y) for DiT) and every step makes a single
model call on the K·B folded batch, then combines the K outputs (see guidance.py).

jax.jit keys its cache on `denoise_fn` and the scheduler's kind and step count: pass the same function object each
call (not a fresh lambda) and a new guidance scale, seed, sample or parameter value reuses the compiled loop.
"""
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from mmjax.diffusion.guidance import Guidance, combine
from mmjax.diffusion.schedulers import Scheduler

DenoiseFn = Callable[[Any, jax.Array, jax.Array, Any], jax.Array]


@functools.partial(jax.jit, static_argnames=('denoise_fn',))
def sample(denoise_fn: DenoiseFn, params: Any, scheduler: Scheduler, noise: jax.Array, *, cond: Any = None,
           guidance: Guidance | None = None, rng: jax.Array | None = None) -> jax.Array:
  """Draw samples [B, ..., C] starting from `noise` ~ N(0, I) [B, ..., C] (scaled by init_noise_sigma).

  rng: key for the per-step variance noise of the stochastic samplers (DDPM, DDIM with η > 0); step i uses
  fold_in(rng, i). Raises ValueError when guidance's scale count does not match cond's leading axis.
  """
  branches = 1 if guidance is None else guidance.num_branches
  batch, channels = noise.shape[0], noise.shape[-1]
  folded_cond = cond
  if guidance is not None:
    for leaf in jax.tree.leaves(cond):
      if leaf.shape[:2] != (branches, batch):
        raise ValueError(f'guidance has {branches - 1} scales, so cond leaves must be [K={branches}, B={batch}, ...]; '
                         f'got a leaf of shape {leaf.shape}')
    # [K, B, ...] -> [K·B, ...]: the K conditionings become one batch, so each step is one model call.
    folded_cond = jax.tree.map(lambda c: c.reshape((branches * batch,) + c.shape[2:]), cond)

  def body(i, carry):
    x, state = carry
    model_input = scheduler.scale_model_input(x, i)
    t = jnp.full((branches * batch,), scheduler.timesteps[i])
    out = denoise_fn(params, jnp.concatenate([model_input] * branches), t, folded_cond)
    if guidance is not None:
      guided_channels = channels if guidance.channels is None else guidance.channels
      out = combine(out.reshape((branches, batch) + out.shape[1:]), guidance.scales, guided_channels)
    step_noise = None if rng is None else jax.random.normal(jax.random.fold_in(rng, i), x.shape, x.dtype)
    return scheduler.step(state, out, i, x, step_noise)

  x = noise * scheduler.init_noise_sigma
  steps = scheduler.timesteps.shape[0]
  x, _ = jax.lax.fori_loop(0, steps, body, (x, scheduler.init_state(x)))
  return x
