"""dot_product_attention vs a plain softmax reference (repeated K/V, explicit -inf masking)."""
import functools
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.nn import attention
from mmjax.nn.attention import AttentionImpl, dot_product_attention
from tests.numerics import assert_close_programs


@functools.partial(jax.jit, static_argnames='causal')
def reference_attention(q, k, v, *, causal=False, mask=None, q_seg=None, kv_seg=None):
  """Textbook attention in float32; rows with no visible key are zeros; segment id 0 is padding."""
  b, q_len, h, d = q.shape
  kv_len = k.shape[1]
  k = jnp.repeat(k.astype(jnp.float32), h // k.shape[2], axis=2)
  v = jnp.repeat(v.astype(jnp.float32), h // v.shape[2], axis=2)
  logits = jnp.einsum('bqhd,bkhd->bhqk', q.astype(jnp.float32), k) / np.sqrt(d)
  allowed = jnp.ones((b, h, q_len, kv_len), bool)
  if causal:
    allowed &= jnp.tril(jnp.ones((q_len, kv_len), bool), k=kv_len - q_len)
  if mask is not None:
    allowed &= mask
  if q_seg is not None:
    allowed &= (q_seg[:, None, :, None] == kv_seg[:, None, None, :]) & (q_seg[:, None, :, None] != 0)
  probs = jax.nn.softmax(jnp.where(allowed, logits, -jnp.inf), axis=-1)
  probs = jnp.where(allowed.any(-1, keepdims=True), probs, 0.0)
  return jnp.einsum('bhqk,bkhd->bqhd', probs, v)


attend = jax.jit(dot_product_attention, static_argnames=('causal', 'scale', 'impl'))


def qkv(b=2, q_len=5, kv_len=5, h=4, kv_heads=4, d=8, seed=0, dtype=jnp.float32):
  rng = np.random.default_rng(seed)
  shapes = ((b, q_len, h, d), (b, kv_len, kv_heads, d), (b, kv_len, kv_heads, d))
  return tuple(jnp.asarray(rng.standard_normal(shape), dtype) for shape in shapes)


def zeros(b=2, q_len=5, kv_len=5, h=4, kv_heads=4, d=8):
  """numpy stand-ins for q, k, v: validation only reads shapes, and numpy keeps test collection compile-free."""
  return np.zeros((b, q_len, h, d)), np.zeros((b, kv_len, kv_heads, d)), np.zeros((b, kv_len, kv_heads, d))


def assert_close(out, expected, tol=1e-5):
  """Against the reference, another XLA program: the policy's 1e-5 unless `tol` says otherwise."""
  assert not np.isnan(np.asarray(out)).any()
  assert_close_programs(out, expected, tol=tol)


def random_mask(shape, seed):
  """Boolean mask [..., Sq, Sk] with key 0 always visible, so no row is empty."""
  mask = np.random.default_rng(seed).random(shape) < 0.6
  mask[..., 0] = True
  return jnp.asarray(mask)


def test_non_causal():
  q, k, v = qkv(q_len=3, kv_len=7)
  out = attend(q, k, v)
  assert out.shape == q.shape and out.dtype == q.dtype
  assert_close(out, reference_attention(q, k, v))


@pytest.mark.parametrize('q_len,kv_len', [(6, 6), (2, 7), (1, 5)])
def test_causal_bottom_right(q_len, kv_len):
  q, k, v = qkv(q_len=q_len, kv_len=kv_len)
  out = attend(q, k, v, causal=True)
  assert_close(out, reference_attention(q, k, v, causal=True))
  if q_len > 1:
    assert np.abs(np.asarray(out - attend(q, k, v))).max() > 1e-3


def test_causal_last_query_sees_everything():
  q, k, v = qkv(q_len=3, kv_len=8)
  assert_close(attend(q, k, v, causal=True)[:, -1], attend(q[:, -1:], k, v)[:, 0])


def test_padding_mask():
  q, k, v = qkv(kv_len=6)
  mask = (jnp.arange(6)[None, :] < jnp.array([[4], [6]]))[:, None, None, :]  # [B, 1, 1, Sk]
  assert_close(attend(q, k, v, mask=mask, causal=True), reference_attention(q, k, v, mask=mask, causal=True))


def test_rank2_mask_broadcasts():
  q, k, v = qkv(q_len=4, kv_len=6)
  mask = random_mask((4, 6), seed=3)
  assert_close(attend(q, k, v, mask=mask), reference_attention(q, k, v, mask=mask))


def test_segment_ids_single():
  q, k, v = qkv(q_len=6, kv_len=6)
  seg = jnp.array([[1, 1, 2, 2, 2, 3], [0, 0, 1, 1, 1, 1]])  # packed documents; left padding
  out = attend(q, k, v, segment_ids=seg, causal=True)
  assert_close(out, reference_attention(q, k, v, q_seg=seg, kv_seg=seg, causal=True))
  assert np.all(np.asarray(out[1, :2]) == 0) and np.all(np.asarray(out[1, 2:]) != 0)


def test_segment_ids_tuple_cross():
  q, k, v = qkv(q_len=3, kv_len=5)
  q_seg, kv_seg = jnp.array([[1, 1, 2], [3, 3, 3]]), jnp.array([[1, 2, 2, 1, 2], [3, 3, 4, 4, 3]])
  out = attend(q, k, v, segment_ids=(q_seg, kv_seg))
  assert_close(out, reference_attention(q, k, v, q_seg=q_seg, kv_seg=kv_seg))


@pytest.mark.parametrize('kv_heads', [8, 2, 1])
def test_gqa_with_per_head_mask(kv_heads):
  q, k, v = qkv(q_len=4, kv_len=6, h=8, kv_heads=kv_heads)
  # A different mask per query head checks that head h is paired with kv head h // (H / Hkv).
  mask = random_mask((2, 8, 4, 6), seed=1)
  assert_close(attend(q, k, v, mask=mask, causal=True), reference_attention(q, k, v, mask=mask, causal=True))


def test_gqa_does_not_materialise_repeated_kv():
  q, k, v = qkv(b=1, q_len=3, kv_len=5, h=8, kv_heads=2, d=7)
  jaxpr = str(jax.make_jaxpr(lambda q, k, v: dot_product_attention(q, k, v, causal=True))(q, k, v))
  sizes = {math.prod(map(int, dims.split(','))) for dims in re.findall(r'f32\[([\d,]+)\]', jaxpr)}
  assert 5 * 2 * 7 in sizes and 5 * 8 * 7 not in sizes  # 280 = what a [B, Sk, H, D] copy of k or v would hold


def test_fully_masked_rows_are_zero_with_finite_grads():
  q, k, v = qkv(q_len=4, kv_len=4)
  mask = jnp.ones((2, 1, 4, 4), bool).at[1].set(False).at[0, 0, 2].set(False)
  seg = (jnp.array([[1, 1, 1, 1], [5, 5, 5, 5]]), jnp.array([[1, 1, 2, 2], [5, 5, 5, 5]]))

  def loss(q, k, v):
    return jnp.sum(attend(q, k, v, mask=mask, segment_ids=seg) ** 2)

  out = attend(q, k, v, mask=mask, segment_ids=seg)
  np.testing.assert_array_equal(out[1], 0.0)
  np.testing.assert_array_equal(out[0, 2], 0.0)
  assert np.abs(np.asarray(out[0, 0])).min() > 0
  for g in jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v):
    assert np.isfinite(np.asarray(g)).all()
  # Causal with more queries than keys: the first Sq - Sk queries see nothing.
  q, k, v = qkv(q_len=5, kv_len=3)
  out = attend(q, k, v, causal=True)
  np.testing.assert_array_equal(out[:, :2], 0.0)
  assert_close(out, reference_attention(q, k, v, causal=True))


def test_gradients_match_reference():
  q, k, v = qkv(q_len=4, kv_len=6, h=8, kv_heads=2)
  mask = (jnp.arange(6) < jnp.array([[5], [6]]))[:, None, None, :]
  ct = jnp.asarray(np.random.default_rng(9).standard_normal(q.shape), jnp.float32)

  def grads(fn):
    loss = lambda q, k, v: jnp.sum(fn(q, k, v, mask=mask, causal=True) * ct)  # noqa: E731
    return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v)

  for g, e in zip(grads(dot_product_attention), grads(reference_attention), strict=True):
    assert_close(g, e)


