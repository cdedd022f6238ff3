"""Which requests the Pallas attention kernels handle, and on which kernel family.

Two kernel families exist: 'triton' (GPU; on CPU it runs in interpret mode) and 'mosaic_tpu' (TPU; on
CPU it runs under `interpret=True` or Pallas's TPU interpreter, `pltpu.InterpretParams()`).
`supports` lets the attention dispatcher decide before calling, and explains a refusal.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax.experimental.pallas import tpu as pltpu

from mmjax.pallas_kernels.decode_attention_tpu import heads_per_block
from mmjax.pallas_kernels.kernel_math import next_power_of_2

TRITON = "triton"
MOSAIC_TPU = "mosaic_tpu"
MAX_HEAD_DIM = 256
MAX_DECODE_QUERIES = 8
MAX_TPU_DECODE_LANES = 1024
_GPU_PLATFORMS = ("gpu", "cuda", "rocm")


def resolve_backend(backend: str | None, interpret: Any) -> tuple[str, Any]:
  """Returns (kernel family, interpret value for pallas_call).

  backend=None picks from jax.default_backend(): tpu -> mosaic_tpu, gpu -> triton, cpu -> triton in
  interpret mode. An `interpret` given as `pltpu.InterpretParams` implies mosaic_tpu.
  interpret=None means auto: interpret on CPU, compiled on an accelerator.
  """
  platform = jax.default_backend()
  if isinstance(interpret, pltpu.InterpretParams):
    if backend not in (None, MOSAIC_TPU):
      raise ValueError(f"pltpu.InterpretParams runs the {MOSAIC_TPU!r} kernels, not backend={backend!r}")
    return MOSAIC_TPU, interpret
  if backend is None:
    backend = MOSAIC_TPU if platform == "tpu" else TRITON
  if backend not in (TRITON, MOSAIC_TPU):
    raise ValueError(f"backend must be None, {TRITON!r} or {MOSAIC_TPU!r}, got {backend!r}")
  native = (backend == TRITON and platform in _GPU_PLATFORMS) or (backend == MOSAIC_TPU and platform == "tpu")
  if interpret is None:
    interpret = not native
  if not interpret and not native:
    raise ValueError(f"the {backend!r} kernels cannot be compiled for platform {platform!r}; "
                     "pass interpret=True to run them in interpret mode")
  return backend, interpret


def _shape_problem(q_shape: Sequence[int], k_shape: Sequence[int], v_shape: Sequence[int]) -> str:
  if len(q_shape) != 4 or len(k_shape) != 4 or len(v_shape) != 4:
    return f"expected rank-4 [B, S, H, D] inputs, got q{tuple(q_shape)} k{tuple(k_shape)} v{tuple(v_shape)}"
  if tuple(k_shape) != tuple(v_shape):
    return f"k and v shapes differ: {tuple(k_shape)} vs {tuple(v_shape)}"
  b, _, h, d = q_shape
  bk, sk, hkv, dk = k_shape
  if b != bk:
    return f"batch sizes differ: q has {b}, k/v have {bk}"
  if d != dk:
    return f"head dims differ: q has {d}, k/v have {dk}"
  if hkv < 1 or h % hkv:
    return f"num_heads {h} is not a multiple of num_kv_heads {hkv}"
  if d > MAX_HEAD_DIM:
    return f"head_dim {d} > {MAX_HEAD_DIM} is not supported by the Pallas kernels"
  if min(q_shape) < 1 or sk < 1:
    return f"empty dimension in q{tuple(q_shape)} or k{tuple(k_shape)}"
  return ""


def _dtype_problem(dtype: Any, backend: str) -> str:
  dtype = jnp.dtype(dtype)
  allowed = (jnp.float32, jnp.bfloat16) if backend == MOSAIC_TPU else (jnp.float32, jnp.bfloat16, jnp.float16)
  if dtype not in [jnp.dtype(a) for a in allowed]:
    names = ", ".join(jnp.dtype(a).name for a in allowed)
    return f"dtype {dtype} is not supported by the {backend} kernels (use one of {names})"
  return ""


def problem(q_shape, k_shape, dtype, *, v_shape=None, kind: str = "flash", backend: str = TRITON,
            strict: bool = True) -> str:
  """The reason a request is refused, or "" when it is supported.

  strict=True also refuses requests that would run but slowly: a Triton decode whose head_dim is not a
  power of two must copy the whole KV cache to pad it on every call.
  """
  v_shape = k_shape if v_shape is None else v_shape
  why = _shape_problem(q_shape, k_shape, v_shape) or _dtype_problem(dtype, backend)
  if why:
    return why
  if kind == "decode":
    tq = q_shape[1]
    if not 1 <= tq <= MAX_DECODE_QUERIES:
      return f"decode supports 1..{MAX_DECODE_QUERIES} new queries per step, got {tq}"
    d, hkv = q_shape[3], k_shape[2]
    if strict and backend == TRITON and d != next_power_of_2(d):
      return (f"head_dim {d} is not a power of two: the Triton decode kernel would pad (copy) the whole "
              "KV cache on every call")
    if strict and backend == MOSAIC_TPU and heads_per_block(hkv, d) * d > MAX_TPU_DECODE_LANES:
      return (f"{hkv} kv heads of head_dim {d} only tile 128 lanes as a block of {heads_per_block(hkv, d)} heads; "
              "the TPU decode kernel would multiply a block-diagonal query that wide")
  elif kind != "flash":
    raise ValueError(f"kind must be 'flash' or 'decode', got {kind!r}")
  return ""


def supports(q_shape: Sequence[int], k_shape: Sequence[int], dtype: Any, *, v_shape: Sequence[int] | None = None,
             kind: str = "flash", backend: str | None = None, has_mask: bool = False) -> tuple[bool, str]:
  """Whether the Pallas path handles this request on the current (or given) backend, and why not.

  q_shape [B, Sq, H, D]; k_shape (and v_shape) [B, Sk, Hkv, D], for kind='decode' the cache shape
  [B, S_max, Hkv, D]. backend: None (from jax.default_backend()), 'triton' or 'mosaic_tpu'.
  has_mask: the request carries an explicit boolean mask array (only causal and segment ids are
  supported; such requests belong to XLA).
  Returns (True, "") or (False, reason). On CPU the kernels run in interpret mode: correct but slow, so
  a dispatcher should prefer XLA there.
  """
  if backend is None:
    backend = MOSAIC_TPU if jax.default_backend() == "tpu" else TRITON
  if backend not in (TRITON, MOSAIC_TPU):
    return False, f"unknown backend {backend!r}"
  if has_mask:
    return False, "explicit mask arrays are not supported by the Pallas kernels (only causal and segment ids)"
  why = problem(q_shape, k_shape, dtype, v_shape=v_shape, kind=kind, backend=backend)
  return (not why), why
