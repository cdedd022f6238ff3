"""The contractions of linear layers and of XLA attention, differentiable in both modes by JAX's own rules.

Nothing here has a custom derivative, so `jax.grad`, `jax.jvp`, `jax.jacfwd` and `jax.vmap` of them compose on
every backend. What is chosen is the layout JAX's transposes produce. On CPU, `contract_trailing` contracts the 2-D
views x [N, prod(K)] . kernel [prod(K), prod(F)] (reshapes of contiguous axes, free): both gradients are then one
GEMM that XLA:CPU reads in place (dkernel = dot(x, g) over N), where the n-d dot_general over [B, S, ...] makes it
copy an operand transposed first, for an LM head or an MLP up-projection the whole [tokens, features] gradient.
On GPU and TPU the n-d dot_general is kept: a reshape that merges the minor axes can be a relayout there.
"""
import math

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


def contract_trailing(x: jax.Array, kernel: jax.Array, num_axes: int, *, features_first: bool = False
                      ) -> jax.Array:
  """x [..., *K] . kernel [*K, *F] over the num_axes trailing axes of x -> [..., *F].

  features_first: the kernel is [*F, *K] instead, as a tied embedding table [V, E] used as the LM head.
  """
  num_features = kernel.ndim - num_axes
  contracted = tuple(range(num_features, kernel.ndim)) if features_first else tuple(range(num_axes))
  lead, reduced = x.shape[:x.ndim - num_axes], x.shape[x.ndim - num_axes:]
  features = tuple(kernel.shape[a] for a in range(kernel.ndim) if a not in contracted)
  if not _on_cpu():
    return _dot(x, kernel, tuple(range(len(lead), x.ndim)), contracted, 0)
  flat_kernel = kernel.reshape((math.prod(features), -1) if features_first else (-1, math.prod(features)))
  y = _dot(x.reshape(math.prod(lead), math.prod(reduced)), flat_kernel, (1,), (1,) if features_first else (0,), 0)
  return y.reshape(*lead, *features)


def batched_matmul(a: jax.Array, b: jax.Array, *, b_transposed: bool = False,
                   preferred_element_type: DTypeLike | None = None) -> jax.Array:
  """a [..., M, K] times b [..., K, N] (or b [..., N, K] with b_transposed) -> [..., M, N], same batch axes.

  preferred_element_type: the output (accumulation) dtype, as in `jax.lax.dot_general`.
  """
  if a.ndim != b.ndim or a.ndim < 2 or a.shape[:-2] != b.shape[:-2]:
    raise ValueError(f'batched_matmul needs the same leading batch axes, got {a.shape} and {b.shape}.')
  n = a.ndim - 2
  return _dot(a, b, (n + 1,), (n + 1,) if b_transposed else (n,), n, preferred_element_type)