def test_bf16_uses_float32_logits():
  # Logits 256 and 257 are equal in bf16 (spacing 2) but not in float32, so the weights are 0.27/0.73, not 0.5/0.5.
  q = jnp.ones((1, 1, 1, 2), jnp.bfloat16)
  k = jnp.array([[[256.0, 0.0]], [[256.0, 1.0]]], jnp.bfloat16)[None]
  v = jnp.array([[[0.0, 0.0]], [[1.0, 1.0]]], jnp.bfloat16)[None]
  out = attend(q, k, v, scale=1.0)
  assert out.dtype == jnp.bfloat16
  # bfloat16's spacing near 0.73 is 2^-8 = 4e-3.
  assert_close(out.astype(jnp.float32), jnp.full(out.shape, jax.nn.sigmoid(1.0)), tol=4e-3)


def test_bf16_close_to_float32_reference():
  q, k, v = qkv(q_len=6, kv_len=6, h=4, kv_heads=2, dtype=jnp.bfloat16)
  out = attend(q, k, v, causal=True)
  assert out.dtype == jnp.bfloat16
  # bfloat16 inputs and output against a float32 reference: a few bf16 ulps (2^-8 relative each).
  assert_close(out.astype(jnp.float32), reference_attention(q, k, v, causal=True), tol=3e-2)


def test_custom_scale():
  q, k, v = qkv()
  assert_close(attend(q, k, v, scale=0.5), reference_attention(q * (0.5 * np.sqrt(8)), k, v))


