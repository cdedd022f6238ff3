"""Non-causal, unmasked XLA attention on CPU runs as a loop over query blocks once the whole score matrix would be
large: the same values and gradients as one score matrix (different programs: 1e-5), with GQA, in bfloat16, and
only when a block size divides the queries."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.nn import attention
from tests.numerics import assert_close_programs


def _inputs(batch, q_len, kv_len, heads, kv_heads, dim, dtype=jnp.float32):
  keys = jax.random.split(jax.random.key(0), 3)
  q = jax.random.normal(keys[0], (batch, q_len, heads, dim), dtype)
  k = jax.random.normal(keys[1], (batch, kv_len, kv_heads, dim), dtype)
  v = jax.random.normal(keys[2], (batch, kv_len, kv_heads, dim), dtype)
  return q, k, v


def _one_matrix(q, k, v, scale):
  return attention._xla_attention_block(q, k, v, causal=False, mask=None, q_segment_ids=None, kv_segment_ids=None,
                                        scale=scale)


def _dispatched(q, k, v, scale):
  return attention.xla_attention(q, k, v, causal=False, mask=None, q_segment_ids=None, kv_segment_ids=None,
                                 scale=scale)


@pytest.mark.parametrize('heads,kv_heads', [(4, 4), (4, 2)])
def test_blocks_equal_one_score_matrix_with_gradients(monkeypatch, heads, kv_heads):
  monkeypatch.setattr(attention, '_SCORE_BLOCK', 1 << 12)  # small shapes, several blocks
  q, k, v = _inputs(2, 64, 48, heads, kv_heads, 8)
  assert attention._query_block(q, k.shape[1]) == 8
  scale = 8 ** -0.5
  assert_close_programs(jax.jit(_dispatched, static_argnums=3)(q, k, v, scale), _one_matrix(q, k, v, scale))

  def loss(fn):
    return lambda q, k, v: jnp.sum(jnp.sin(fn(q, k, v, scale)))

  blocked = jax.jit(jax.grad(loss(_dispatched), argnums=(0, 1, 2)))(q, k, v)
  reference = jax.grad(loss(_one_matrix), argnums=(0, 1, 2))(q, k, v)
  for a, b in zip(blocked, reference):
    assert_close_programs(a, b)


def test_bfloat16_blocks_match_one_matrix(monkeypatch):
  monkeypatch.setattr(attention, '_SCORE_BLOCK', 1 << 12)
  q, k, v = _inputs(1, 128, 128, 2, 2, 16, jnp.bfloat16)
  out = _dispatched(q, k, v, 0.25)
  assert out.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(_one_matrix(q, k, v, 0.25), np.float32),
                             atol=2e-2)


def test_block_choice():
  small = jnp.zeros((1, 16, 2, 8))
  assert attention._query_block(small, 16) == 0  # the whole matrix is small
  big = jax.ShapeDtypeStruct((2, 4096, 8, 8), jnp.float32)
  assert attention._query_block(big, 4096) == 16  # 2 * 8 * 16 * 4096 = 2^20 scores per block
  odd = jax.ShapeDtypeStruct((2, 4095, 8, 8), jnp.float32)
  assert attention._query_block(odd, 4096) == 0  # no power of two >= 8 divides 4095: one matrix
