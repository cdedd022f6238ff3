"""Dense / DenseGeneral: numerics against matmuls, fan-in aware init, logical axis names."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.nn import Dense, DenseGeneral
from tests.numerics import assert_close_programs

P = jax.sharding.PartitionSpec
RNG = np.random.default_rng(0)


def randn(*shape: int) -> np.ndarray:
  return RNG.standard_normal(shape).astype(np.float32)


def test_dense_matches_matmul_and_axes():
  x, kernel, bias = randn(2, 5, 6), randn(6, 4), randn(4)
  layer = Dense(4, ('embed', 'mlp'))
  out = layer.apply({'params': {'kernel': kernel, 'bias': bias}}, x)
  assert_close_programs(out, x @ kernel + bias)
  spec = nn.get_partition_spec(jax.eval_shape(layer.init, jax.random.key(0), x))['params']
  assert spec == {'kernel': P('embed', 'mlp'), 'bias': P('mlp')}


def test_dense_dtype_and_no_bias():
  x = jnp.ones((3, 6), jnp.float32)
  layer = Dense(4, ('embed', 'mlp'), use_bias=False, dtype=jnp.bfloat16)
  variables = jax.eval_shape(layer.init, jax.random.key(0), x)
  assert set(variables['params']) == {'kernel'}
  assert nn.unbox(variables)['params']['kernel'].dtype == jnp.float32
  assert jax.eval_shape(layer.apply, variables, x).dtype == jnp.bfloat16


def test_dense_general_projects_to_heads_and_back():
  x = randn(2, 5, 12)
  q_params = {'kernel': randn(12, 3, 4), 'bias': randn(3, 4)}
  h = DenseGeneral((3, 4), ('embed', 'heads', 'head_dim')).apply({'params': q_params}, x)
  assert h.shape == (2, 5, 3, 4)
  assert_close_programs(h.reshape(2, 5, 12), x @ q_params['kernel'].reshape(12, 12) + q_params['bias'].reshape(12))

  o_layer = DenseGeneral(7, ('heads', 'head_dim', 'embed'), axis=(-2, -1))
  o_params = {'kernel': randn(3, 4, 7), 'bias': randn(7)}
  y = o_layer.apply({'params': o_params}, h)
  assert y.shape == (2, 5, 7)
  assert_close_programs(y, h.reshape(2, 5, 12) @ o_params['kernel'].reshape(12, 7) + o_params['bias'])
  spec = nn.get_partition_spec(jax.eval_shape(o_layer.init, jax.random.key(0), h))['params']
  assert spec == {'kernel': P('heads', 'head_dim', 'embed'), 'bias': P('embed')}


def test_dense_general_contracts_non_trailing_axes():
  x = randn(2, 3, 4, 5)  # contract axes 1 and 3 -> [2, 4, 6]
  kernel = randn(3, 5, 6)
  y = DenseGeneral(6, ('heads', 'head_dim', 'embed'), axis=(1, 3), use_bias=False).apply(
      {'params': {'kernel': kernel}}, x)
  assert_close_programs(y, np.einsum('bhsd,hde->bse', x, kernel))


def test_dense_general_init_counts_all_contracted_axes():
  # lecun_normal: std = 1/sqrt(fan_in) with fan_in = H * D = 256, not D = 16 alone.
  layer = DenseGeneral(64, ('heads', 'head_dim', 'embed'), axis=(-2, -1), use_bias=False)
  kernel = nn.unbox(jax.jit(layer.init)(jax.random.key(0), jnp.ones((1, 16, 16))))['params']['kernel']
  assert kernel.shape == (16, 16, 64)
  np.testing.assert_allclose(np.std(kernel), 1 / 16, rtol=0.1)


def test_dense_general_rejects_wrong_axis_names():
  with pytest.raises(ValueError, match='kernel_axes'):
    jax.eval_shape(DenseGeneral((3, 4), ('embed', 'heads')).init, jax.random.key(0), jnp.ones((1, 12)))
