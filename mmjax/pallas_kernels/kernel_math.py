"""Small helpers shared by the Pallas attention kernels (usable inside kernels).

The dot helpers take 2-D tiles and accumulate in float32. Their names say which operand is transposed
(`nt`: a @ b.T, `tn`: a.T @ b), so every backend sees a plain dot_general it can lower.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

TPU_LANES = 128
TPU_SUBLANES = 8

_NN = (((1,), (0,)), ((), ()))
_NT = (((1,), (1,)), ((), ()))
_TN = (((0,), (0,)), ((), ()))


def matmul_precision(dtype) -> lax.Precision:
  """float32 tiles multiply at full precision (no TF32); 16-bit tiles use the native MMA."""
  return lax.Precision.HIGHEST if jnp.dtype(dtype) == jnp.float32 else lax.Precision.DEFAULT


def dot_nn(a: jax.Array, b: jax.Array) -> jax.Array:
  """[m, k] @ [k, n] -> [m, n] float32."""
  return lax.dot_general(a, b, _NN, precision=matmul_precision(a.dtype),
                         preferred_element_type=jnp.float32)


def dot_nt(a: jax.Array, b: jax.Array) -> jax.Array:
  """[m, k] @ [n, k].T -> [m, n] float32."""
  return lax.dot_general(a, b, _NT, precision=matmul_precision(a.dtype),
                         preferred_element_type=jnp.float32)


def dot_tn(a: jax.Array, b: jax.Array) -> jax.Array:
  """[k, m].T @ [k, n] -> [m, n] float32."""
  return lax.dot_general(a, b, _TN, precision=matmul_precision(a.dtype),
                         preferred_element_type=jnp.float32)


def safe_max(m: jax.Array) -> jax.Array:
  """Running max with -inf (no visible key yet) replaced by 0, so exp(s - m) never sees inf - inf."""
  return jnp.where(m == -jnp.inf, 0.0, m)


def normalizer(m: jax.Array, l: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Returns (1 / l, log-sum-exp) per row; rows with no visible key give (0, +inf).

  Multiplying the accumulator by the first gives exact zeros for such rows. The +inf log-sum-exp makes
  exp(s - lse) exactly zero in the backward, so their gradients are zero rather than NaN.
  """
  visible = l > 0.0
  l_safe = jnp.where(visible, l, 1.0)
  return jnp.where(visible, 1.0 / l_safe, 0.0), jnp.where(visible, m + jnp.log(l_safe), jnp.inf)


def widen_lanes(x: jax.Array, n: int) -> jax.Array:
  """Widens a lane-replicated (rows, 128) TPU tile to (rows, n): slice, or tile and slice."""
  if n <= TPU_LANES:
    return x if n == TPU_LANES else x[:, :n]
  reps = -(-n // TPU_LANES)
  x = jnp.tile(x, (1, reps))
  return x if reps * TPU_LANES == n else x[:, :n]


def round_up(x: int, multiple: int) -> int:
  return -(-x // multiple) * multiple


def next_power_of_2(x: int) -> int:
  return 1 if x <= 1 else 1 << (x - 1).bit_length()
