"""The smoke config of the first experiment trains on 8 devices and learns."""
import os

import numpy as np

from configs import vit_digits
from mmjax.train import train_and_evaluate
from tests.numerics import assert_close, assert_close_programs
from tests.train.metrics_io import read_metrics


def test_smoke_config_trains_and_loss_decreases(tmp_path):
  config = vit_digits.get_config('variant=smoke')
  config.log_every = 1
  config.progress_bar = False
  workdir = str(tmp_path / 'smoke')
  out = train_and_evaluate(config, workdir)  # the experiment comes from config.experiment
  losses = [row['loss'] for _, row in sorted(read_metrics(workdir).items())]
  assert len(losses) == config.total_steps
  assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.05, losses
  assert out['eval']['test/accuracy'] > 0.15  # chance is 0.1
  assert os.path.getsize(out['report']['predictions_png']) > 1000
  assert read_metrics(workdir, 'eval')[10]['test/n'] == 359


def _short(tmp_path, name, **kw):
  config = vit_digits.get_config('variant=smoke')
  config.total_steps, config.log_every, config.eval_every, config.progress_bar = 5, 1, 0, False
  config.mesh = {'data': 1, 'fsdp': 1, 'tensor': 1}
  for k, v in kw.items():
    config[k] = v
  train_and_evaluate(config, str(tmp_path / name))
  return [row['loss'] for _, row in sorted(read_metrics(str(tmp_path / name)).items())]


def test_remat_and_bf16_compute_options(tmp_path):
  base = _short(tmp_path, 'base')
  remat = _short(tmp_path, 'remat', remat_policy='full')
  assert_close_programs(remat, base)
  bf16 = _short(tmp_path, 'bf16', compute_dtype='bfloat16')
  assert np.all(np.isfinite(bf16))
  assert not np.array_equal(bf16, base)  # the option really changes the compute dtype
  assert_close(bf16, base, tol=2e-2)  # bfloat16 matmuls: 8 bits of mantissa
