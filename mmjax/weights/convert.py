"""Conversion between HF directories and orbax checkpoints (`launch.py --mode convert`).

An mmjax params checkpoint is a directory holding `config.json` (the HF config of the model, with its special
token ids), `params/` (an orbax checkpoint of the flax parameter tree) and the source folder's tokenizer,
processor and generation files (mmjax.weights.assets). A training workdir holds `checkpoints/<step>/state`; its
latest parameters (the EMA where the run kept one; mmjax.weights.workdir) convert to HF given the model's HF
config folder, whose tokenizer and processor files go along. Conversions write only into a new or empty folder.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from flax.traverse_util import flatten_dict, unflatten_dict
from jax.typing import DTypeLike

from mmjax.weights.assets import copy_assets, require_empty, with_special_tokens
from mmjax.weights.pretrained import from_pretrained, save_pretrained
from mmjax.weights.registry import spec_for_config
from mmjax.weights.safetensors_source import read_config
from mmjax.weights.source import fill, unboxed
from mmjax.weights.workdir import OrbaxSource, params_checkpoint_source, workdir_source


def hf_to_orbax(hf_dir: str | os.PathLike, out_dir: str | os.PathLike, dtype: DTypeLike = jnp.float32) -> Path:
  """Reads an HF directory and writes an mmjax params checkpoint into the new or empty `out_dir`; returns it."""
  hf_dir, out = Path(hf_dir), require_empty(Path(out_dir).absolute(), '--convert_to')
  _, params, config = from_pretrained(hf_dir, dtype)
  out.mkdir(parents=True, exist_ok=True)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(out / 'params', params)
  copy_assets(hf_dir, out)
  hf_config = with_special_tokens(config.to_hf_dict(), read_config(hf_dir))
  (out / 'config.json').write_text(json.dumps(hf_config, indent=2, sort_keys=True))
  return out


def orbax_to_hf(src: str | os.PathLike, out_dir: str | os.PathLike, *,
                hf_config: str | os.PathLike | None = None) -> Path:
  """Writes an HF directory into the new or empty `out_dir` from an mmjax params checkpoint or a training
  workdir; returns `out_dir`. Parameters keep the dtype they were saved in.

  hf_config: an HF directory (or its config.json) describing the model; its folder's tokenizer, processor and
    generation files and its special token ids go along. Required for a training workdir, optional for a params
    checkpoint (which carries its own).
  """
  src, out = Path(src).absolute(), require_empty(out_dir, '--convert_to')
  if (src / 'params').is_dir():
    source: OrbaxSource = params_checkpoint_source(src)
    config_file = src / 'config.json'
  elif (src / 'checkpoints').is_dir():
    source, config_file = workdir_source(src)[0], None
  else:
    raise FileNotFoundError(f'{src} is neither an mmjax params checkpoint (params/ + config.json) '
                            'nor a training workdir (checkpoints/)')
  if hf_config is not None:
    config_file = Path(hf_config) / 'config.json' if Path(hf_config).is_dir() else Path(hf_config)
  if config_file is None or not config_file.is_file():
    raise FileNotFoundError(f'No HF config for {src}: pass --hf_config=<config.json or HF directory>')
  hf_dict = read_config(config_file)
  spec = spec_for_config(hf_dict, str(config_file))
  config = spec.config_cls.from_hf_dict(hf_dict)
  module = spec.build(config, jnp.float32)
  shapes = flatten_dict(unboxed(jax.eval_shape(module.init, jax.random.key(0), *spec.example_inputs(config))['params']))
  # Keep the stored dtypes (a bf16 run exports bf16); shapes and names must be the config's.
  wanted = {path: jax.ShapeDtypeStruct(value.shape, source.stored[path].dtype if path in source.stored else
                                       value.dtype) for path, value in shapes.items()}
  params = unflatten_dict(fill(source, wanted))
  save_pretrained(out, config, params, assets_from=config_file.parent)
  return out
