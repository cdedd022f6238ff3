"""flash_attention vs the float32 reference on CPU: forward, dq, dk, dv, masked rows, launch limits.

The Triton kernels run in interpret mode (the CPU default); the TPU kernels run under `interpret=True`
and under Pallas's TPU interpreter (`pltpu.InterpretParams`), which also checks DMAs, out-of-bounds
reads and uninitialised memory.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas import tpu as pltpu

from mmjax.pallas_kernels import BlockSizes, attention_reference, flash_attention
from tests.pallas_kernels.helpers import FORWARD_TOL, GRAD_TOL, assert_close, assert_launch_limits, fast_jit, normal


@dataclasses.dataclass(frozen=True)
class Case:
  b: int
  sq: int
  sk: int
  h: int
  hkv: int
  d: int
  causal: bool = False
  segments: str | None = None  # None, "packed" (several documents) or "padding" (with padded queries).
  dtype: str = "float32"
  blocks: BlockSizes | None = None

  def __str__(self) -> str:
    mask = ("causal" if self.causal else "full") + (f"-{self.segments}" if self.segments else "")
    return f"b{self.b}-q{self.sq}-k{self.sk}-h{self.h}x{self.hkv}-d{self.d}-{mask}-{self.dtype}"


def make_inputs(case: Case, seed: int = 0):
  rng = np.random.default_rng(seed)
  q = normal(rng, (case.b, case.sq, case.h, case.d), case.dtype)
  k = normal(rng, (case.b, case.sk, case.hkv, case.d), case.dtype)
  v = normal(rng, (case.b, case.sk, case.hkv, case.d), case.dtype)
  d_out = normal(rng, (case.b, case.sq, case.h, case.d), case.dtype)
  q_seg = kv_seg = None
  batch = np.arange(case.b)[:, None]
  if case.segments == "packed":
    # Three documents per row (ids from 1), boundaries at different places for q and kv and per batch entry.
    q_seg = np.arange(case.sq)[None] * 3 // case.sq + batch + 1
    kv_seg = (np.arange(case.sk)[None] + 5) * 3 // (case.sk + 5) + batch + 1
  elif case.segments == "padding":
    # Valid tokens have id 1, padding id 0 on both sides: padded queries see no key at all, and padded keys
    # (equal ids 0 included) are seen by no query.
    q_seg = np.where(np.arange(case.sq)[None] < case.sq - 7, 1, 0) + 0 * batch
    kv_seg = np.where(np.arange(case.sk)[None] < case.sk - 3, 1, 0) + 0 * batch
  if q_seg is not None:
    q_seg, kv_seg = q_seg.astype(np.int32), kv_seg.astype(np.int32)
  return q, k, v, d_out, q_seg, kv_seg


def rows_without_keys(case: Case, q_seg, kv_seg) -> np.ndarray:
  """[B, Sq] True where a query sees no key (computed independently of the kernels and the reference)."""
  i = np.arange(case.sq)[:, None]
  j = np.arange(case.sk)[None, :]
  visible = np.ones((case.b, case.sq, case.sk), bool)
  if case.causal:
    visible &= (j <= i + case.sk - case.sq)[None]
  if q_seg is not None:
    visible &= (q_seg[:, :, None] == kv_seg[:, None, :]) & (q_seg[:, :, None] != 0)
  return ~visible.any(axis=-1)


def _with_grads(attend):
  def run(q, k, v, d_out, q_seg, kv_seg):
    out, vjp = jax.vjp(lambda q, k, v: attend(q, k, v, q_seg, kv_seg), q, k, v)
    return out, vjp(d_out.astype(out.dtype))
  return run


def check_case(case: Case, **kernel_kwargs) -> np.ndarray:
  """Compares output and gradients with the reference; returns the [B, Sq] mask of rows that see no key."""
  q, k, v, d_out, q_seg, kv_seg = make_inputs(case)

  def kernel(q, k, v, q_seg, kv_seg):
    return flash_attention(q, k, v, causal=case.causal, q_segment_ids=q_seg, kv_segment_ids=kv_seg,
                           block_sizes=case.blocks, **kernel_kwargs)

  def reference(q, k, v, q_seg, kv_seg):
    return attention_reference(q, k, v, causal=case.causal, q_segment_ids=q_seg, kv_segment_ids=kv_seg)

  args = (q, k, v, d_out, q_seg, kv_seg)
  assert_launch_limits(_with_grads(kernel), *args)
  out, grads = fast_jit(_with_grads(kernel))(*args)
  out_ref, grads_ref = fast_jit(_with_grads(reference))(*args)

  dtype = jnp.dtype(case.dtype)
  assert out.dtype == dtype and out.shape == q.shape
  assert_close(out, out_ref, FORWARD_TOL[dtype], "out")
  for name, grad, grad_ref, primal in zip(("dq", "dk", "dv"), grads, grads_ref, (q, k, v)):
    assert grad.dtype == dtype and grad.shape == primal.shape
    assert_close(grad, grad_ref, GRAD_TOL[dtype], name)

  hidden = rows_without_keys(case, q_seg, kv_seg)
  assert np.all(np.asarray(out)[hidden] == 0), "rows with no visible key must be exactly zero"
  assert np.all(np.asarray(grads[0])[hidden] == 0), "their dq must be zero"
  return hidden


T = BlockSizes
TRITON_CASES = [
    Case(1, 64, 64, 2, 2, 64, blocks=T(32, 32)),
    Case(2, 64, 64, 4, 2, 128, causal=True, blocks=T(32, 32, 16, 32, 32, 16)),
    Case(1, 37, 37, 4, 1, 72, causal=True, blocks=T(16, 16)),
    Case(2, 37, 100, 4, 2, 80, causal=True, segments="packed", blocks=T(16, 32, 16, 32, 16, 32)),
    Case(1, 100, 37, 2, 1, 96, causal=True, blocks=T(32, 16)),
    Case(2, 48, 40, 2, 2, 64, segments="padding", blocks=T(16, 16)),
    Case(2, 64, 64, 4, 2, 128, causal=True, dtype="bfloat16", blocks=T(32, 32)),
    Case(1, 37, 50, 2, 1, 72, segments="packed", dtype="bfloat16", blocks=T(16, 32)),
    Case(1, 64, 64, 4, 4, 80, dtype="bfloat16"),
    Case(1, 50, 30, 2, 2, 96, causal=True, segments="padding", dtype="bfloat16", blocks=T(16, 16)),
    Case(1, 40, 56, 4, 1, 64, causal=True, dtype="bfloat16", blocks=T(16, 16, 32, 16, 16, 32)),
]

TPU_CASES = [
    Case(1, 200, 200, 4, 2, 128, causal=True, blocks=T(128, 128)),
    Case(2, 150, 100, 2, 1, 72, causal=True, segments="padding", blocks=T(128, 128)),
    Case(1, 100, 250, 4, 4, 80, segments="packed", dtype="bfloat16", blocks=T(128, 128)),
    Case(1, 64, 64, 2, 2, 96, causal=True, dtype="bfloat16"),
]


@pytest.mark.parametrize("case", TRITON_CASES, ids=str)
def test_triton_kernels_match_reference(case):
  check_case(case)


@pytest.mark.parametrize("case", TPU_CASES, ids=str)
def test_tpu_kernels_match_reference(case):
  check_case(case, backend="mosaic_tpu", interpret=True)


def test_tpu_kernels_under_tpu_interpreter():
  # Multi-tile in both directions, causal with Sq > Sk (so some rows see nothing), GQA.
  case = Case(1, 200, 150, 2, 1, 64, causal=True, blocks=T(128, 128))
  hidden = check_case(case, interpret=pltpu.InterpretParams())
  assert hidden.any()


@pytest.mark.parametrize("causal_rows", [True, False], ids=["causal-q-longer", "segments"])
def test_rows_without_keys_give_zeros_and_zero_grads(causal_rows):
  if causal_rows:
    case = Case(1, 40, 16, 2, 1, 64, causal=True, blocks=T(16, 16))
  else:
    case = Case(1, 32, 32, 2, 2, 64, segments="padding", blocks=T(16, 16))
  assert check_case(case).any()


def test_scale_argument_is_used():
  q, k, v, _, _, _ = make_inputs(Case(1, 32, 32, 2, 2, 64))
  out = fast_jit(lambda q, k, v: flash_attention(q, k, v, scale=0.5, block_sizes=T(16, 16)))(q, k, v)
  expected, default_scale = fast_jit(
      lambda q, k, v: (attention_reference(q, k, v, scale=0.5), attention_reference(q, k, v)))(q, k, v)
  assert_close(out, expected, FORWARD_TOL[out.dtype], "out")
  assert not np.allclose(np.asarray(out), np.asarray(default_scale), atol=1e-3)


@pytest.mark.parametrize("bad, message", [
    (dict(k_heads=4), "not a multiple"),
    (dict(one_segment=True), "together"),
    (dict(blocks=T(24, 32)), "powers of two"),
    (dict(tpu_blocks=T(64, 128)), "multiples of 128"),
    (dict(compiled=True), "cannot be compiled"),
])
def test_invalid_requests_raise(bad, message):
  q = jnp.zeros((1, 16, 6, 64))
  k = jnp.zeros((1, 16, bad.get("k_heads", 2), 64))
  kwargs = {}
  if bad.get("one_segment"):
    kwargs["q_segment_ids"] = jnp.zeros((1, 16), jnp.int32)
  if "blocks" in bad:
    kwargs["block_sizes"] = bad["blocks"]
  if "tpu_blocks" in bad:
    kwargs.update(block_sizes=bad["tpu_blocks"], backend="mosaic_tpu")
  if bad.get("compiled"):
    kwargs["interpret"] = False
  with pytest.raises(ValueError, match=message):
    flash_attention(q, k, k, **kwargs)


def test_triton_launch_parameters_reach_the_kernels():
  """num_warps / num_stages of BlockSizes go to the forward, and the *_bwd ones to the dK/dV and dQ kernels."""
  import jax.extend.core as jex_core
  q = jnp.zeros((1, 64, 2, 64), jnp.bfloat16)
  blocks = BlockSizes(32, 32, num_warps=2, num_stages=3, num_warps_bwd=8, num_stages_bwd=1)

  def loss(q):
    return flash_attention(q, q, q, causal=True, block_sizes=blocks, backend="triton", interpret=True).sum()

  found = {}

  def walk(jaxpr):
    for eqn in jaxpr.eqns:
      if eqn.primitive.name == "pallas_call":
        params = eqn.params["compiler_params"]
        params = params.get("triton", params) if isinstance(params, dict) else params
        name = eqn.params.get("name")
        name = getattr(name, "name", name) or eqn.params["name_and_src_info"].name  # Key name differs by jax.
        found[name] = (params.num_warps, params.num_stages)
      for value in eqn.params.values():
        for sub in (value if isinstance(value, (tuple, list)) else (value,)):
          if isinstance(sub, jex_core.ClosedJaxpr):
            walk(sub.jaxpr)
          elif isinstance(sub, jex_core.Jaxpr):
            walk(sub)

  walk(jax.make_jaxpr(jax.grad(lambda q: loss(q.astype(jnp.bfloat16)).astype(jnp.float32)))(q).jaxpr)
  assert found == {"mmjax_flash_forward": (2, 3), "mmjax_flash_dkv": (8, 1), "mmjax_flash_dq": (8, 1)}, found
