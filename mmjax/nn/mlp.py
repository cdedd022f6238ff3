"""Feed-forward blocks: `Mlp` (fc1 -> activation -> fc2, ViT/CLIP) and `SwiGLU` (gated, Llama/Qwen2)."""
import functools
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.nn.initializers import Initializer
from jax.typing import DTypeLike

from mmjax.nn.linear import Dense, default_kernel_init


def _quick_gelu(x: jax.Array) -> jax.Array:
  return x * jax.nn.sigmoid(1.702 * x)


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    'gelu': lambda x: jax.nn.gelu(x, approximate=False),
    'gelu_tanh': lambda x: jax.nn.gelu(x, approximate=True),
    'relu': jax.nn.relu,
    'silu': jax.nn.silu,
    'quick_gelu': _quick_gelu,
}


def get_activation(name: str) -> Callable[[jax.Array], jax.Array]:
  """The activation called `name` ('gelu' is the exact erf form, 'gelu_tanh' the tanh approximation)."""
  if name not in ACTIVATIONS:
    raise ValueError(f'Unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}.')
  return ACTIVATIONS[name]


def _hidden_axes(ndim: int) -> tuple[str | None, ...]:
  """Logical axes of a hidden activation [B, ..., S, mlp] ([B, mlp] when ndim == 2, [mlp] when ndim == 1)."""
  axes: list[str | None] = [None] * ndim
  axes[-1] = 'mlp'
  if ndim >= 2:
    axes[0] = 'batch'
  if ndim >= 3:
    axes[-2] = 'length'
  return tuple(axes)


class Mlp(nn.Module):
  """fc2(activation(fc1(x))); x [..., E] -> [..., out_features or E]."""
  hidden_features: int
  out_features: int | None = None
  activation: str = 'gelu'
  use_bias: bool = True
  dtype: DTypeLike | None = None
  param_dtype: DTypeLike = jnp.float32
  kernel_init: Initializer = default_kernel_init
  bias_init: Initializer = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    dense = functools.partial(Dense, use_bias=self.use_bias, dtype=self.dtype, param_dtype=self.param_dtype,
                              kernel_init=self.kernel_init, bias_init=self.bias_init)
    h = get_activation(self.activation)(dense(self.hidden_features, ('embed', 'mlp'), name='fc1')(x))
    h = nn.with_logical_constraint(h, _hidden_axes(h.ndim))
    return dense(self.out_features or x.shape[-1], ('mlp', 'embed'), name='fc2')(h)


class SwiGLU(nn.Module):
  """down_proj(activation(gate_proj(x)) * up_proj(x)), as HF Qwen2MLP; x [..., E] -> [..., E]."""
  hidden_features: int
  activation: str = 'silu'
  use_bias: bool = False
  dtype: DTypeLike | None = None
  param_dtype: DTypeLike = jnp.float32
  kernel_init: Initializer = default_kernel_init
  bias_init: Initializer = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    dense = functools.partial(Dense, use_bias=self.use_bias, dtype=self.dtype, param_dtype=self.param_dtype,
                              kernel_init=self.kernel_init, bias_init=self.bias_init)
    gate = get_activation(self.activation)(dense(self.hidden_features, ('embed', 'mlp'), name='gate_proj')(x))
    h = gate * dense(self.hidden_features, ('embed', 'mlp'), name='up_proj')(x)
    h = nn.with_logical_constraint(h, _hidden_axes(h.ndim))
    return dense(x.shape[-1], ('mlp', 'embed'), name='down_proj')(h)
