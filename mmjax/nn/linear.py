"""Linear layers whose parameters carry logical axis names.

`Dense` maps the last axis ([..., in] -> [..., features]); `DenseGeneral` contracts any set of axes into any
feature shape, which is how attention projects [B, S, E] -> [B, S, H, D] and back without reshapes.
Both contract through `mmjax.nn.contractions.contract_trailing` (on CPU, in the layout its gradients read in place).
"""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen.dtypes import promote_dtype
from jax.nn.initializers import Initializer
from jax.typing import DTypeLike

from mmjax.nn.contractions import contract_trailing

default_kernel_init = nn.initializers.lecun_normal()


class Dense(nn.Module):
  """y = x @ kernel + bias.

  x [..., in] -> [..., features]. kernel [in, features] with logical axes `kernel_axes`; bias [features] with
  axis `kernel_axes[-1]`.
  """
  features: int
  kernel_axes: tuple[str, str]
  use_bias: bool = True
  dtype: DTypeLike | None = None
  param_dtype: DTypeLike = jnp.float32
  kernel_init: Initializer = default_kernel_init
  bias_init: Initializer = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param('kernel', nn.with_logical_partitioning(self.kernel_init, self.kernel_axes),
                        (x.shape[-1], self.features), self.param_dtype)
    bias = None
    if self.use_bias:
      bias = self.param('bias', nn.with_logical_partitioning(self.bias_init, self.kernel_axes[-1:]),
                        (self.features,), self.param_dtype)
    x, kernel, bias = promote_dtype(x, kernel, bias, dtype=self.dtype)
    y = contract_trailing(x, kernel, 1)
    return y if bias is None else y + bias


def _flat_init(init: Initializer, num_in: int) -> Initializer:
  """Runs a 2-D initializer on the [prod(in), prod(out)] view so fan-in/fan-out count all contracted axes."""

  def wrapped(key: jax.Array, shape: tuple[int, ...], dtype: DTypeLike = jnp.float32) -> jax.Array:
    flat = (math.prod(shape[:num_in]), math.prod(shape[num_in:]))
    return init(key, flat, dtype).reshape(shape)

  return wrapped


class DenseGeneral(nn.Module):
  """Contracts the axes `axis` of x against a kernel [*x.shape[axis], *features].

  The output keeps x's remaining axes in order, followed by `features`. `kernel_axes` names every kernel axis
  (contracted axes first); the bias [*features] takes the trailing names. Examples:
    query projection: features=(H, D), axis=-1, kernel_axes=('embed', 'heads', 'head_dim'): [B,S,E] -> [B,S,H,D]
    output projection: features=E, axis=(-2, -1), kernel_axes=('heads', 'head_dim', 'embed'): [B,S,H,D] -> [B,S,E]
  """
  features: int | tuple[int, ...]
  kernel_axes: tuple[str, ...]
  axis: int | tuple[int, ...] = -1
  use_bias: bool = True
  dtype: DTypeLike | None = None
  param_dtype: DTypeLike = jnp.float32
  kernel_init: Initializer = default_kernel_init
  bias_init: Initializer = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    features = (self.features,) if isinstance(self.features, int) else tuple(self.features)
    axis = (self.axis,) if isinstance(self.axis, int) else tuple(self.axis)
    axis = tuple(a % x.ndim for a in axis)
    if len(self.kernel_axes) != len(axis) + len(features):
      raise ValueError(f'kernel_axes {self.kernel_axes} must name {len(axis)} contracted axes and '
                       f'{len(features)} feature axes.')
    kernel_shape = tuple(x.shape[a] for a in axis) + features
    kernel_init = _flat_init(self.kernel_init, len(axis))
    kernel = self.param('kernel', nn.with_logical_partitioning(kernel_init, self.kernel_axes), kernel_shape,
                        self.param_dtype)
    bias = None
    if self.use_bias:
      bias = self.param('bias', nn.with_logical_partitioning(self.bias_init, self.kernel_axes[len(axis):]),
                        features, self.param_dtype)
    x, kernel, bias = promote_dtype(x, kernel, bias, dtype=self.dtype)
    if axis == tuple(range(x.ndim - len(axis), x.ndim)):
      y = contract_trailing(x, kernel, len(axis))
    else:
      y = jax.lax.dot_general(x, kernel, ((axis, tuple(range(len(axis)))), ((), ())))
    return y if bias is None else y + bias
