"""A checkpoint ready to generate from: module, parameters, tokenizer, EOS ids (and a LLaVA-OneVision processor).

`load_model` reads an HF directory (config.json, safetensors, tokenizer.json), or an mmjax trainer workdir: the
latest step's parameters (its EMA where the run kept one), with the architecture, tokenizer and EOS ids of the HF
directory `base`. The generation CLI (mmjax.generate.cli) and the benchmark responders (mmjax.evals.responders)
load through it.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from absl import logging

from mmjax.models.llava_onevision import LlavaOnevisionForConditionalGeneration, LlavaOnevisionProcessor
from mmjax.weights.pretrained import from_pretrained
from mmjax.weights.registry import spec_for_config
from mmjax.weights.safetensors_io import read_json_object
from mmjax.weights.safetensors_source import read_config
from mmjax.weights.workdir import read_workdir_params

DTYPES = ('float32', 'bfloat16', 'float16')


@dataclasses.dataclass(frozen=True)
class LoadedModel:
  """A module with its parameters, its tokenizer (a `tokenizers.Tokenizer`, or None) and its EOS ids."""
  module: Any
  params: Any
  tokenizer: Any
  eos_token_id: tuple[int, ...]
  source: str
  processor: Any = None  # LlavaOnevisionProcessor of a LLaVA-OneVision checkpoint: expands <image> placeholders

  def encode(self, text: str) -> list[int]:
    if self.tokenizer is None:
      raise ValueError(f'{self.source} has no tokenizer.json: give "prompt_ids" instead of "prompt" text.')
    return self.tokenizer.encode(text).ids

  def decode(self, ids: Sequence[int]) -> str | None:
    return None if self.tokenizer is None else self.tokenizer.decode(list(ids), skip_special_tokens=True)


def load_model(checkpoint: str | os.PathLike, base: str | os.PathLike | None = None, dtype: str = 'float32'
               ) -> LoadedModel:
  """Loads an HF directory, or an mmjax trainer workdir with the HF directory `base` (see the module docstring).

  A missing directory is a FileNotFoundError and a dtype outside DTYPES a ValueError, both before anything loads.
  """
  if dtype not in DTYPES:
    raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
  checkpoint = Path(checkpoint)
  if not checkpoint.is_dir():
    raise FileNotFoundError(f'checkpoint {checkpoint}: no such directory')
  hf_dir = hf_directory(checkpoint, base)
  if hf_dir != checkpoint and not (hf_dir / 'config.json').is_file():
    raise FileNotFoundError(f'base {hf_dir}: no config.json there (it must be an HF directory)')
  logging.info('Loading %s', checkpoint)
  if hf_dir == checkpoint:
    module, params, _ = from_pretrained(hf_dir, jnp.dtype(dtype))
  else:
    module, params = _from_workdir(checkpoint, hf_dir, jnp.dtype(dtype))
  processor = None
  if isinstance(module, LlavaOnevisionForConditionalGeneration) and (hf_dir / 'preprocessor_config.json').is_file():
    processor = LlavaOnevisionProcessor.from_pretrained(hf_dir)
  return LoadedModel(module, params, load_tokenizer(hf_dir), eos_token_ids(hf_dir), str(checkpoint), processor)


def hf_directory(checkpoint: str | os.PathLike, base: str | os.PathLike | None = None) -> Path:
  """The HF directory holding the architecture and tokenizer: `checkpoint` itself when it has a config.json, else
  `base` (an mmjax trainer workdir's); ValueError when neither does."""
  checkpoint = Path(checkpoint)
  if (checkpoint / 'config.json').is_file():
    return checkpoint
  if base is None:
    raise ValueError(f'{checkpoint} has no config.json, so it is not an HF directory; for an mmjax trainer workdir '
                     'pass --base HF_DIR for the architecture and the tokenizer.')
  return Path(base)


def _from_workdir(workdir: Path, hf_dir: Path, dtype: jnp.dtype) -> tuple[Any, Any]:
  """(module, params) of the latest finished step of a trainer workdir (its EMA where kept), with hf_dir's
  architecture (mmjax.weights.read_workdir_params)."""
  hf_config = read_config(hf_dir)
  spec = spec_for_config(hf_config, str(hf_dir / 'config.json'))
  config = spec.config_cls.from_hf_dict(hf_config)
  module = spec.build(config, dtype)
  abstract = nn.unbox(jax.eval_shape(module.init, jax.random.key(0), *spec.example_inputs(config))['params'])
  params, _ = read_workdir_params(workdir, abstract)
  return module, params


def load_tokenizer(hf_dir: str | os.PathLike) -> Any:
  """The `tokenizers.Tokenizer` of hf_dir/tokenizer.json, or None (logged) when there is none."""
  path = Path(hf_dir) / 'tokenizer.json'
  if not path.is_file():
    logging.warning('%s has no tokenizer.json: only "prompt_ids" input works and outputs carry no text.', hf_dir)
    return None
  import tokenizers
  return tokenizers.Tokenizer.from_file(str(path))


def eos_token_ids(hf_dir: str | os.PathLike) -> tuple[int, ...]:
  """EOS ids from generation_config.json, else config.json; () when neither names one."""
  for name in ('generation_config.json', 'config.json'):
    path = Path(hf_dir) / name
    eos = read_json_object(path).get('eos_token_id') if path.is_file() else None
    if eos is not None:
      return tuple(eos) if isinstance(eos, list) else (eos,)
  return ()
