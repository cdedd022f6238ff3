"""The written-out CPU gradients of mmjax.nn.contractions agree with JAX's own differentiation of dot_general."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.nn import contractions
from mmjax.nn.contractions import batched_matmul, contract_trailing


def _random(shape, seed, dtype=jnp.float32):
  return jax.random.normal(jax.random.PRNGKey(seed), shape).astype(dtype)


def _grads(fn, *args):
  """Gradients of <fn(*args), cotangent> with a fixed random cotangent, for every argument."""
  out = fn(*args)
  cotangent = _random(out.shape, 99, out.dtype)
  return jax.grad(lambda *a: jnp.sum((fn(*a) * cotangent).astype(jnp.float32)), argnums=tuple(range(len(args))))(
      *args)


def test_the_cpu_path_is_a_custom_vjp():
  x, kernel = _random((2, 3, 4), 0), _random((4, 5), 1)
  jaxpr = str(jax.make_jaxpr(lambda x, k: contract_trailing(x, k, 1))(x, kernel))
  assert ('custom_vjp' in jaxpr) == (jax.default_backend() == 'cpu')


@pytest.mark.parametrize('x_shape,kernel_shape,num_axes', [
    ((2, 7, 16), (16, 24), 1),          # Dense
    ((3, 5, 16), (16, 4, 8), 1),        # q projection [B, S, E] -> [B, S, H, D]
    ((2, 5, 4, 8), (4, 8, 16), 2),      # output projection [B, S, H, D] -> [B, S, E]
    ((6, 16), (16, 3), 1),
])
def test_contract_trailing_matches_dot_general(x_shape, kernel_shape, num_axes):
  x, kernel = _random(x_shape, 0), _random(kernel_shape, 1)
  lead = len(x_shape) - num_axes

  def reference(x, kernel):
    return jax.lax.dot_general(x, kernel, ((tuple(range(lead, x.ndim)), tuple(range(num_axes))), ((), ())))

  ours = jax.jit(lambda x, k: contract_trailing(x, k, num_axes))
  np.testing.assert_allclose(ours(x, kernel), reference(x, kernel), rtol=1e-5, atol=1e-5)
  for got, want in zip(_grads(ours, x, kernel), _grads(reference, x, kernel)):
    assert got.shape == want.shape and got.dtype == want.dtype
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_contract_trailing_features_first_is_a_tied_head():
  x, table = _random((2, 5, 16), 0), _random((40, 16), 1)  # [B, S, E] . [V, E] -> [B, S, V]
  ours = jax.jit(lambda x, t: contract_trailing(x, t, 1, features_first=True))
  reference = lambda x, t: x @ t.T
  np.testing.assert_allclose(ours(x, table), reference(x, table), rtol=1e-5, atol=1e-5)
  for got, want in zip(_grads(ours, x, table), _grads(reference, x, table)):
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('b_transposed', [True, False])
@pytest.mark.parametrize('batch', [(3,), (2, 3)])
def test_batched_matmul_matches_einsum(b_transposed, batch):
  a = _random((*batch, 12, 8), 0)
  b = _random((*batch, 10, 8) if b_transposed else (*batch, 8, 10), 1)
  spec = '...mk,...nk->...mn' if b_transposed else '...mk,...kn->...mn'
  ours = jax.jit(lambda a, b: batched_matmul(a, b, b_transposed=b_transposed))
  reference = lambda a, b: jnp.einsum(spec, a, b)
  np.testing.assert_allclose(ours(a, b), reference(a, b), rtol=1e-5, atol=1e-5)
  for got, want in zip(_grads(ours, a, b), _grads(reference, a, b)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_batched_matmul_bfloat16_with_float32_accumulation():
  a, b = _random((2, 6, 8), 0, jnp.bfloat16), _random((2, 8, 5), 1, jnp.bfloat16)
  ours = lambda a, b: batched_matmul(a, b, preferred_element_type=jnp.float32)
  reference = lambda a, b: jnp.einsum('bmk,bkn->bmn', a, b, preferred_element_type=jnp.float32)
  assert ours(a, b).dtype == jnp.float32
  np.testing.assert_allclose(ours(a, b), reference(a, b), rtol=1e-6, atol=1e-6)
  for got, want in zip(_grads(ours, a, b), _grads(reference, a, b)):
    assert got.dtype == jnp.bfloat16
    np.testing.assert_allclose(got.astype(jnp.float32), want.astype(jnp.float32), rtol=2e-2, atol=2e-2)


def test_batched_matmul_rejects_mismatched_batch_axes():
  with pytest.raises(ValueError, match='same leading batch axes'):
    batched_matmul(jnp.ones((2, 3, 4)), jnp.ones((3, 4, 5)))


def test_other_backends_keep_jax_rule(monkeypatch):
  monkeypatch.setattr(contractions, '_on_cpu', lambda: False)
  jaxpr = str(jax.make_jaxpr(lambda a, b: batched_matmul(a, b))(jnp.ones((2, 3, 4)), jnp.ones((2, 4, 5))))
  assert 'custom_vjp' not in jaxpr and 'dot_general' in jaxpr
