"""Every scheduler against diffusers over whole trajectories: same model outputs, same noise, fp32, ≤ 1e-5.

Euler and DPM-Solver run on Stable Diffusion's schedule, the one they serve. On the linear schedule Euler's samples
reach σ_max·|z| ≈ 500, where one float32 ulp is 3e-5; on the cosine one ᾱ_T ≈ 1e-9 and the stand-in model, unlike a
trained denoiser, then predicts x0 ≈ 10⁴ at the first DPM-Solver step.
"""
from __future__ import annotations

import numpy as np
import pytest

from mmjax.diffusion import from_diffusers_config
from tests.diffusion.trajectory import SHAPE, diffusers_trajectory, make_inputs, mmjax_trajectory

TOL = 1e-5  # the bound for a scheduler against diffusers in fp32
SD = {'beta_schedule': 'scaled_linear', 'beta_start': 0.00085, 'beta_end': 0.012}
COSINE = {'beta_schedule': 'squaredcos_cap_v2'}

CASES = [
  # DDPM: each variance type, ε and v, each spacing.
  ('DDPMScheduler', {'variance_type': 'fixed_small'}, 10, 0.0),
  ('DDPMScheduler', {'variance_type': 'fixed_small', 'prediction_type': 'v_prediction', 'steps_offset': 1}, 10, 0.0),
  ('DDPMScheduler', {**SD, 'variance_type': 'fixed_large', 'timestep_spacing': 'trailing', 'clip_sample': False},
   10, 0.0),
  ('DDPMScheduler', {**SD, 'variance_type': 'fixed_large', 'prediction_type': 'v_prediction',
                     'timestep_spacing': 'linspace'}, 10, 0.0),
  ('DDPMScheduler', {**COSINE, 'variance_type': 'learned_range', 'timestep_spacing': 'linspace'}, 12, 0.0),
  ('DDPMScheduler', {**COSINE, 'variance_type': 'learned_range', 'prediction_type': 'v_prediction',
                     'clip_sample': False}, 12, 0.0),
  # DDIM: η 0 and > 0, leading/trailing, set_alpha_to_one both ways, steps_offset 0 and 1, ε and v.
  ('DDIMScheduler', {**SD, 'clip_sample': False, 'set_alpha_to_one': False, 'steps_offset': 1}, 10, 0.0),
  ('DDIMScheduler', {**SD, 'clip_sample': False, 'prediction_type': 'v_prediction', 'timestep_spacing': 'trailing'},
   10, 0.0),
  ('DDIMScheduler', {'set_alpha_to_one': True, 'steps_offset': 0}, 10, 0.7),
  ('DDIMScheduler', {**SD, 'set_alpha_to_one': False, 'steps_offset': 1, 'prediction_type': 'v_prediction'}, 10, 1.0),
  ('DDIMScheduler', {**COSINE, 'timestep_spacing': 'trailing', 'set_alpha_to_one': False}, 10, 0.5),
  ('DDIMScheduler', {**SD, 'timestep_spacing': 'linspace', 'clip_sample': False}, 10, 0.0),
  # Euler: ε and v, each spacing (leading scales the initial noise by √(σ_max²+1)), both final sigmas.
  ('EulerDiscreteScheduler', SD, 10, 0.0),
  ('EulerDiscreteScheduler', {**SD, 'prediction_type': 'v_prediction', 'timestep_spacing': 'leading',
                              'steps_offset': 1}, 10, 0.0),
  ('EulerDiscreteScheduler', {**SD, 'timestep_spacing': 'trailing', 'final_sigmas_type': 'sigma_min'}, 10, 0.0),
  # DPM-Solver++ 2M: ε and v, each spacing, lower_order_final on both sides of 15 steps, σ_min at the end (the last
  # step second order), euler_at_final, and order 1.
  ('DPMSolverMultistepScheduler', SD, 10, 0.0),
  ('DPMSolverMultistepScheduler', {**SD, 'prediction_type': 'v_prediction', 'timestep_spacing': 'trailing'}, 10, 0.0),
  ('DPMSolverMultistepScheduler', {**SD, 'timestep_spacing': 'leading', 'steps_offset': 1,
                                   'final_sigmas_type': 'sigma_min'}, 16, 0.0),
  ('DPMSolverMultistepScheduler', {**SD, 'final_sigmas_type': 'sigma_min'}, 10, 0.0),
  ('DPMSolverMultistepScheduler', {**SD, 'final_sigmas_type': 'sigma_min', 'euler_at_final': True,
                                   'lower_order_final': False}, 10, 0.0),
  ('DPMSolverMultistepScheduler', {**SD, 'solver_order': 1}, 10, 0.0),
]


@pytest.mark.parametrize('name,overrides,steps,eta', CASES, ids=[f'{c[0]}-{k}' for k, c in enumerate(CASES)])
def test_trajectory_matches_diffusers(name, overrides, steps, eta, monkeypatch):
  config = {'_class_name': name, **overrides}
  learned = overrides.get('variance_type') == 'learned_range'
  inputs = make_inputs(steps, 2 * SHAPE[-1] if learned else SHAPE[-1])
  timesteps, expected, init_noise_sigma = diffusers_trajectory(config, steps, inputs, monkeypatch, eta)

  scheduler = from_diffusers_config(config, steps, eta=eta)
  np.testing.assert_array_equal(np.asarray(scheduler.timesteps), timesteps)
  np.testing.assert_allclose(scheduler.init_noise_sigma, init_noise_sigma, rtol=1e-6)
  samples = mmjax_trajectory(scheduler, inputs['init'], inputs['outputs'], inputs['noise'])
  assert np.isfinite(expected).all()
  np.testing.assert_allclose(samples, expected, rtol=0, atol=TOL, err_msg=f'{name} {overrides} eta={eta}')
