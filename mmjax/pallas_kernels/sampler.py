"""Fused sampler steps: K-way classifier-free guidance and a DDIM, ancestral DDPM or Euler update in one kernel.

One step reads the K model outputs, the sample (and the variance noise) and writes the next sample: (K + 2)·N
elements instead of the guidance combine's round trip plus the step's. The jnp steps these kernels replace, and
the tests compare them with, are `mmjax.diffusion.guidance.combine` followed by the scheduler's `step`; a scheduler
with a fused kernel describes its step at index i as a `StepSpec` (`scheduler.fused_step_spec(i)`): the static
rule and the per-step scalars (a traced float32 vector, so the step index and the guidance scales never
recompile). `weighted_cfg` is the combine alone, for steps without a kernel of their own (DPM-Solver, a custom
loop). Backends as for attention: Triton on GPU, Mosaic on TPU, interpret mode on CPU (`support.resolve_backend`).
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from mmjax.pallas_kernels.sampler_kernel import guided, launch, layout, layout_problem, variance_channels
from mmjax.pallas_kernels.support import MOSAIC_TPU, resolve_backend

PREDICTION_TYPES = ('epsilon', 'sample', 'v_prediction')
DDPM_VARIANCES = ('fixed_small', 'fixed_large', 'learned_range')
_DTYPES = (jnp.float32, jnp.bfloat16, jnp.float16)


@dataclasses.dataclass(frozen=True)
class StepRule:
  """What the fused step computes (static): kind 'ddim' | 'ddpm' | 'euler', the model's prediction type, x0
  clipping, DDPM's variance type, and whether the step adds variance noise (DDPM; DDIM with η > 0)."""
  kind: str
  prediction_type: str
  clip_sample_range: float | None = None
  variance_type: str | None = None
  uses_noise: bool = False

  @property
  def output_ratio(self) -> int:
    """Model output channels per sample channel: 2 when learned-variance channels follow ε."""
    return 2 if self.variance_type == 'learned_range' else 1


class StepSpec(NamedTuple):
  """A step at one (traced) index: its rule and its scalars [S] float32 (layout per kind, see the makers)."""
  rule: StepRule
  coefs: jax.Array


def _scalars(*values) -> jax.Array:
  return jnp.stack([jnp.asarray(v, jnp.float32) for v in values])


def ddim_spec(alpha_bar: jax.Array, alpha_bar_prev: jax.Array, std: jax.Array, *, prediction_type: str,
              clip_sample_range: float | None, eta: float) -> StepSpec:
  """DDIM from ᾱ_t, ᾱ_prev and σ_t (scalars); scalars √ᾱ, √(1−ᾱ), √ᾱ_prev, √(1−ᾱ_prev−σ²), σ."""
  return StepSpec(StepRule('ddim', prediction_type, clip_sample_range, uses_noise=eta > 0),
                  _scalars(jnp.sqrt(alpha_bar), jnp.sqrt(1 - alpha_bar), jnp.sqrt(alpha_bar_prev),
                           jnp.sqrt(1 - alpha_bar_prev - std**2), std))


def ddpm_spec(alpha_bar: jax.Array, coef_x0: jax.Array, coef_xt: jax.Array, log_beta: jax.Array,
              log_posterior_variance: jax.Array, noise_mask: jax.Array, *, prediction_type: str,
              variance_type: str, clip_sample_range: float | None) -> StepSpec:
  """Ancestral DDPM (`DDPMScheduler`'s tables at one index); scalars √ᾱ, √(1−ᾱ), c1, c2, log β, log β̃ and the
  noise factor: the t > 0 mask (learned range, the σ comes from v in-kernel) or mask·σ (fixed variances)."""
  if variance_type == 'learned_range':
    noise_factor = noise_mask
  else:
    log_variance = log_beta if variance_type == 'fixed_large' else log_posterior_variance
    noise_factor = noise_mask * jnp.exp(0.5 * log_variance)
  return StepSpec(StepRule('ddpm', prediction_type, clip_sample_range, variance_type, uses_noise=True),
                  _scalars(jnp.sqrt(alpha_bar), jnp.sqrt(1 - alpha_bar), coef_x0, coef_xt, log_beta,
                           log_posterior_variance, noise_factor))


def euler_spec(sigma: jax.Array, sigma_next: jax.Array, *, prediction_type: str) -> StepSpec:
  """Euler in σ space; scalars σ, σ_next − σ, −σ/√(σ²+1), σ²+1."""
  return StepSpec(StepRule('euler', prediction_type),
                  _scalars(sigma, sigma_next - sigma, -sigma / jnp.sqrt(sigma**2 + 1), sigma**2 + 1))


def _x0_and_eps(prediction_type: str, out, x, sa, s1m):
  """(x0, ε) from the guided output as `mmjax.diffusion.parameterization.x0_and_eps` computes them."""
  if prediction_type == 'epsilon':
    return (x - s1m * out) / sa, out
  if prediction_type == 'sample':
    return out, (x - sa * out) / s1m
  return sa * x - s1m * out, sa * out + s1m * x


