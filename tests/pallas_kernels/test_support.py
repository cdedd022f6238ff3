"""supports(): what the dispatcher is told about each request."""
from __future__ import annotations

import jax.numpy as jnp
import pytest

from mmjax.pallas_kernels import supports


@pytest.mark.parametrize("backend", ["triton", "mosaic_tpu", None])
def test_common_requests_are_supported(backend):
  assert supports((2, 128, 8, 64), (2, 128, 2, 64), jnp.bfloat16, backend=backend) == (True, "")
  assert supports((2, 1, 8, 128), (2, 4096, 2, 128), jnp.bfloat16, kind="decode", backend=backend) == (True, "")


@pytest.mark.parametrize("q_shape, k_shape, dtype, kwargs, reason", [
    ((2, 128, 6, 64), (2, 128, 4, 64), jnp.float32, {}, "not a multiple of num_kv_heads"),
    ((2, 128, 8, 64), (2, 128, 8, 32), jnp.float32, {}, "head dims differ"),
    ((2, 128, 8, 320), (2, 128, 8, 320), jnp.float32, {}, "head_dim 320"),
    ((2, 128, 8), (2, 128, 8), jnp.float32, {}, "rank-4"),
    ((2, 128, 8, 64), (2, 128, 8, 64), jnp.int32, {}, "dtype int32"),
    ((2, 128, 8, 64), (2, 128, 8, 64), jnp.float16, dict(backend="mosaic_tpu"), "float16"),
    ((2, 9, 8, 64), (2, 128, 8, 64), jnp.float32, dict(kind="decode"), "1..8"),
    ((2, 1, 8, 72), (2, 128, 8, 72), jnp.float32, dict(kind="decode", backend="triton"), "copy"),
    ((2, 128, 8, 64), (2, 128, 8, 64), jnp.float32, dict(has_mask=True), "mask"),
])
def test_refusals_name_the_reason(q_shape, k_shape, dtype, kwargs, reason):
  ok, why = supports(q_shape, k_shape, dtype, **kwargs)
  assert not ok and reason in why


def test_tpu_decode_refuses_very_wide_head_blocks():
  ok, why = supports((1, 1, 40, 72), (1, 256, 40, 72), jnp.bfloat16, kind="decode", backend="mosaic_tpu")
  assert not ok and "block-diagonal" in why
