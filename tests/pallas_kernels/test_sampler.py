"""The fused sampler kernels against the jnp steps they replace (combine + Scheduler.step), in interpret mode."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.diffusion import combine, from_diffusers_config
from mmjax.pallas_kernels import sampler
from tests.pallas_kernels.helpers import FORWARD_TOL, assert_close, assert_launch_limits, normal

BACKENDS = ('triton', 'mosaic_tpu')
LEARNED = {'_class_name': 'DDPMScheduler', 'beta_schedule': 'squaredcos_cap_v2', 'variance_type': 'learned_range',
           'timestep_spacing': 'linspace'}


def _reference(scheduler, outputs, scales, guided_channels, i, x, noise):
  guided = outputs[0] if outputs.shape[0] == 1 else combine(outputs, scales, guided_channels)
  return scheduler.step(scheduler.init_state(x), guided, i, x, noise)[0]


def _check(config, *, steps=10, index=3, branches=2, guided_channels=None, out_ratio=1, shape=(2, 8, 8, 4),
           dtype='float32', backend='triton', block_elements=None, eta=0.0):
  dtype = jnp.dtype(dtype)
  scheduler = from_diffusers_config(config, steps, eta=eta)
  rng = np.random.default_rng(index)
  x = jnp.asarray(normal(rng, shape, dtype))
  noise = jnp.asarray(normal(rng, shape, dtype))
  outputs = normal(rng, (branches, *shape[:-1], out_ratio * shape[-1]), dtype)
  if out_ratio == 2:  # learned-range v in [-1, 1], as the model's tanh-free output is trained to be
    outputs[..., shape[-1]:] = np.tanh(outputs[..., shape[-1]:].astype(np.float32)).astype(dtype)
  outputs = jnp.asarray(outputs)
  scales = jnp.asarray(np.linspace(1.5, 4.0, branches - 1), jnp.float32)
  g = shape[-1] if guided_channels is None else guided_channels

  def kernel(i, outputs, scales, x, noise):
    return sampler.guided_step(scheduler.fused_step_spec(i), outputs, scales, x, noise, guided_channels=g,
                               backend=backend, interpret=True, block_elements=block_elements)

  i = jnp.int32(index)
  assert_launch_limits(kernel, i, outputs, scales, x, noise)
  got = jax.jit(kernel)(i, outputs, scales, x, noise)
  want = _reference(scheduler, outputs, scales, g, i, x, noise)
  assert got.dtype == dtype and got.shape == x.shape
  assert_close(got, want, FORWARD_TOL[dtype], f'{config["_class_name"]} {backend} {dtype}')
  return got


@pytest.mark.parametrize('backend', BACKENDS)
@pytest.mark.parametrize('dtype', ['float32', 'bfloat16'])
def test_cfg_ddim_with_eta_and_clipping(backend, dtype):
  _check({'_class_name': 'DDIMScheduler'}, eta=0.7, guided_channels=3, dtype=dtype, backend=backend)


@pytest.mark.parametrize('backend', BACKENDS)
def test_ddim_v_prediction_with_the_four_way_ipadapter_instruct_guidance(backend):
  config = {'_class_name': 'DDIMScheduler', 'prediction_type': 'v_prediction', 'timestep_spacing': 'trailing',
            'clip_sample': False, 'beta_schedule': 'scaled_linear', 'beta_start': 0.00085, 'beta_end': 0.012}
  _check(config, branches=4, index=7, backend=backend)


@pytest.mark.parametrize('dtype', ['float32', 'bfloat16'])
def test_cfg_ddpm_learned_range_as_upstream_dit_guides_it(dtype):
  _check(LEARNED, out_ratio=2, guided_channels=3, dtype=dtype, index=8)  # index 8: the last steps divide by √ᾱ
  _check(LEARNED, out_ratio=2, index=9)  # the final step adds no noise (t = 0)


@pytest.mark.parametrize('backend', BACKENDS)
@pytest.mark.parametrize('variance', ['fixed_small', 'fixed_large'])
def test_ddpm_fixed_variances_sample_prediction(backend, variance):
  config = {'_class_name': 'DDPMScheduler', 'variance_type': variance, 'prediction_type': 'sample'}
  _check(config, backend=backend)


@pytest.mark.parametrize('backend', BACKENDS)
@pytest.mark.parametrize('prediction', ['epsilon', 'v_prediction'])
def test_cfg_euler(backend, prediction):
  config = {'_class_name': 'EulerDiscreteScheduler', 'prediction_type': prediction}
  _check(config, backend=backend, guided_channels=2)
  _check(config, backend=backend, branches=1, index=0)  # no guidance: the step alone, from σ_max


@pytest.mark.parametrize('backend, shape, block_elements', [
    ('triton', (2, 8, 8, 4), 128),  # 4 row blocks of one 128-lane row
    ('mosaic_tpu', (2, 16, 16, 4), 1024),  # 16 rows of 128 lanes in blocks of 8
    ('mosaic_tpu', (2, 16, 20, 4), 1024),  # 20 rows: a ragged last block
])
def test_several_row_blocks(backend, shape, block_elements):
  _check({'_class_name': 'DDIMScheduler'}, eta=0.5, shape=shape, backend=backend, block_elements=block_elements)


def test_learned_range_rows_are_pixels_in_several_blocks():
  _check(LEARNED, out_ratio=2, block_elements=64, index=2)


@pytest.mark.parametrize('backend', BACKENDS)
@pytest.mark.parametrize('dtype', ['float32', 'bfloat16'])
def test_four_way_weighted_cfg(backend, dtype):
  dtype = jnp.dtype(dtype)
  outputs = jnp.asarray(normal(np.random.default_rng(0), (4, 2, 8, 8, 8), dtype))  # ε and learned v channels
  scales = jnp.array([1.0, 5.0, 2.0])  # (s_img, s_text, s_instr)
  for guided_channels in (8, 4, 3):
    got = jax.jit(lambda o, s, g=guided_channels: sampler.weighted_cfg(o, s, guided_channels=g, backend=backend,
                                                                        interpret=True))(outputs, scales)
    assert got.dtype == dtype
    assert_close(got, combine(outputs, scales, guided_channels), FORWARD_TOL[dtype], f'weighted cfg {guided_channels}')


def test_a_traced_step_index_and_new_scales_reuse_one_program():
  scheduler = from_diffusers_config({'_class_name': 'DDIMScheduler'}, 10, eta=0.3)
  rng = np.random.default_rng(0)
  x, noise = (jnp.asarray(normal(rng, (2, 4, 4, 4), 'float32')) for _ in range(2))
  outputs = jnp.asarray(normal(rng, (2, 2, 4, 4, 4), 'float32'))
  traces = []

  @jax.jit
  def step(i, scales):
    traces.append(i)
    return sampler.guided_step(scheduler.fused_step_spec(i), outputs, scales, x, noise, interpret=True)

  results = [step(jnp.int32(i), jnp.array([s])) for i, s in ((0, 1.0), (5, 1.0), (5, 3.0))]
  assert len(traces) == 1
  assert not np.allclose(results[0], results[1]) and not np.allclose(results[1], results[2])
  assert_close(results[2], _reference(scheduler, outputs, jnp.array([3.0]), 4, 5, x, noise), 1e-5, 'step 5')


def test_refusals_name_the_reason():
  rule = from_diffusers_config(LEARNED, 4).fused_step_spec(0).rule
  assert 'lane-dense' in sampler.refusal(rule, (2, 2, 4, 4, 8), (2, 4, 4, 4), jnp.float32, 4, backend='mosaic_tpu')
  assert sampler.refusal(rule, (2, 2, 4, 4, 8), (2, 4, 4, 4), jnp.float32, 4, backend='triton') == ''
  assert 'power of two' in sampler.refusal(rule, (2, 2, 4, 4, 6), (2, 4, 4, 3), jnp.float32, 3, backend='triton')
  assert '2×4 model output channels' in sampler.refusal(rule, (2, 2, 4, 4, 4), (2, 4, 4, 4), jnp.float32, 4)
  assert 'ε channels only' in sampler.refusal(rule, (2, 2, 4, 4, 8), (2, 4, 4, 4), jnp.float32, 6)
  assert 'multiple of 128' in sampler.refusal(None, (2, 1, 5, 5, 4), (1, 5, 5, 4), jnp.float32, 4,
                                              backend='mosaic_tpu')
  assert 'int32' in sampler.refusal(rule, (2, 2, 4, 4, 8), (2, 4, 4, 4), jnp.int32, 4)
  spec = from_diffusers_config(LEARNED, 4).fused_step_spec(0)
  x = jnp.zeros((2, 4, 4, 4))
  with pytest.raises(ValueError, match='fused ddpm step: needs variance noise'):
    sampler.guided_step(spec, jnp.zeros((2, 2, 4, 4, 8)), jnp.ones((1,)), x, interpret=True)
  with pytest.raises(ValueError, match='3 model outputs need 2 scales'):
    sampler.guided_step(spec, jnp.zeros((3, 2, 4, 4, 8)), jnp.ones((1,)), x, x, interpret=True)
  with pytest.raises(ValueError, match='weighted_cfg: 1 model outputs need 0 >= 1 scales'):
    sampler.weighted_cfg(jnp.zeros((1, 2, 4, 4, 8)), jnp.ones((0,)), interpret=True)