def _step_body(coef_ref, *refs, rule: StepRule, num_branches: int, width: int, period: int, guided_channels: int,
               branch_dtype, first_scale: int):
  branch_refs, rest = refs[:num_branches], refs[num_branches:]
  x_ref, o_ref = rest[0], rest[-1]
  out = guided(coef_ref, branch_refs, first_scale=first_scale, width=width, ratio=rule.output_ratio, period=period,
               guided_channels=guided_channels, out_dtype=branch_dtype)
  x = x_ref[...].astype(jnp.float32)
  c = [coef_ref[j] for j in range(first_scale)]
  if rule.kind == 'euler':
    sigma, dt, v_coef, v_denom = c
    if rule.prediction_type == 'epsilon':
      x0 = x - sigma * out
    elif rule.prediction_type == 'v_prediction':
      x0 = out * v_coef + x / v_denom
    else:
      x0 = out
    prev = x + (x - x0) / sigma * dt
  else:
    x0, eps = _x0_and_eps(rule.prediction_type, out, x, c[0], c[1])
    if rule.clip_sample_range is not None:
      x0 = jnp.clip(x0, -rule.clip_sample_range, rule.clip_sample_range)
    if rule.kind == 'ddim':
      prev = c[2] * x0 + c[3] * eps
      if rule.uses_noise:
        prev = prev + c[4] * rest[1][...].astype(jnp.float32)
    else:
      prev = c[2] * x0 + c[3] * x
      if rule.variance_type == 'learned_range':
        frac = (variance_channels(branch_refs[-1], width) + 1) / 2
        noise_factor = c[6] * jnp.exp(0.5 * (frac * c[4] + (1 - frac) * c[5]))
      else:
        noise_factor = c[6]
      prev = prev + noise_factor * rest[1][...].astype(jnp.float32)
  o_ref[...] = prev.astype(o_ref.dtype)


def refusal(rule: StepRule | None, output_shape: tuple[int, ...], sample_shape: tuple[int, ...], dtype: Any,
            guided_channels: int, *, backend: str | None = None) -> str:
  """Why the fused kernel can't serve this step ('' when it can).

  output_shape [K, B, ..., C_out] (the K stacked model outputs); sample_shape [B, ..., C]; rule None asks about
  `weighted_cfg` alone. backend: None (the current platform's family), 'triton' or 'mosaic_tpu'.
  """
  backend, _ = resolve_backend(backend, True)
  if jnp.dtype(dtype) not in [jnp.dtype(d) for d in _DTYPES]:
    return f'dtype {jnp.dtype(dtype)} is not supported (float32, bfloat16, float16)'
  if backend == MOSAIC_TPU and jnp.dtype(dtype) == jnp.float16:
    return 'float16 is not supported on TPU'
  if tuple(output_shape[1:-1]) != tuple(sample_shape[:-1]):
    return f'model outputs {tuple(output_shape)} do not match the sample {tuple(sample_shape)} (as [K, B, ..., C])'
  channels, out_channels = sample_shape[-1], output_shape[-1]
  size = math.prod(sample_shape)
  if rule is None:
    if not 0 < guided_channels <= out_channels:
      return f'guidance over {guided_channels} of {out_channels} output channels'
    period = out_channels if guided_channels < out_channels else 1
    return layout_problem(size, out_channels, 1, period, backend)
  if rule.prediction_type not in PREDICTION_TYPES:
    return f'prediction_type {rule.prediction_type!r} is not supported'
  if rule.kind == 'ddpm' and rule.variance_type not in DDPM_VARIANCES:
    return f'variance_type {rule.variance_type!r} is not supported'
  if out_channels != rule.output_ratio * channels:
    return f'the {rule.kind} step takes {rule.output_ratio}×{channels} model output channels, got {out_channels}'
  if not 0 < guided_channels <= channels:
    return f'guidance over {guided_channels} channels: the fused steps guide ε channels only (at most {channels})'
  period = channels if guided_channels < channels or rule.output_ratio == 2 else 1
  return layout_problem(size, channels, rule.output_ratio, period, backend)


def _check(rule, outputs, sample_shape, dtype, guided_channels, backend, what):
  why = refusal(rule, outputs.shape, sample_shape, dtype, guided_channels, backend=backend)
  if why:
    raise ValueError(f'{what}: {why}')


