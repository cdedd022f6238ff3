"""Respacing and the learned-range DDPM step against a NumPy re-derivation of guided-diffusion's formulas.

The reference below is written from guided-diffusion's definitions (respace.py, gaussian_diffusion.py) in float64:
section-wise strided timesteps, the respaced betas 1 − ᾱ[t_i]/ᾱ[t_{i−1}], the posterior variance with β̃_0 clipped
to β̃_1, and the log-variance interpolation log σ² = f·log β + (1 − f)·log β̃, f = (v + 1)/2.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from mmjax.diffusion import DDPMScheduler, alphas_cumprod, from_diffusers_config, respace_betas, space_timesteps
from mmjax.diffusion.schedules import squaredcos_cap_v2_betas
from tests.diffusion.trajectory import INPUT_WEIGHT, SHAPE, make_inputs, mmjax_trajectory
from tests.numerics import assert_close


def reference_space_timesteps(T: int, sections: str) -> list[int]:
  if sections.startswith('ddim'):
    count = int(sections[4:])
    stride = next(s for s in range(1, T) if len(range(0, T, s)) == count)
    return list(range(0, T, stride))
  counts = [int(c) for c in sections.split(',')]
  sizes = [T // len(counts) + (k < T % len(counts)) for k in range(len(counts))]
  starts = np.cumsum([0] + sizes[:-1])
  kept = set()
  for start, size, count in zip(starts, sizes, counts):
    stride = 1 if count <= 1 else (size - 1) / (count - 1)
    position = 0.0
    for _ in range(count):
      kept.add(int(start) + round(position))
      position += stride
  return sorted(kept)


def reference_cosine_alphas_cumprod(T: int) -> np.ndarray:
  f = lambda s: math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2
  return np.cumprod([1 - min(1 - f((t + 1) / T) / f(t / T), 0.999) for t in range(T)])


def reference_learned_range_chain(use: list[int], init, outputs, noise) -> np.ndarray:
  """guided-diffusion's p_sample_loop over the respaced chain, clip_denoised=True, the same stand-in model."""
  full = reference_cosine_alphas_cumprod(1000)
  alpha_bar = full[use]
  alpha_bar_prev = np.append(1.0, alpha_bar[:-1])
  betas = 1 - alpha_bar / alpha_bar_prev
  posterior_variance = betas * (1 - alpha_bar_prev) / (1 - alpha_bar)
  log_posterior = np.log(np.append(posterior_variance[1], posterior_variance[1:]))
  c = SHAPE[-1]
  x, samples = init.astype(np.float64), []
  for k, t in enumerate(reversed(range(len(use)))):  # respaced index t runs N−1 .. 0
    out = outputs[k] + INPUT_WEIGHT * np.concatenate([x, np.zeros_like(x)], axis=-1)
    eps, v = out[..., :c], out[..., c:]
    frac = (v + 1) / 2
    log_var = frac * np.log(betas[t]) + (1 - frac) * log_posterior[t]
    x0 = np.clip(np.sqrt(1 / alpha_bar[t]) * x - np.sqrt(1 / alpha_bar[t] - 1) * eps, -1, 1)
    mean = (betas[t] * np.sqrt(alpha_bar_prev[t]) / (1 - alpha_bar[t]) * x0
            + (1 - alpha_bar_prev[t]) * np.sqrt(1 - betas[t]) / (1 - alpha_bar[t]) * x)
    x = mean + (t != 0) * np.exp(0.5 * log_var) * noise[k]
    samples.append(x)
  return np.stack(samples)


@pytest.mark.parametrize('sections', ['250', 'ddim50', '10,15,20', '7', 'ddim25'])
def test_space_timesteps_matches_reference(sections):
  np.testing.assert_array_equal(space_timesteps(1000, sections), reference_space_timesteps(1000, sections))


def test_space_250_keeps_both_ends_and_equals_linspace():
  kept = space_timesteps(1000, '250')
  assert kept[0] == 0 and kept[-1] == 999 and len(kept) == 250
  # Object Images samples with these 250 steps; diffusers' 'linspace' spacing reproduces them.
  np.testing.assert_array_equal(kept, np.linspace(0, 999, 250).round())


@pytest.mark.parametrize('sections,match', [('1001', 'cannot keep 1001'), ('ddim999', 'exactly 999')])
def test_space_timesteps_rejects_impossible_counts(sections, match):
  with pytest.raises(ValueError, match=match):
    space_timesteps(1000, sections)


def test_respaced_betas_reproduce_the_kept_alpha_bars():
  ac = reference_cosine_alphas_cumprod(1000)
  use = space_timesteps(1000, '250')
  betas = respace_betas(ac, use)
  np.testing.assert_allclose(np.cumprod(1 - betas), ac[use], rtol=1e-12)
  np.testing.assert_allclose(squaredcos_cap_v2_betas(1000), 1 - ac / np.append(1.0, ac[:-1]), rtol=1e-12, atol=0)


def test_learned_range_ddpm_chain_matches_guided_diffusion():
  use = space_timesteps(1000, '250')
  # guided-diffusion accumulates ᾱ in float64; diffusers' float32 product would cost ~2e-5 over 250 steps.
  train_alpha_bar = np.cumprod(1 - squaredcos_cap_v2_betas(1000))
  scheduler = DDPMScheduler.create(train_alpha_bar, use[::-1],
                                   variance_type='learned_range', prediction_type='epsilon', clip_sample_range=1.0)
  inputs = make_inputs(len(use), 2 * SHAPE[-1], seed=1)
  expected = reference_learned_range_chain(list(use), inputs['init'], inputs['outputs'], inputs['noise'])
  samples = mmjax_trajectory(scheduler, inputs['init'], inputs['outputs'], inputs['noise'])
  assert_close(samples, expected, tol=1e-5, msg='learned-range DDPM vs guided-diffusion')

  # The same chain from the diffusers config the Object Images spec names: identical timesteps, and ᾱ as diffusers
  # keeps it (float32; β_t = 1 − ᾱ_t/ᾱ_prev then differs from float64 by up to 2e-4 relative near t = 0).
  from_config = from_diffusers_config(
    {'_class_name': 'DDPMScheduler', 'beta_schedule': 'squaredcos_cap_v2', 'variance_type': 'learned_range',
     'clip_sample': True, 'timestep_spacing': 'linspace'}, 250)
  np.testing.assert_array_equal(np.asarray(from_config.timesteps), use[::-1])
  np.testing.assert_array_equal(np.asarray(from_config.alpha_bar),
                                alphas_cumprod(squaredcos_cap_v2_betas(1000))[use[::-1]])
