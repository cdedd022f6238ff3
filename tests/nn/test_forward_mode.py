"""Forward-mode autodiff (jax.jvp, jax.jacfwd) through the layers, in the CPU layout and the GPU/TPU one.

Each derivative is checked against reverse mode (jax.jacrev), which the layers' own tests check against torch.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.nn import Dense, DenseGeneral, EncoderBlock, contractions
from mmjax.nn.attention import dot_product_attention
from tests.numerics import assert_close_programs


@pytest.fixture(params=['cpu', 'other'])
def layout(request, monkeypatch):
  """The contraction layout of CPU, and the one GPU and TPU use, whatever the backend."""
  monkeypatch.setattr(contractions, '_on_cpu', lambda: request.param == 'cpu')


def _random(shape, seed):
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def assert_forward_mode_matches_reverse(fn, *args):
  """jacfwd(fn) == jacrev(fn), and jvp(fn) along a random tangent == the reverse-mode Jacobian applied to it."""
  argnums = tuple(range(len(args)))
  leaves, tree = jax.tree.flatten(args)
  tangents = jax.tree.unflatten(tree, [_random(x.shape, 10 + i) for i, x in enumerate(leaves)])

  @jax.jit
  def derivatives(args, tangents):
    _, jvp = jax.jvp(fn, args, tangents)
    return jax.jacfwd(fn, argnums)(*args), jax.jacrev(fn, argnums)(*args), jvp

  forward, reverse, jvp = derivatives(args, tangents)
  assert_close_programs(forward, reverse)
  along = jax.tree.map(lambda jac, t: jnp.tensordot(jac, t, axes=t.ndim), reverse, tangents)
  assert_close_programs(jvp, sum(jax.tree.leaves(along)))


def _apply(layer, x):
  params = nn.unbox(jax.jit(layer.init)(jax.random.key(0), x))['params']
  return lambda params, x: layer.apply({'params': params}, x), params


@pytest.mark.parametrize('layer,x_shape', [
    (Dense(6, ('embed', 'mlp')), (2, 3, 8)),
    (DenseGeneral((2, 3), ('embed', 'heads', 'head_dim')), (2, 3, 8)),                   # [B, S, E] -> [B, S, H, D]
    (DenseGeneral(5, ('heads', 'head_dim', 'embed'), axis=(-2, -1)), (2, 3, 2, 4)),      # [B, S, H, D] -> [B, S, E]
    (DenseGeneral(5, ('heads', 'head_dim', 'embed'), axis=(1, 3)), (2, 2, 3, 4)),        # non-trailing axes
], ids=['dense', 'to_heads', 'from_heads', 'non_trailing'])
def test_linear_layers(layout, layer, x_shape):
  del layout
  x = _random(x_shape, 0)
  fn, params = _apply(layer, x)
  assert_forward_mode_matches_reverse(fn, params, x)


def test_tied_head(layout):
  del layout
  table = _random((11, 8), 1)  # [V, E] read as the LM head's [E, V] kernel
  assert_forward_mode_matches_reverse(lambda x, t: contractions.contract_trailing(x, t, 1, features_first=True),
                                      _random((2, 3, 8), 0), table)


@pytest.mark.parametrize('causal', [True, False])
def test_xla_attention(causal):
  q, k, v = _random((2, 5, 4, 4), 0), _random((2, 6, 2, 4), 1), _random((2, 6, 2, 4), 2)
  mask = jnp.asarray(np.arange(6)[None, None, None, :] < np.array([6, 4])[:, None, None, None])
  attend = lambda q, k, v: dot_product_attention(q, k, v, causal=causal, mask=mask, impl='xla')  # noqa: E731
  assert_forward_mode_matches_reverse(attend, q, k, v)


def test_encoder_block():
  # In the input only: the parameters' tangents take the same contractions as in test_linear_layers.
  x = _random((2, 3, 16), 0)
  fn, params = _apply(EncoderBlock(num_heads=2, mlp_dim=24, attn_impl='xla'), x)
  assert_forward_mode_matches_reverse(lambda x: fn(params, x), x)
