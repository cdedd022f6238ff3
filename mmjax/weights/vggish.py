"""The released torchvggish state dict (vggish-10086976.pth, as AVSBench ships it) -> mmjax.models.vggish params.

features.{0,3,6,8,11,13}.{weight,bias} -> features_{i}/{kernel, bias}; embeddings.{0,2,4} -> embeddings_{i}. The PCA
parameters of torchvggish's postprocessor (pca_eigen_vectors, pca_means; the separate vggish_pca_params file) are
read past: PCA is off in all AVS code.
"""
from __future__ import annotations

import os
import re

import jax
import jax.numpy as jnp
from jax.typing import DTypeLike

from mmjax.models.vggish import CONV_WIDTHS, EXAMPLE_FRAMES, FC_WIDTHS, NUM_BANDS, VGGish
from mmjax.weights.key_map import CONV, LINEAR, SAME, KeyMap, Shapes, Target
from mmjax.weights.state_dict import StateDict, load_state_dict, read_state_dict


def key_map(conv_widths: tuple[int | str, ...] = CONV_WIDTHS, fc_widths: tuple[int, ...] = FC_WIDTHS) -> KeyMap:
  """torchvggish names -> paths in the params tree (of a VGGish with these widths)."""
  targets, index = {}, 0
  for width in conv_widths:
    if width == 'M':
      index += 1
      continue
    targets[f'features.{index}.weight'] = Target((f'features_{index}', 'kernel'), CONV)
    targets[f'features.{index}.bias'] = Target((f'features_{index}', 'bias'), SAME)
    index += 2
  for i in range(0, 2 * len(fc_widths), 2):
    targets[f'embeddings.{i}.weight'] = Target((f'embeddings_{i}', 'kernel'), LINEAR)
    targets[f'embeddings.{i}.bias'] = Target((f'embeddings_{i}', 'bias'), SAME)
  return KeyMap(targets, ignore=(r'pproc\..*', r'pca_(eigen_vectors|means)'))


def layout_key_map(shapes: Shapes) -> KeyMap:
  """The key map of a VGGish parameter tree of these shapes (the 'torchvggish' layout: a .safetensors copy of the
  released state dict read through `load_into` / init_from)."""
  conv = {int(m[1]): shape[-1] for path, shape in shapes.items()
          if path[-1] == 'kernel' and (m := re.fullmatch(r'features_(\d+)', path[0]))}
  fc = [shape[-1] for path, shape in sorted(shapes.items(), key=lambda item: item[0])
        if path[-1] == 'kernel' and path[0].startswith('embeddings_')]
  widths, index = [], 0
  for i in sorted(conv):
    widths += ['M'] * (i - index) + [conv[i]]  # each pool between two convs takes one Sequential index
    index = i + 2
  return key_map((*widths, 'M'), tuple(fc))


def load_vggish(source: str | os.PathLike | StateDict, dtype: DTypeLike = jnp.float32, *, trainable: bool = False,
                conv_widths: tuple[int | str, ...] = CONV_WIDTHS, fc_widths: tuple[int, ...] = FC_WIDTHS
                ) -> tuple[VGGish, dict]:
  """(module, params) from the torchvggish state dict: a .pth (torch.load weights_only) or .safetensors path, or
  the dict itself (widths: the released network's unless given). WeightsMismatchError names every missing,
  unexpected or misshapen tensor."""
  where = str(source) if isinstance(source, (str, os.PathLike)) else 'VGGish state dict'
  state = read_state_dict(source) if isinstance(source, (str, os.PathLike)) else source
  module = VGGish(trainable, conv_widths, fc_widths, dtype=dtype, param_dtype=dtype)
  abstract = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, EXAMPLE_FRAMES, NUM_BANDS, 1), dtype))
  return module, load_state_dict(abstract['params'], state, key_map(conv_widths, fc_widths), where)
