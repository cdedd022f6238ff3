"""experiments/bench/sd15.py --quick on the CPU backend (conftest): both sides of the UNet forward and of the DDIM loop
agree, and the report says which rows were not measured."""
from __future__ import annotations

import json

import jax
import jax.numpy as jnp

from experiments.bench import sd15
from tests.numerics import TORCH


def test_quick_benchmark_agrees_with_diffusers(tmp_path, capsys):
  out = tmp_path / 'sd15.json'
  rows = sd15.main(['--quick', '--torch-threads', '1', '--json', str(out)])
  assert list(rows) == ['CPU float32'] and json.loads(out.read_text())['CPU float32'] == rows['CPU float32']
  forward, sampled = rows['CPU float32']['forward'], rows['CPU float32']['sample']
  # atol = rtol = 1e-4 (the torch policy) on the largest element.
  assert forward['max_abs_diff'] <= TORCH * (1 + forward['output_scale'])
  assert sampled['max_abs_diff'] <= TORCH * (1 + sampled['latent_scale'])
  assert forward['speedup'] > 0 and sampled['mmjax_images_per_s'] > 0 and sampled['diffusers_images_per_s'] > 0
  report = capsys.readouterr().out
  assert report.count(f'| GPU bfloat16 | {sd15.NOT_MEASURED} |') == 2
  assert report.count('| CPU float32 | ') == 2


def test_bfloat16_copies_leave_the_float32_models_alone():
  import torch

  models = sd15.build_models(sd15.QUICK)
  module, params, torch_unet, torch_dtype = sd15.on(models, 'bfloat16', 'cpu')
  assert module.dtype == jnp.bfloat16 and torch_dtype == torch.bfloat16
  assert {p.dtype for p in jax.tree.leaves(params)} == {jnp.dtype(jnp.bfloat16)}
  assert {p.dtype for p in torch_unet.parameters()} == {torch.bfloat16}
  assert {p.dtype for p in jax.tree.leaves(models.params)} == {jnp.dtype(jnp.float32)}
  assert {p.dtype for p in models.torch_unet.parameters()} == {torch.float32}
