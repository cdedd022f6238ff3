"""decode_attention vs the float32 reference on CPU: ragged lengths, Tq = 1 and > 1, GQA, both kernels."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas import tpu as pltpu

from mmjax.pallas_kernels import decode_attention, decode_attention_reference
from tests.pallas_kernels.helpers import FORWARD_TOL, assert_close, assert_launch_limits, fast_jit, normal


def make_inputs(b, tq, h, hkv, d, s_max, dtype, seed=0):
  rng = np.random.default_rng(seed)
  return (normal(rng, (b, tq, h, d), dtype), normal(rng, (b, s_max, hkv, d), dtype),
          normal(rng, (b, s_max, hkv, d), dtype))


def check(b, tq, h, hkv, d, s_max, lengths, dtype="float32", **kwargs):
  dtype = jnp.dtype(dtype)
  q, k_cache, v_cache = make_inputs(b, tq, h, hkv, d, s_max, dtype)
  lengths = np.asarray(lengths, np.int32)

  def kernel(q, k_cache, v_cache, lengths):
    return decode_attention(q, k_cache, v_cache, lengths, **kwargs)

  assert_launch_limits(kernel, q, k_cache, v_cache, lengths)
  out = fast_jit(kernel)(q, k_cache, v_cache, lengths)
  expected = fast_jit(decode_attention_reference)(q, k_cache, v_cache, lengths)
  assert out.dtype == dtype and out.shape == q.shape
  assert_close(out, expected, FORWARD_TOL[dtype], "out")
  return np.asarray(out).astype(np.float32)


# (b, tq, h, hkv, d, s_max, lengths, dtype, kwargs). Lengths include 1 and S_max.
TRITON_CASES = [
    (3, 1, 4, 2, 64, 128, [1, 77, 128], "float32", dict(block_k=16, num_splits=3)),
    (3, 4, 8, 2, 128, 64, [6, 33, 64], "bfloat16", dict(block_k=16)),
    (2, 8, 4, 4, 72, 48, [48, 9], "float32", dict(block_k=16, num_splits=2)),
    (2, 2, 6, 1, 80, 96, [1, 96], "bfloat16", dict(block_k=32, num_splits=3)),
]

TPU_CASES = [
    (3, 1, 4, 2, 64, 256, [1, 130, 256], "float32", dict(block_k=128)),
    (2, 3, 8, 2, 96, 256, [2, 256], "bfloat16", dict(block_k=128)),
    (2, 8, 4, 4, 128, 64, [64, 5], "float32", {}),
]


def _id(case):
  b, tq, h, hkv, d, s_max, lengths, dtype, _ = case
  return f"b{b}-tq{tq}-h{h}x{hkv}-d{d}-s{s_max}-{dtype}"


@pytest.mark.parametrize("case", TRITON_CASES, ids=_id)
def test_triton_decode_matches_reference(case):
  *shape, lengths, dtype, kwargs = case
  check(*shape, lengths, dtype, **kwargs)


@pytest.mark.parametrize("case", TPU_CASES, ids=_id)
def test_tpu_decode_matches_reference(case):
  *shape, lengths, dtype, kwargs = case
  check(*shape, lengths, dtype, backend="mosaic_tpu", interpret=True, **kwargs)


def test_tpu_decode_under_tpu_interpreter():
  check(2, 2, 4, 2, 64, 256, [1, 256], block_k=128, interpret=pltpu.InterpretParams())


def test_queries_before_the_cache_start_give_zeros():
  # lengths = 2 with Tq = 4: queries 0 and 1 sit at positions -2 and -1 and see nothing.
  out = check(1, 4, 2, 1, 64, 32, [2], block_k=16)
  assert np.all(out[0, :2] == 0.0)
  assert np.all(np.abs(out[0, 2:]) > 0.0)


def test_splits_do_not_change_the_result():
  q, k_cache, v_cache = make_inputs(2, 1, 4, 2, 64, 128, jnp.float32)
  lengths = np.array([100, 7], np.int32)

  def run(num_splits):
    attend = lambda q, k, v, n: decode_attention(q, k, v, n, block_k=16, num_splits=num_splits)
    return np.asarray(fast_jit(attend)(q, k_cache, v_cache, lengths))

  assert_close(run(1), run(4), FORWARD_TOL[jnp.dtype(jnp.float32)], "splits")


def test_too_many_queries_raise():
  q, k_cache, v_cache = make_inputs(1, 9, 2, 1, 64, 32, jnp.float32)
  with pytest.raises(ValueError, match="1..8"):
    decode_attention(q, k_cache, v_cache, np.array([32]))
