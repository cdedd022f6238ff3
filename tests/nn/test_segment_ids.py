"""Segment ids (0 = padding) against the explicit mask they stand for, through XLA and the Pallas kernel."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.nn.attention import dot_product_attention
from tests.numerics import assert_close_programs

# Left padding, two packed documents, right padding, and a row of one document.
SEGMENTS = np.array([[0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2],
                     [1, 1, 1, 2, 2, 2, 2, 2, 3, 3, 0, 0],
                     [1] * 12])


def _qkv(b=3, sq=12, sk=12, h=4, hkv=2, d=16, seed=0):
  rng = np.random.default_rng(seed)
  return tuple(jnp.asarray(rng.standard_normal(shape), jnp.float32)
               for shape in ((b, sq, h, d), (b, sk, hkv, d), (b, sk, hkv, d)))


def _as_mask(q_seg, kv_seg):
  """bool [B, 1, Sq, Sk]: the same nonzero id on both sides."""
  q_seg, kv_seg = np.asarray(q_seg), np.asarray(kv_seg)
  return jnp.asarray((q_seg[:, :, None] == kv_seg[:, None, :]) & (q_seg[:, :, None] != 0))[:, None]


def _value_and_grads(causal, impl, **masking):
  """Output and d(loss)/d(q, k, v) of a loss that weights every output element differently."""
  def loss(q, k, v):
    out = dot_product_attention(q, k, v, causal=causal, impl=impl, **masking)
    return jnp.sum(jnp.sin(out) * jnp.arange(out.size).reshape(out.shape) / out.size), out
  # LLVM optimisations off: the interpret-mode kernel compiles ~2.5x faster (as in tests/pallas_kernels).
  fast = {'xla_backend_optimization_level': 0}
  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True), compiler_options=fast)


@pytest.mark.parametrize('causal', [True, False])
def test_self_attention_segment_ids_equal_the_mask(causal):
  q, k, v = _qkv()
  seg = jnp.asarray(SEGMENTS, jnp.int32)
  (_, out), grads = _value_and_grads(causal, 'xla', segment_ids=seg)(q, k, v)
  (_, want), want_grads = _value_and_grads(causal, 'xla', mask=_as_mask(seg, seg))(q, k, v)
  assert_close_programs((out, grads), (want, want_grads))
  padded = SEGMENTS == 0
  assert np.all(np.asarray(out)[padded] == 0) and np.all(np.asarray(grads[0])[padded] == 0)
  assert np.all(np.asarray(out)[~padded] != 0)


def test_cross_attention_segment_id_pairs_equal_the_mask():
  q, k, v = _qkv(sq=5)
  q_seg, kv_seg = jnp.asarray(SEGMENTS[:, -5:], jnp.int32), jnp.asarray(SEGMENTS, jnp.int32)
  (_, out), grads = _value_and_grads(True, 'xla', segment_ids=(q_seg, kv_seg))(q, k, v)
  (_, want), want_grads = _value_and_grads(True, 'xla', mask=_as_mask(q_seg, kv_seg))(q, k, v)
  assert_close_programs((out, grads), (want, want_grads))


def test_pallas_kernel_with_segment_ids_equals_the_masked_xla_attention():
  """The flash kernel (interpret mode on CPU) takes the segment ids; XLA gets the explicit mask."""
  q, k, v = _qkv()
  seg = jnp.asarray(SEGMENTS, jnp.int32)
  got = _value_and_grads(True, 'pallas', segment_ids=seg)(q, k, v)
  want = _value_and_grads(True, 'xla', mask=_as_mask(seg, seg))(q, k, v)
  assert_close_programs(got, want)
