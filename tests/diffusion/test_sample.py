"""Guidance algebra, the jitted sampling loop against a step-by-step loop, its compile count, and bad input."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.diffusion import Guidance, cfg, combine, from_diffusers_config, sample
from tests.numerics import assert_close_programs

B, H, W, C = 2, 4, 4, 4


def _outputs(k: int, channels: int = C, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).standard_normal((k, B, H, W, channels)).astype(np.float32)


def test_two_way_cfg():
  eps_u, eps_c = _outputs(2)
  guided = combine(jnp.stack([eps_u, eps_c]), jnp.array([4.0]), C)
  assert_close_programs(guided, eps_u + 4.0 * (eps_c - eps_u))


def test_four_way_ipadapter_instruct_form_and_its_reduction():
  eps_u, eps_i, eps_e, eps_full = _outputs(4)
  s_img, s_text, s_instr = 1.0, 5.0, 2.0
  guided = combine(jnp.stack([eps_u, eps_i, eps_e, eps_full]), jnp.array([s_img, s_text, s_instr]), C)
  expected = eps_u + s_instr * (eps_full - eps_e) + s_text * (eps_e - eps_i) + s_img * (eps_i - eps_u)
  assert_close_programs(guided, expected)
  # With one scale for every condition the 4-way result is plain CFG between the unconditional and full outputs.
  equal = combine(jnp.stack([eps_u, eps_i, eps_e, eps_full]), jnp.full((3,), 3.0), C)
  assert_close_programs(equal, eps_u + 3.0 * (eps_full - eps_u))


def test_guidance_on_a_subset_of_channels_keeps_the_rest_conditional():
  outputs = _outputs(2, channels=2 * C)  # ε channels then learned-variance channels, as DiT with learn_sigma
  guided = np.asarray(combine(jnp.asarray(outputs), jnp.array([4.0]), 3))  # upstream DiT guides 3 of 4 ε channels
  assert_close_programs(guided[..., :3], outputs[0, ..., :3] + 4.0 * (outputs[1, ..., :3] - outputs[0, ..., :3]))
  np.testing.assert_array_equal(guided[..., 3:], outputs[1, ..., 3:])


def test_scale_count_must_match_the_conditionings():
  with pytest.raises(ValueError, match='3 scales for 3 conditionings'):
    combine(jnp.asarray(_outputs(3)), jnp.array([1.0, 2.0, 3.0]), C)
  scheduler = from_diffusers_config({'_class_name': 'DDIMScheduler'}, 3)
  labels = jnp.zeros((3, B), jnp.int32)  # three conditionings, but 2-way guidance
  with pytest.raises(ValueError, match=r'cond leaves must be \[K=2, B=2, ...\]'):
    sample(_denoise, {'w': jnp.ones(())}, scheduler, jnp.zeros((B, H, W, C)), cond=labels, guidance=cfg(2.0))


TRACES = []


def _denoise(params, x, t, labels):
  """A class-conditional stand-in: ε and a learned-range v from the input, the timestep and the label."""
  TRACES.append(x.shape)  # runs once per trace, so it counts compilations of the loop around it
  scale = params['w'] * (1 + labels.astype(jnp.float32)).reshape(-1, 1, 1, 1)
  eps = 0.9 * x + 0.01 * scale * jnp.sin(t.astype(jnp.float32)).reshape(-1, 1, 1, 1)
  return jnp.concatenate([eps, jnp.tanh(scale * x)], axis=-1)


LEARNED = {'_class_name': 'DDPMScheduler', 'beta_schedule': 'squaredcos_cap_v2', 'variance_type': 'learned_range',
           'timestep_spacing': 'linspace'}


def test_jitted_loop_matches_step_by_step_and_compiles_once():
  scheduler = from_diffusers_config(LEARNED, 8)
  params = {'w': jnp.array(0.5)}
  noise = jax.random.normal(jax.random.key(0), (B, H, W, C))
  labels = jnp.stack([jnp.full((B,), 10), jnp.array([3, 7])])  # (null label, class labels)
  rng = jax.random.key(1)

  x, state = noise * scheduler.init_noise_sigma, scheduler.init_state(noise)
  for i in range(len(scheduler.timesteps)):
    t = jnp.full((2 * B,), scheduler.timesteps[i])
    out = _denoise(params, jnp.concatenate([x, x]), t, labels.reshape(-1))
    out = combine(out.reshape(2, B, H, W, 2 * C), jnp.array([4.0]), C)
    x, state = scheduler.step(state, out, i, x, jax.random.normal(jax.random.fold_in(rng, i), x.shape))

  TRACES.clear()
  samples = sample(_denoise, params, scheduler, noise, cond=labels, guidance=cfg(4.0), rng=rng)
  assert_close_programs(samples, x)
  assert TRACES == [(2 * B, H, W, C)]  # one model call per step on the folded CFG batch

  other = sample(_denoise, params, scheduler, noise, cond=labels, guidance=cfg(1.5), rng=jax.random.key(2))
  sample(_denoise, {'w': jnp.array(0.7)}, scheduler, noise, cond=labels, guidance=Guidance(jnp.array([2.0])), rng=rng)
  assert len(TRACES) == 1, 'a new guidance scale, seed or parameter value recompiled the loop'
  assert not np.allclose(other, samples)

  sample(_denoise, params, from_diffusers_config(LEARNED, 5), noise, cond=labels, guidance=cfg(4.0), rng=rng)
  assert len(TRACES) == 2  # a new step count is a new program: the counter sees compilations


def test_deterministic_sampler_without_guidance():
  scheduler = from_diffusers_config({'_class_name': 'DPMSolverMultistepScheduler'}, 6)
  params = {'w': jnp.array(0.5)}
  noise = jax.random.normal(jax.random.key(0), (B, H, W, C))
  labels = jnp.array([1, 2])
  x, state = noise, scheduler.init_state(noise)
  for i in range(6):
    out = _denoise(params, x, jnp.full((B,), scheduler.timesteps[i]), labels)[..., :C]
    x, state = scheduler.step(state, out, i, x)
  denoise_eps = lambda p, x, t, c: _denoise(p, x, t, c)[..., :C]
  assert_close_programs(sample(denoise_eps, params, scheduler, noise, cond=labels), x)
