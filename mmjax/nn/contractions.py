"""The contractions of linear layers and of XLA attention, with their reverse-mode gradients written out on CPU.

JAX differentiates a dot_general by transposing it into other dot_generals whose operands XLA:CPU then lays out
with strided transposing copies. In the 98M Qwen2 train step those copies were the largest non-GEMM cost: the MLP's
kernel gradient copied the [tokens, 2048] output gradient transposed, and attention's dV copied the [.., G*Sq, Sk]
softmax weights transposed (experiments/bench/RESULTS.md has the profile and the timings). Here each gradient is a
dot_general whose contracted axes XLA:CPU reads in place. On GPU and TPU, JAX's own rule is kept.

On CPU these functions are `jax.custom_vjp`s, so they support reverse-mode differentiation only (no jvp).
"""
import functools

import jax
import jax.numpy as jnp
from jax.typing import DTypeLike


def _on_cpu() -> bool:
  return jax.default_backend() == 'cpu'


def _dot(a: jax.Array, b: jax.Array, a_contract: tuple[int, ...], b_contract: tuple[int, ...], batch: int,
         preferred_element_type: DTypeLike | None = None) -> jax.Array:
  """dot_general over the given axes, with the leading `batch` axes of both as batch axes.

  Operands of different dtypes (a float32 gradient against bfloat16 activations) meet in the wider one.
  """
  if a.dtype != b.dtype:
    dtype = jnp.promote_types(a.dtype, b.dtype)
    a, b = a.astype(dtype), b.astype(dtype)
  axes = tuple(range(batch))
  return jax.lax.dot_general(a, b, ((a_contract, b_contract), (axes, axes)),
                             preferred_element_type=preferred_element_type)


# ---- x [..., *K] . kernel [*K, *F] (or kernel [*F, *K], features_first) -> [..., *F] ----

def _kernel_axes(kernel: jax.Array, num_axes: int, features_first: bool) -> tuple[tuple[int, ...], tuple[int, ...]]:
  """(the kernel's contracted axes K, its feature axes F)."""
  num_features = kernel.ndim - num_axes
  if features_first:
    return tuple(range(num_features, kernel.ndim)), tuple(range(num_features))
  return tuple(range(num_axes)), tuple(range(num_axes, kernel.ndim))


def _contract(x: jax.Array, kernel: jax.Array, num_axes: int, features_first: bool) -> jax.Array:
  lead = x.ndim - num_axes
  return _dot(x, kernel, tuple(range(lead, x.ndim)), _kernel_axes(kernel, num_axes, features_first)[0], 0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _contract_cpu(x: jax.Array, kernel: jax.Array, num_axes: int, features_first: bool) -> jax.Array:
  return _contract(x, kernel, num_axes, features_first)


def _contract_fwd(x: jax.Array, kernel: jax.Array, num_axes: int, features_first: bool
                  ) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
  return _contract(x, kernel, num_axes, features_first), (x, kernel)


def _contract_bwd(num_axes: int, features_first: bool, residuals: tuple[jax.Array, jax.Array], g: jax.Array
                  ) -> tuple[jax.Array, jax.Array]:
  x, kernel = residuals
  lead = x.ndim - num_axes
  features = _kernel_axes(kernel, num_axes, features_first)[1]
  # dx [..., *K] = g [..., *F] . kernel over F; dkernel [*K, *F] = x . g over the leading axes.
  dx = _dot(g, kernel, tuple(range(lead, g.ndim)), features, 0)
  dkernel = _dot(x, g, tuple(range(lead)), tuple(range(lead)), 0)
  if features_first:
    # Transposing this result is cheaper than computing g . x, which XLA:CPU starts by transposing g (for an LM
    # head, the [tokens, vocab] logits gradient): 10% off the head's forward + backward.
    dkernel = dkernel.transpose(*range(num_axes, kernel.ndim), *range(num_axes))
  return dx.astype(x.dtype), dkernel.astype(kernel.dtype)


_contract_cpu.defvjp(_contract_fwd, _contract_bwd)


def contract_trailing(x: jax.Array, kernel: jax.Array, num_axes: int, *, features_first: bool = False
                      ) -> jax.Array:
  """x [..., *K] . kernel [*K, *F] over the num_axes trailing axes of x -> [..., *F].

  features_first: the kernel is [*F, *K] instead, as a tied embedding table [V, E] used as the LM head.
  """
  return (_contract_cpu if _on_cpu() else _contract)(x, kernel, num_axes, features_first)


# ---- batched matmul: a [..., M, K] with b [..., N, K] (b_transposed) or [..., K, N] -> [..., M, N] ----

def _matmul(a: jax.Array, b: jax.Array, b_transposed: bool, out_dtype: DTypeLike | None) -> jax.Array:
  n = a.ndim - 2
  return _dot(a, b, (n + 1,), (n + 1,) if b_transposed else (n,), n, out_dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _matmul_cpu(a: jax.Array, b: jax.Array, b_transposed: bool, out_dtype: DTypeLike | None) -> jax.Array:
  return _matmul(a, b, b_transposed, out_dtype)


def _matmul_fwd(a: jax.Array, b: jax.Array, b_transposed: bool, out_dtype: DTypeLike | None
                ) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
  return _matmul(a, b, b_transposed, out_dtype), (a, b)


def _matmul_bwd(b_transposed: bool, out_dtype: DTypeLike | None, residuals: tuple[jax.Array, jax.Array],
                g: jax.Array) -> tuple[jax.Array, jax.Array]:
  a, b = residuals
  n = a.ndim - 2
  m_axis, last = n, n + 1
  if b_transposed:  # out = a b^T: da = g b [.., M, K]; db = g^T a [.., N, K]
    da = _dot(g, b, (last,), (m_axis,), n)
    db = _dot(g, a, (m_axis,), (m_axis,), n)
  else:  # out = a b: da = g b^T [.., M, K]; db = a^T g [.., K, N]
    da = _dot(g, b, (last,), (last,), n)
    db = _dot(a, g, (m_axis,), (m_axis,), n)
  return da.astype(a.dtype), db.astype(b.dtype)


_matmul_cpu.defvjp(_matmul_fwd, _matmul_bwd)


def batched_matmul(a: jax.Array, b: jax.Array, *, b_transposed: bool = False,
                   preferred_element_type: DTypeLike | None = None) -> jax.Array:
  """a [..., M, K] times b [..., K, N] (or b [..., N, K] with b_transposed) -> [..., M, N], same batch axes.

  preferred_element_type: the output (accumulation) dtype, as in `jax.lax.dot_general`.
  """
  if a.ndim != b.ndim or a.ndim < 2 or a.shape[:-2] != b.shape[:-2]:
    raise ValueError(f'batched_matmul needs the same leading batch axes, got {a.shape} and {b.shape}.')
  return (_matmul_cpu if _on_cpu() else _matmul)(a, b, b_transposed, preferred_element_type)
