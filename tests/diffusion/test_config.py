"""from_diffusers_config: reading shipped configs, and bad input (unsupported values, unknown keys, wrong calls)."""
from __future__ import annotations

import json

import diffusers
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.diffusion import DDIMScheduler, alphas_cumprod, from_diffusers_config, make_betas

# Stable Diffusion 1.5's shipped scheduler_config.json (a PNDM config, which users sample with DDIM).
SD15 = {'_class_name': 'PNDMScheduler', '_diffusers_version': '0.6.0', 'beta_end': 0.012,
        'beta_schedule': 'scaled_linear', 'beta_start': 0.00085, 'num_train_timesteps': 1000,
        'set_alpha_to_one': False, 'skip_prk_steps': True, 'steps_offset': 1, 'trained_betas': None,
        'clip_sample': False}


def test_sd15_config_file_as_ddim(tmp_path):
  path = tmp_path / 'scheduler_config.json'
  path.write_text(json.dumps({**SD15, '_class_name': 'DDIMScheduler'}))
  scheduler = from_diffusers_config(path, 30)
  assert isinstance(scheduler, DDIMScheduler) and scheduler.clip_sample_range is None
  # IPAdapter-Instruct's spec: t_k = 33·k + 1, descending, and ᾱ_prev = ᾱ_0 at the last step.
  np.testing.assert_array_equal(np.asarray(scheduler.timesteps), 33 * np.arange(30)[::-1] + 1)
  ac = alphas_cumprod(make_betas('scaled_linear', 1000, 0.00085, 0.012))
  assert float(scheduler.alpha_bar_prev[-1]) == ac[0]


def test_other_schedulers_keys_are_read_past_as_diffusers_does():
  config = {**SD15, '_class_name': 'EulerDiscreteScheduler'}  # clip_sample, set_alpha_to_one: not Euler keys
  reference = diffusers.EulerDiscreteScheduler.from_config(config)
  reference.set_timesteps(30)
  scheduler = from_diffusers_config(config, 30)
  np.testing.assert_array_equal(np.asarray(scheduler.timesteps), reference.timesteps.numpy())
  np.testing.assert_allclose(np.asarray(scheduler.sigmas), reference.sigmas.numpy(), rtol=1e-6)  # β's linspace ulp


@pytest.mark.parametrize('name', ['linear', 'scaled_linear', 'squaredcos_cap_v2'])
def test_alphas_cumprod_matches_diffusers(name):
  expected = diffusers.DDPMScheduler(beta_schedule=name, beta_start=0.00085, beta_end=0.012).alphas_cumprod.numpy()
  # torch and NumPy linspace round β differently by up to one float32 ulp, which the product carries (≤ 5e-7
  # relative); the cosine schedule has no linspace and matches bitwise.
  actual = alphas_cumprod(make_betas(name, 1000, 0.00085, 0.012))
  if name == 'squaredcos_cap_v2':
    np.testing.assert_array_equal(actual, expected)
  np.testing.assert_allclose(actual, expected, rtol=1e-6, atol=0)


def test_trained_betas():
  betas = np.linspace(1e-3, 2e-2, 50)
  scheduler = from_diffusers_config({'_class_name': 'DDPMScheduler', 'trained_betas': betas.tolist(),
                                     'num_train_timesteps': 50}, 5)
  np.testing.assert_array_equal(np.asarray(scheduler.alpha_bar), alphas_cumprod(betas)[[40, 30, 20, 10, 0]])


@pytest.mark.parametrize('config,key', [
  ({'_class_name': 'DDIMScheduler', 'thresholding': True}, 'thresholding'),
  ({'_class_name': 'DDIMScheduler', 'rescale_betas_zero_snr': True}, 'rescale_betas_zero_snr'),
  ({'_class_name': 'DDIMScheduler', 'beta_schedule': 'sigmoid'}, 'beta_schedule'),
  ({'_class_name': 'DDPMScheduler', 'variance_type': 'learned'}, 'variance_type'),
  ({'_class_name': 'DDPMScheduler', 'prediction_type': 'flow_prediction'}, 'prediction_type'),
  ({'_class_name': 'EulerDiscreteScheduler', 'use_karras_sigmas': True}, 'use_karras_sigmas'),
  ({'_class_name': 'EulerDiscreteScheduler', 'interpolation_type': 'log_linear'}, 'interpolation_type'),
  ({'_class_name': 'DPMSolverMultistepScheduler', 'algorithm_type': 'sde-dpmsolver++'}, 'algorithm_type'),
  ({'_class_name': 'DPMSolverMultistepScheduler', 'solver_order': 3}, 'solver_order'),
  ({'_class_name': 'DPMSolverMultistepScheduler', 'timestep_spacing': 'karras'}, 'timestep_spacing'),
  ({'_class_name': 'DDIMScheduler', 'timestep_spacings': 'leading'}, 'timestep_spacings'),
  ({'_class_name': 'PNDMScheduler'}, '_class_name'),
  ({'beta_schedule': 'linear'}, '_class_name'),
])
def test_unsupported_config_is_an_error_naming_the_key(config, key):
  with pytest.raises(ValueError, match=f'scheduler config: .*{key}'):
    from_diffusers_config(config, 10)


def test_bad_files_and_arguments(tmp_path):
  path = tmp_path / 'scheduler_config.json'
  path.write_text('{"_class_name": ')
  with pytest.raises(ValueError, match='scheduler_config.json: cannot read'):
    from_diffusers_config(path, 10)
  with pytest.raises(ValueError, match='eta=0.5 applies to DDIMScheduler only'):
    from_diffusers_config({'_class_name': 'EulerDiscreteScheduler'}, 10, eta=0.5)
  with pytest.raises(ValueError, match='num_inference_steps=2000'):
    from_diffusers_config({'_class_name': 'DDIMScheduler'}, 2000)


def test_stochastic_steps_need_noise_and_learned_range_needs_its_channels():
  x = jnp.zeros((1, 2, 2, 3))
  ddpm = from_diffusers_config({'_class_name': 'DDPMScheduler'}, 5)
  with pytest.raises(ValueError, match='pass its variance noise'):
    ddpm.step((), x, 0, x)
  ddim = from_diffusers_config({'_class_name': 'DDIMScheduler'}, 5, eta=1.0)
  with pytest.raises(ValueError, match='eta=1.0 needs the variance noise'):
    ddim.step((), x, 0, x)
  learned = from_diffusers_config({'_class_name': 'DDPMScheduler', 'variance_type': 'learned_range'}, 5)
  with pytest.raises(ValueError, match='2×3 channels'):
    learned.step((), x, 0, x, x)
