"""The vocabulary of weight conversion: layout transforms, key maps (HF tensor name -> flax path + transform),
the per-model spec that `from_pretrained` / `save_pretrained` look up by HF `model_type`, and the layouts of
checkpoint files that carry no config (key maps built from the target's parameter shapes).
"""
import dataclasses
import math
import re
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, TypeAlias

import flax.linen as nn
import numpy as np
from jax.typing import DTypeLike


class Transform:
  """A layout change between an HF tensor and a flax parameter; the base class is the identity."""

  def hf_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The HF tensor shape that becomes a flax parameter of `shape`."""
    return shape

  def to_flax(self, x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """HF tensor of shape hf_shape(shape) -> flax parameter of `shape`."""
    return x

  def to_hf(self, x: np.ndarray) -> np.ndarray:
    """Inverse of to_flax."""
    return x


class Same(Transform):
  """Identical layout: norms, embeddings, position tables, plain biases."""


class Flatten(Transform):
  """HF [prod(shape)] <-> flax `shape`, e.g. a q_proj bias [H * D] <-> [H, D]."""

  def hf_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
    return (math.prod(shape),)

  def to_flax(self, x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    return x.reshape(shape)

  def to_hf(self, x: np.ndarray) -> np.ndarray:
    return x.reshape(-1)


@dataclasses.dataclass(frozen=True)
class Linear(Transform):
  """torch Linear weight [out, in] <-> flax kernel whose first `in_axes` axes hold `in` and the rest `out`.

  in_axes=1: Dense [in, out] or a projection to heads [E, H, D]; in_axes=2: an output projection [H, D, E].
  """
  in_axes: int = 1

  def hf_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
    return (math.prod(shape[self.in_axes:]), math.prod(shape[:self.in_axes]))

  def to_flax(self, x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    return x.T.reshape(shape)

  def to_hf(self, x: np.ndarray) -> np.ndarray:
    return x.reshape(math.prod(x.shape[:self.in_axes]), -1).T


class Conv(Transform):
  """torch Conv2d weight [out, in, kh, kw] <-> flax kernel [kh, kw, in, out]."""

  def hf_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
    kh, kw, cin, cout = shape
    return (cout, cin, kh, kw)

  def to_flax(self, x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    return x.transpose(2, 3, 1, 0)

  def to_hf(self, x: np.ndarray) -> np.ndarray:
    return x.transpose(3, 2, 0, 1)


SAME, FLATTEN, LINEAR, LINEAR_OUT, CONV = Same(), Flatten(), Linear(1), Linear(2), Conv()

ParamPath: TypeAlias = tuple[str, ...]
Shapes: TypeAlias = Mapping[ParamPath, tuple[int, ...]]


class Target(NamedTuple):
  """Where an HF tensor goes: the flax parameter path (e.g. ('layers_0', 'mlp', 'fc1', 'kernel')) and the layout."""
  path: tuple[str, ...]
  transform: Transform


@dataclasses.dataclass(frozen=True)
class KeyMap:
  """One model's HF tensor names -> Targets.

  targets: canonical HF name -> Target; `save_pretrained` writes these names.
  ignore: regexes (full match, on canonical names) of tensors that are read past, e.g. rotary inv_freq buffers.
  optional_prefix: a prefix of every canonical name that files written by some transformers versions omit.
  """
  targets: Mapping[str, Target]
  ignore: tuple[str, ...] = ()
  optional_prefix: str = ''

  def canonical(self, name: str) -> str:
    """The canonical form of a tensor name found in a file."""
    if self.optional_prefix and not name.startswith(self.optional_prefix):
      return self.optional_prefix + name
    return name

  def is_ignored(self, name: str) -> bool:
    return any(re.fullmatch(pattern, name) for pattern in self.ignore)


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """What the weight I/O needs to know about one HF model_type (or diffusers `_class_name`).

  config_cls: a frozen dataclass with `from_hf_dict(dict)` and `to_hf_dict()` (which includes model_type, or
    `_class_name` for a diffusers model).
  build: (config, dtype) -> the flax module, with dtype as compute and parameter dtype.
  example_inputs: config -> positional arguments for `module.init` (only their shapes matter).
  key_map: config -> KeyMap.
  """
  config_cls: type
  build: Callable[[Any, DTypeLike], nn.Module]
  example_inputs: Callable[[Any], tuple[Any, ...]]
  key_map: Callable[[Any], KeyMap]


# A named layout of checkpoint files without a config (timm, torchvision, an original repository): the target's
# parameter shapes (flax path -> shape) -> the KeyMap of the file's tensor names.
Layout: TypeAlias = Callable[[Shapes], KeyMap]


def layer_count(shapes: Shapes) -> int:
  """Number of `layers_{i}` subtrees at the root of `shapes` (1 + the largest i; 0 without any)."""
  found = [int(m.group(1)) for path in shapes if (m := re.fullmatch(r'layers_(\d+)', path[0]))]
  return max(found) + 1 if found else 0


def subtree(shapes: Shapes, name: str) -> dict[ParamPath, tuple[int, ...]]:
  """The shapes under the root subtree `name`, with their paths relative to it."""
  return {path[1:]: shape for path, shape in shapes.items() if path[0] == name and len(path) > 1}
