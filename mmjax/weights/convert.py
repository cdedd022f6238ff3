"""Conversion between HF directories and orbax checkpoints (`launch.py --mode convert`).

An mmjax params checkpoint is a directory holding `config.json` (the HF config of the model) and
`params/` (an orbax checkpoint of the flax parameter tree). A training workdir holds
`checkpoints/<step>/state`; its params (the EMA params when the run kept an EMA) convert to HF
given the model's HF config.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import orbax.checkpoint as ocp
from jax.typing import DTypeLike

from mmjax.weights.pretrained import from_pretrained, save_pretrained
from mmjax.weights.registry import spec_for_model_type


def hf_to_orbax(hf_dir: str | os.PathLike, out_dir: str | os.PathLike, dtype: DTypeLike = jnp.float32) -> Path:
  """Reads an HF directory and writes an mmjax params checkpoint; returns `out_dir`."""
  _, params, config = from_pretrained(hf_dir, dtype)
  out = Path(out_dir).absolute()
  if (out / 'params').exists():
    raise FileExistsError(f'{out / "params"} exists; choose an empty --convert_to directory')
  out.mkdir(parents=True, exist_ok=True)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(out / 'params', params)
  (out / 'config.json').write_text(json.dumps(config.to_hf_dict(), indent=2, sort_keys=True))
  return out


def _latest_state(workdir: Path) -> Path:
  steps = sorted(int(d.name) for d in (workdir / 'checkpoints').iterdir() if d.name.isdigit())
  if not steps:
    raise FileNotFoundError(f'{workdir / "checkpoints"} holds no finished checkpoint')
  return workdir / 'checkpoints' / str(steps[-1]) / 'state'


def orbax_to_hf(src: str | os.PathLike, out_dir: str | os.PathLike, *,
                hf_config: str | os.PathLike | None = None) -> Path:
  """Writes an HF directory from an mmjax params checkpoint or a training workdir; returns `out_dir`.

  hf_config: config.json (or an HF directory holding one) describing the model; required for a
    training workdir, optional for a params checkpoint (which carries its own).
  """
  src = Path(src).absolute()
  if (src / 'params').is_dir():
    params_dir, config_file = src / 'params', src / 'config.json'
    pick = lambda tree: tree  # noqa: E731
  elif (src / 'checkpoints').is_dir():
    params_dir, config_file = _latest_state(src), None
    pick = lambda tree: tree.get('ema_params', tree['params'])  # noqa: E731
  else:
    raise FileNotFoundError(f'{src} is neither an mmjax params checkpoint (params/ + config.json) '
                            'nor a training workdir (checkpoints/)')
  if hf_config is not None:
    config_file = Path(hf_config)
    config_file = config_file / 'config.json' if config_file.is_dir() else config_file
  if config_file is None or not config_file.is_file():
    raise FileNotFoundError(f'No HF config for {src}: pass --hf_config=<config.json or HF directory>')
  hf_dict: dict[str, Any] = json.loads(config_file.read_text())
  config = spec_for_model_type(hf_dict.get('model_type'), str(config_file)).config_cls.from_hf_dict(hf_dict)
  with ocp.StandardCheckpointer() as ckptr:
    params = pick(ckptr.restore(params_dir))
  save_pretrained(out_dir, config, params)
  return Path(out_dir)