def guided_step(spec: StepSpec, outputs: jax.Array, scales: jax.Array, sample: jax.Array,
                noise: jax.Array | None = None, *, guided_channels: int | None = None, backend: str | None = None,
                interpret: Any = None, block_elements: int | None = None) -> jax.Array:
  """The next sample [B, ..., C] in sample.dtype: `step(combine(outputs, scales, guided_channels), sample, noise)`.

  outputs [K, B, ..., C_out] (least to most conditioned; K = 1 without guidance), scales [K − 1], noise ~ N(0, I)
  shaped like sample when spec.rule.uses_noise. guided_channels: guide channels [0, g) of ε (None: all C).
  block_elements: elements per operand block (None: the backend's default). Raises ValueError naming why a
  request is not supported (`refusal`).
  """
  rule = spec.rule
  channels = sample.shape[-1]
  guided_channels = channels if guided_channels is None else guided_channels
  backend, interpret = resolve_backend(backend, interpret)
  _check(rule, outputs, sample.shape, sample.dtype, guided_channels, backend, f'fused {rule.kind} step')
  if scales.shape != (outputs.shape[0] - 1,):
    raise ValueError(f'fused {rule.kind} step: {outputs.shape[0]} model outputs need {outputs.shape[0] - 1} scales, '
                     f'got shape {scales.shape}')
  if rule.uses_noise and (noise is None or noise.shape != sample.shape):
    raise ValueError(f'fused {rule.kind} step: needs variance noise shaped like the sample {sample.shape}')
  return _guided_step(rule, spec.coefs, outputs, scales, sample, noise if rule.uses_noise else None,
                      guided_channels=guided_channels, backend=backend, interpret=interpret,
                      block_elements=block_elements)


@functools.partial(jax.jit, static_argnames=('rule', 'guided_channels', 'backend', 'interpret', 'block_elements'))
def _guided_step(rule, step_coefs, outputs, scales, sample, noise, *, guided_channels, backend, interpret,
                 block_elements):
  k, channels = outputs.shape[0], sample.shape[-1]
  period = channels if guided_channels < channels or rule.output_ratio == 2 else 1
  lay = layout(sample.size, channels, rule.output_ratio, period, backend, block_elements)
  body = functools.partial(_step_body, rule=rule, num_branches=k, width=lay.width, period=period,
                           guided_channels=guided_channels, branch_dtype=outputs.dtype,
                           first_scale=step_coefs.shape[0])
  extras = [sample.reshape(lay.rows, lay.width)]
  if noise is not None:
    extras.append(noise.reshape(lay.rows, lay.width))
  coefs = jnp.concatenate([step_coefs, scales.astype(jnp.float32)])
  out = launch(body, coefs, outputs.reshape(k, lay.rows, lay.width * lay.ratio), extras, sample.dtype, lay=lay,
               backend=backend, interpret=interpret, name=f'mmjax_guided_{rule.kind}_step')
  return out.reshape(sample.shape)


def _cfg_body(coef_ref, *refs, num_branches: int, width: int, period: int, guided_channels: int):
  o_ref = refs[-1]
  o_ref[...] = guided(coef_ref, refs[:num_branches], first_scale=0, width=width, ratio=1, period=period,
                      guided_channels=guided_channels, out_dtype=o_ref.dtype).astype(o_ref.dtype)


def weighted_cfg(outputs: jax.Array, scales: jax.Array, *, guided_channels: int | None = None,
                 backend: str | None = None, interpret: Any = None, block_elements: int | None = None) -> jax.Array:
  """K-way weighted guidance ε_0 + Σ_{k≥1} s_k·(ε_k − ε_{k−1}) as one kernel: `combine(outputs, scales, g)`.

  outputs [K, B, ..., C_out] (K = 4 is IPAdapter-Instruct's (ε_U, ε_I, ε_E, ε_full)), scales [K − 1]; channels
  from guided_channels on (default: all guided) come from outputs[K − 1]. Returns [B, ..., C_out].
  """
  k, out_channels = outputs.shape[0], outputs.shape[-1]
  guided_channels = out_channels if guided_channels is None else guided_channels
  backend, interpret = resolve_backend(backend, interpret)
  _check(None, outputs, outputs.shape[1:], outputs.dtype, guided_channels, backend, 'weighted_cfg')
  if k < 2 or scales.shape != (k - 1,):
    raise ValueError(f'weighted_cfg: {k} model outputs need {k - 1} >= 1 scales, got shape {scales.shape}')
  return _weighted_cfg(outputs, scales, guided_channels=guided_channels, backend=backend, interpret=interpret,
                       block_elements=block_elements)


@functools.partial(jax.jit, static_argnames=('guided_channels', 'backend', 'interpret', 'block_elements'))
def _weighted_cfg(outputs, scales, *, guided_channels, backend, interpret, block_elements):
  k, out_channels = outputs.shape[0], outputs.shape[-1]
  period = out_channels if guided_channels < out_channels else 1
  size = outputs.size // k
  lay = layout(size, out_channels, 1, period, backend, block_elements)
  body = functools.partial(_cfg_body, num_branches=k, width=lay.width, period=period,
                           guided_channels=guided_channels)
  out = launch(body, scales.astype(jnp.float32), outputs.reshape(k, lay.rows, lay.width), [], outputs.dtype,
               lay=lay, backend=backend, interpret=interpret, name='mmjax_weighted_cfg')
  return out.reshape(outputs.shape[1:])

