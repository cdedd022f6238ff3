"""RMSNorm vs HF Qwen2RMSNorm and LayerNorm vs torch.nn.LayerNorm, with non-trivial weights."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers.models.qwen2.modeling_qwen2 import Qwen2RMSNorm

from mmjax.nn import LayerNorm, RMSNorm
from tests.numerics import assert_close_torch

P = jax.sharding.PartitionSpec


def _inputs(shape=(2, 5, 16), seed=0):
  rng = np.random.default_rng(seed)
  return (3.0 * rng.standard_normal(shape) + 1.0).astype(np.float32), rng.standard_normal(shape[-1:]).astype(
      np.float32)


def test_rmsnorm_matches_qwen2():
  x, w = _inputs()
  ref = Qwen2RMSNorm(16, eps=1e-5)
  ref.weight.data = torch.from_numpy(w)
  expected = ref(torch.from_numpy(x)).detach().numpy()
  layer = RMSNorm(eps=1e-5)
  out = layer.apply({'params': {'scale': jnp.asarray(w)}}, jnp.asarray(x))
  assert_close_torch(out, expected)
  assert nn.get_partition_spec(jax.eval_shape(layer.init, jax.random.key(0), x))['params']['scale'] == P('embed')


def test_rmsnorm_bf16_casts_back_before_scaling():
  x, w = _inputs(seed=1)
  ref = Qwen2RMSNorm(16, eps=1e-6).to(torch.bfloat16)
  ref.weight.data = torch.from_numpy(w).to(torch.bfloat16)
  expected = ref(torch.from_numpy(x).to(torch.bfloat16)).detach().float().numpy()
  out = RMSNorm(param_dtype=jnp.bfloat16).apply({'params': {'scale': jnp.asarray(w, jnp.bfloat16)}},
                                                jnp.asarray(x, jnp.bfloat16))
  assert out.dtype == jnp.bfloat16
  # Torch and XLA may round the float32 rsqrt differently in its last bit, which can flip a bf16 rounding now and
  # then; multiplying in float32 before the cast (the wrong order) changes about a quarter of the 160 values.
  out = np.asarray(out.astype(jnp.float32))
  assert np.sum(out != expected) <= 2
  np.testing.assert_allclose(out, expected, rtol=2 ** -8, atol=0)


@pytest.mark.parametrize('use_scale,use_bias', [(True, True), (True, False), (False, False)])
def test_layernorm_matches_torch(use_scale, use_bias):
  x, w = _inputs(seed=2)
  b = np.linspace(-1, 1, 16, dtype=np.float32)
  ref = torch.nn.LayerNorm(16, eps=1e-5, elementwise_affine=use_scale, bias=use_bias)
  params = {}
  if use_scale:
    ref.weight.data = torch.from_numpy(w)
    params['scale'] = jnp.asarray(w)
  if use_bias:
    ref.bias.data = torch.from_numpy(b)
    params['bias'] = jnp.asarray(b)
  expected = ref(torch.from_numpy(x)).detach().numpy()
  layer = LayerNorm(eps=1e-5, use_scale=use_scale, use_bias=use_bias)
  out = layer.apply({'params': params}, jnp.asarray(x))
  assert_close_torch(out, expected)
  assert set(jax.eval_shape(layer.init, jax.random.key(0), x).get('params', {})) == set(params)


def test_layernorm_dtype_and_axes():
  x = jnp.ones((2, 3, 8), jnp.bfloat16)
  layer = LayerNorm(feature_axis='norm')
  variables = jax.eval_shape(layer.init, jax.random.key(0), x)
  assert jax.eval_shape(layer.apply, variables, x).dtype == jnp.float32  # bf16 promoted with float32 params
  assert jax.eval_shape(LayerNorm(dtype=jnp.bfloat16).apply, variables, x).dtype == jnp.bfloat16
  spec = nn.get_partition_spec(variables)['params']
  assert spec == {'scale': P('norm'), 'bias': P('norm')}