@pytest.mark.parametrize('args,kwargs,match', [
    ((zeros()[0][0], *zeros()[1:]), {}, r'q must be \[batch, seq, heads, head_dim\]'),
    (zeros(kv_len=6)[:2] + zeros(kv_len=5)[2:], {}, 'same shape'),
    (zeros(b=2)[:1] + zeros(b=3)[1:], {}, 'batch'),
    (zeros(d=8)[:1] + zeros(d=4)[1:], {}, 'head_dim'),
    (zeros(h=6, kv_heads=4), {}, r'multiple of key/value heads \(4\)'),
    (zeros(), {'mask': np.ones((2, 1, 5, 5))}, 'boolean'),
    (zeros(), {'mask': np.ones((2, 3, 5, 5), bool)}, r'broadcastable to \[B, H, Sq, Sk\]'),
    (zeros(), {'mask': np.ones((1, 2, 1, 5, 5), bool)}, 'broadcastable'),
    (zeros(q_len=3, kv_len=5), {'segment_ids': np.zeros((2, 5), np.int32)}, 'Sq == Sk'),
    (zeros(), {'segment_ids': (np.zeros((2, 5)), np.zeros((2, 4)))}, 'segment ids'),
    (zeros(), {'impl': 'flash'}, r"'auto', 'xla'"),
])
def test_bad_inputs_raise(args, kwargs, match):
  with pytest.raises(ValueError, match=match):
    dot_product_attention(*args, **kwargs)


def test_registry_auto_prefers_backend_impl(monkeypatch):
  calls = []

  def fake(q, k, v, **kwargs):
    calls.append(sorted(kwargs))
    return attention.xla_attention(q, k, v, **kwargs)

  monkeypatch.setattr(jax, 'default_backend', lambda: 'cpu')  # the same answers on a GPU machine
  assert attention.resolve_impl('auto') == 'xla'
  monkeypatch.setitem(attention.ATTENTION_IMPLS, 'fake', AttentionImpl(fake, frozenset({'cpu'})))
  assert attention.resolve_impl('auto') == 'fake'
  q, k, v = qkv()
  assert_close(dot_product_attention(q, k, v), reference_attention(q, k, v))
  assert calls == [['causal', 'kv_segment_ids', 'mask', 'q_segment_ids', 'scale']]
  dot_product_attention(q, k, v, impl='xla')
  assert len(calls) == 1


@pytest.mark.parametrize('kind', ['plain', 'sq<sk', 'padding-mask', 'full-mask', 'segments'])
def test_long_causal_attention_by_blocks_equals_one_block(kind, monkeypatch):
  """A long causal request runs as CAUSAL_BLOCKS query blocks over the visible keys only; output and gradients
  are those of one score matrix, and the program has CAUSAL_BLOCKS blocks whatever the length.

  A minimum block of 8 queries takes the same code path as the production 128 at a fraction of the compile time.
  """
  monkeypatch.setattr(attention, '_MIN_BLOCK', 8)
  b, sq, h, hkv, d = 2, attention.CAUSAL_BLOCKS * 8 + 5, 4, 2, 8
  sk = sq + 7 if kind == 'sq<sk' else sq
  rng = np.random.default_rng(0)
  q, k, v = (jnp.asarray(rng.standard_normal(s), jnp.float32)
             for s in ((b, sq, h, d), (b, sk, hkv, d), (b, sk, hkv, d)))
  kwargs = dict(causal=True, mask=None, q_segment_ids=None, kv_segment_ids=None, scale=0.25)
  if kind == 'padding-mask':
    kwargs['mask'] = jnp.asarray(np.arange(sk)[None, None, None, :] >= np.array([0, 20])[:, None, None, None])
  elif kind == 'full-mask':
    kwargs['mask'] = jnp.asarray(rng.random((b, 1, sq, sk)) < 0.8)
  elif kind == 'segments':  # 0 = padding: the second row starts with three padded positions
    segments = np.arange(sq)[None, :] * 3 // sq + 1 + np.arange(b)[:, None]
    segments[1, :3] = 0
    kwargs['q_segment_ids'] = kwargs['kv_segment_ids'] = jnp.asarray(segments)

  def value_and_grads(fn):
    loss = lambda q, k, v: jnp.sum(jnp.sin(fn(q, k, v, **kwargs)))  # noqa: E731
    return jax.jit(lambda q, k, v: (fn(q, k, v, **kwargs), jax.grad(loss, argnums=(0, 1, 2))(q, k, v)))(q, k, v)

  blocked, one = attention.xla_attention, attention._xla_attention_block
  assert_close_programs(value_and_grads(blocked), value_and_grads(one))
  for length in (sq, 4 * sq):
    x = jnp.zeros((1, length, h, d))
    kv = jnp.zeros((1, length, hkv, d))
    plain = dict(kwargs, mask=None, q_segment_ids=None, kv_segment_ids=None)
    jaxpr = str(jax.make_jaxpr(lambda q, k, v: blocked(q, k, v, **plain))(x, kv, kv))
    assert jaxpr.count('dot_general') == 2 * attention.CAUSAL_BLOCKS
