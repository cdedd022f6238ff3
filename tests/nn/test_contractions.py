"""mmjax.nn.contractions in both layouts (CPU's 2-D views, other backends' n-d dot_general) against plain
dot_general/einsum: values, reverse-mode gradients, jvp and jacfwd."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.nn import contractions
from mmjax.nn.contractions import batched_matmul, contract_trailing
from tests.numerics import assert_close_programs


def _random(shape, seed, dtype=jnp.float32):
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), dtype)


@pytest.fixture(params=['cpu', 'other'])
def layout(request, monkeypatch):
  """Runs the test with the CPU layout and with the one GPU and TPU use, whatever the backend."""
  monkeypatch.setattr(contractions, '_on_cpu', lambda: request.param == 'cpu')
  return request.param


def _derivatives(fn, a, b):
  """fn(a, b), the gradients of <fn(a, b), c> for a fixed random c, a jvp with random tangents, and jacfwd."""
  out = jax.eval_shape(fn, a, b)

  @jax.jit
  def run(a, b, cotangent, a_tangent, b_tangent):
    value = fn(a, b)
    grads = jax.grad(lambda a, b: jnp.sum((fn(a, b) * cotangent).astype(jnp.float32)), argnums=(0, 1))(a, b)
    _, tangent = jax.jvp(fn, (a, b), (a_tangent, b_tangent))
    return value, grads, tangent, jax.jacfwd(fn, argnums=(0, 1))(a, b)

  return run(a, b, _random(out.shape, 99, out.dtype), _random(a.shape, 7, a.dtype), _random(b.shape, 8, b.dtype))


def _assert_same_derivatives(ours, reference, a, b):
  got, want = _derivatives(ours, a, b), _derivatives(reference, a, b)
  assert jax.tree.map(lambda x: (x.shape, x.dtype), got) == jax.tree.map(lambda x: (x.shape, x.dtype), want)
  assert_close_programs(got, want)


@pytest.mark.parametrize('x_shape,kernel_shape,num_axes', [
    ((2, 7, 16), (16, 24), 1),          # Dense
    ((3, 5, 16), (16, 4, 8), 1),        # q projection [B, S, E] -> [B, S, H, D]
    ((2, 5, 4, 8), (4, 8, 16), 2),      # output projection [B, S, H, D] -> [B, S, E]
    ((16,), (16, 3), 1),                # no leading axes
])
def test_contract_trailing_matches_dot_general(layout, x_shape, kernel_shape, num_axes):
  del layout
  lead = len(x_shape) - num_axes

  def reference(x, kernel):
    return jax.lax.dot_general(x, kernel, ((tuple(range(lead, x.ndim)), tuple(range(num_axes))), ((), ())))

  _assert_same_derivatives(lambda x, k: contract_trailing(x, k, num_axes), reference, _random(x_shape, 0),
                           _random(kernel_shape, 1))


def test_contract_trailing_features_first_is_a_tied_head(layout):
  del layout
  x, table = _random((2, 5, 16), 0), _random((40, 16), 1)  # [B, S, E] . [V, E] -> [B, S, V]
  _assert_same_derivatives(lambda x, t: contract_trailing(x, t, 1, features_first=True), lambda x, t: x @ t.T,
                           x, table)


@pytest.mark.parametrize('features_first', [False, True])
def test_cpu_gradients_read_their_operands_in_place(monkeypatch, features_first):
  # The reason for the CPU layout: XLA:CPU compiles both gradients to GEMMs without a transposing copy.
  monkeypatch.setattr(contractions, '_on_cpu', lambda: True)
  x, kernel = _random((2, 8, 16), 0), _random((24, 16) if features_first else (16, 24), 1)
  loss = lambda x, k: jnp.sum(contract_trailing(x, k, 1, features_first=features_first) ** 2)  # noqa: E731
  hlo = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(x, kernel).compile().as_text()
  assert re.findall(r'= \S+ dot\(', hlo) and not re.findall(r'= \S+ (?:transpose|copy)\(', hlo)


@pytest.mark.parametrize('b_transposed', [True, False])
@pytest.mark.parametrize('batch', [(3,), (2, 3)])
def test_batched_matmul_matches_einsum(b_transposed, batch):
  a = _random((*batch, 6, 4), 0)
  b = _random((*batch, 5, 4) if b_transposed else (*batch, 4, 5), 1)
  spec = '...mk,...nk->...mn' if b_transposed else '...mk,...kn->...mn'
  _assert_same_derivatives(lambda a, b: batched_matmul(a, b, b_transposed=b_transposed),
                           lambda a, b: jnp.einsum(spec, a, b), a, b)


def test_batched_matmul_bfloat16_with_float32_accumulation():
  a, b = _random((2, 6, 8), 0, jnp.bfloat16), _random((2, 8, 5), 1, jnp.bfloat16)
  got = _derivatives(lambda a, b: batched_matmul(a, b, preferred_element_type=jnp.float32), a, b)
  want = _derivatives(lambda a, b: jnp.einsum('bmk,bkn->bmn', a, b, preferred_element_type=jnp.float32), a, b)
  value, grads, tangent, _ = got
  assert value.dtype == tangent.dtype == jnp.float32 and grads[0].dtype == grads[1].dtype == jnp.bfloat16
  # The gradients are rounded to bfloat16, whose one ulp is 2^-8 = 0.4% relative.
  assert_close_programs(got, want, tol=1e-2)


def test_batched_matmul_rejects_mismatched_batch_axes():
  with pytest.raises(ValueError, match='same leading batch axes'):
    batched_matmul(jnp.ones((2, 3, 4)), jnp.ones((3, 4, 5)))
