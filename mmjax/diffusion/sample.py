"""The sampling loop: all N scheduler steps as one jitted `lax.fori_loop`, one host dispatch per batch.

`denoise_fn(params, x, t, cond) -> output` is the model: x [M, ..., C] (channels-last), t [M] the scheduler's
timesteps, cond a pytree of [M, ...] leaves, output [M, ..., C_out]. With guidance over K conditionings, cond's
leaves are [K, B, ...] (least to most conditioned, e.g. class labels (null, y) for DiT) and every step makes a single
model call on the K·B folded batch, then combines the K outputs (see guidance.py).

jax.jit keys its cache on `denoise_fn` and the scheduler's kind and step count: pass the same function object each
call (not a fresh lambda) and a new guidance scale, seed, sample or parameter value reuses the compiled loop.

The guidance combine and the scheduler update after each model call run either as XLA ops (which fuse them into one
loop) or as one fused Pallas kernel (`mmjax.pallas_kernels.sampler`), chosen by `impl` as attention chooses.
"""
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from mmjax.diffusion.guidance import Guidance, combine
from mmjax.diffusion.schedulers import Scheduler
from mmjax.pallas_kernels import sampler as fused

DenoiseFn = Callable[[Any, jax.Array, jax.Array, Any], jax.Array]
IMPLS = ('auto', 'pallas', 'xla')
_ACCELERATORS = ('gpu', 'cuda', 'rocm', 'tpu')


@functools.partial(jax.jit, static_argnames=('denoise_fn', 'impl'))
def sample(denoise_fn: DenoiseFn, params: Any, scheduler: Scheduler, noise: jax.Array, *, cond: Any = None,
           guidance: Guidance | None = None, rng: jax.Array | None = None, impl: str = 'auto') -> jax.Array:
  """Draw samples [B, ..., C] starting from `noise` ~ N(0, I) [B, ..., C] (scaled by init_noise_sigma).

  rng: key for the per-step variance noise of the stochastic samplers (DDPM, DDIM with η > 0); step i uses
  fold_in(rng, i). impl: 'xla'; 'pallas', the fused kernel for schedulers that have one (DDIM, DDPM, Euler; interpret
  mode on CPU), else the guidance alone as a kernel (`weighted_cfg`) before the XLA step, raising ValueError with
  the reason when neither applies; 'auto', the fused kernel on GPU/TPU when it supports the step, else XLA (always on
  CPU). Raises ValueError when guidance's scale count does not match cond's leading axis.
  """
  if impl not in IMPLS:
    raise ValueError(f'sample: impl={impl!r} is not one of {IMPLS}')
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
    step_noise = None if rng is None else jax.random.normal(jax.random.fold_in(rng, i), x.shape, x.dtype)
    if impl != 'xla':
      stepped = _pallas_step(impl, scheduler, state, out.reshape((branches, batch) + out.shape[1:]), guidance, i, x,
                             step_noise)
      if stepped is not None:
        return stepped
    if guidance is not None:
      guided_channels = channels if guidance.channels is None else guidance.channels
      out = combine(out.reshape((branches, batch) + out.shape[1:]), guidance.scales, guided_channels)
    return scheduler.step(state, out, i, x, step_noise)

  x = noise * scheduler.init_noise_sigma
  steps = scheduler.timesteps.shape[0]
  x, _ = jax.lax.fori_loop(0, steps, body, (x, scheduler.init_state(x)))
  return x


def _pallas_step(impl: str, scheduler: Scheduler, state: Any, outputs: jax.Array, guidance: Guidance | None,
                 i: jax.Array, x: jax.Array, noise: jax.Array | None) -> tuple[jax.Array, Any] | None:
  """(sample, state) after step i through the Pallas kernels, or None where `impl` leaves the step to XLA.

  outputs [K, B, ..., C_out]: the K model outputs of this step. Decided while tracing, from static facts only.
  """
  if impl == 'auto' and jax.default_backend() not in _ACCELERATORS:
    return None  # on CPU the kernel would run interpreted: a test tool, not a fast path
  channels = x.shape[-1]
  guided = channels if guidance is None or guidance.channels is None else guidance.channels
  scales = jnp.zeros((0,), jnp.float32) if guidance is None else guidance.scales
  spec = scheduler.fused_step_spec(i) if hasattr(scheduler, 'fused_step_spec') else None
  if spec is None:
    why = f'{type(scheduler).__name__} has no fused step kernel'
  elif spec.rule.uses_noise and noise is None:
    why = 'the step adds variance noise: pass rng='
  else:
    why = fused.refusal(spec.rule, outputs.shape, x.shape, x.dtype, guided)
  if impl == 'auto' and why:
    return None
  if impl == 'pallas' and spec is None and guidance is not None:  # the guidance alone as a kernel, the step in XLA
    why = fused.refusal(None, outputs.shape, outputs.shape[1:], outputs.dtype, guided)
    if not why:
      return scheduler.step(state, fused.weighted_cfg(outputs, scales, guided_channels=guided), i, x, noise)
  if why:
    raise ValueError(f"sample: impl='pallas' cannot serve this step: {why}")
  return fused.guided_step(spec, outputs, scales, x, noise, guided_channels=guided), state
