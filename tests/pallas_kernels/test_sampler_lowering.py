"""The fused sampler kernels lower for real accelerators (Triton IR for CUDA, Mosaic for TPU) via jax.export.

As tests/pallas_kernels/test_lowering.py: the Pallas lowering rules run on CPU (power-of-two loads, (8, 128)
blocks, scalar reads from the coefficient vector), the Triton and Mosaic compilers do not.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest
from jax import export

from mmjax.diffusion import from_diffusers_config
from mmjax.pallas_kernels import sampler

PLATFORMS = [('cuda', 'triton'), ('tpu', 'mosaic_tpu')]


def _kernels(platform, fn, *args):
  checks = [export.DisabledSafetyCheck.custom_call('__gpu$xla.gpu.triton')] if platform == 'cuda' else []
  text = export.export(jax.jit(fn), platforms=[platform], disabled_checks=checks)(*args).mlir_module()
  return text.count('__gpu$xla.gpu.triton' if platform == 'cuda' else 'tpu_custom_call')


DDIM = {'_class_name': 'DDIMScheduler', 'prediction_type': 'v_prediction'}
EULER = {'_class_name': 'EulerDiscreteScheduler'}
LEARNED = {'_class_name': 'DDPMScheduler', 'variance_type': 'learned_range'}


# Learned-range outputs are refused on TPU (test_sampler.py checks that refusal), so they lower for CUDA only.
@pytest.mark.parametrize('platform, backend, config, ratio', [
    *[(p, b, c, 1) for p, b in PLATFORMS for c in (DDIM, EULER)], ('cuda', 'triton', LEARNED, 2)])
def test_fused_steps_lower(platform, backend, config, ratio):
  scheduler = from_diffusers_config(config, 50, eta=0.5 if config['_class_name'] == 'DDIMScheduler' else 0.0)
  x = jax.ShapeDtypeStruct((8, 32, 32, 4), jnp.bfloat16)
  outputs = jax.ShapeDtypeStruct((2, 8, 32, 32, 4 * ratio), jnp.bfloat16)

  def step(i, outputs, scales, x, noise):
    spec = scheduler.fused_step_spec(i)
    return sampler._guided_step(spec.rule, spec.coefs, outputs, scales, x, noise if spec.rule.uses_noise else None,
                                guided_channels=3, backend=backend, interpret=False, block_elements=None)

  i = jax.ShapeDtypeStruct((), jnp.int32)
  assert _kernels(platform, step, i, outputs, jax.ShapeDtypeStruct((1,), jnp.float32), x, x) == 1


@pytest.mark.parametrize('platform, backend', PLATFORMS)
def test_weighted_cfg_lowers(platform, backend):
  outputs = jax.ShapeDtypeStruct((4, 2, 64, 64, 4), jnp.float32)
  fn = lambda o, s: sampler._weighted_cfg(o, s, guided_channels=4, backend=backend, interpret=False,
                                          block_elements=None)
  assert _kernels(platform, fn, outputs, jax.ShapeDtypeStruct((3,), jnp.float32)) == 1
