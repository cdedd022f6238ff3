"""`load_into`: fill a parameter tree (or one subtree of a model) from any checkpoint mmjax reads.

A source is a path to one of:
  a trainer workdir (checkpoints/<step>/state: the latest finished step, its EMA where kept),
  an mmjax params checkpoint (params/ [+ config.json], as `launch.py --mode convert` writes),
  an HF folder (config.json with `model_type` + safetensors) or a diffusers folder (`_class_name`),
  a .safetensors file (or a folder of weight files) in a registered layout (`layout=`, registry.LAYOUTS).
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from flax.traverse_util import flatten_dict, unflatten_dict

from mmjax.weights.key_map import ParamPath
from mmjax.weights.registry import LAYOUTS
from mmjax.weights.safetensors_source import folder_source, layout_source
from mmjax.weights.source import Source, fill, parse_path, unboxed
from mmjax.weights.workdir import as_path, params_checkpoint_source, workdir_source


def open_source(path: str | os.PathLike, *, layout: str | None = None,
                shapes: Mapping[ParamPath, tuple[int, ...]] | None = None) -> Source:
  """The Source at `path` (see the module docstring).

  layout: read safetensors with this registered layout instead of by their config.json; its key map follows
    `shapes` (flax path -> shape of every parameter to read, in the source's path space).
  """
  root = as_path(path)
  if layout is not None:
    if shapes is None:
      raise ValueError(f'{root}: reading the {layout!r} layout needs the shapes of the parameters to read.')
    return layout_source(Path(root), layout, shapes)
  if (root / 'checkpoints').is_dir():
    return workdir_source(root)[0]
  if (root / 'params').is_dir():
    return params_checkpoint_source(root)
  if (root / 'config.json').is_file():
    return folder_source(Path(root))[0]
  if root.is_file():
    raise ValueError(f'{root} is a single file: name its layout (layout=..., one of {sorted(LAYOUTS)}).')
  if not root.exists():
    raise FileNotFoundError(f'{root} does not exist.')
  raise FileNotFoundError(f'{root} is not a weight source: expected a trainer workdir (checkpoints/), an mmjax '
                          'params checkpoint (params/), an HF or diffusers folder (config.json + safetensors), '
                          'or a safetensors file with layout=.')


def load_into(abstract_params: Any, source: str | os.PathLike, prefix: str = '', *, layout: str | None = None,
              skip: Sequence[str] = ()) -> dict[str, Any]:
  """The parameters of `abstract_params` read from `source` (see the module docstring).

  abstract_params: the tree to fill (a whole model or one subtree of it), leaves jax.ShapeDtypeStruct (or flax
    boxes of them) whose dtype and sharding the arrays get (the default device where sharding is None).
  prefix: the '/'-joined path of the part of the source that fills the tree, e.g. 'language_model' to start a
    Qwen2 from a LLaVA checkpoint; '' for the whole source. (To fill a subtree of a bigger model, pass that
    subtree's abstract params; `initial_params` does this for each subtree of an init_from mapping.)
  layout: the registered layout of a .safetensors file (or of a folder's weight files) that has no config.
  skip: regexes of source parameters (paths relative to prefix) to read past, e.g. 'head/.*'.

  Raises WeightsMismatchError naming, with the file or checkpoint, every missing, unexpected or misshapen tensor.
  """
  wanted = flatten_dict(unboxed(abstract_params))
  under = parse_path(prefix)
  opened = open_source(source, layout=layout, shapes={under + path: tuple(v.shape) for path, v in wanted.items()})
  return unflatten_dict(fill(opened, wanted, prefix=under, skip=tuple(skip)))
