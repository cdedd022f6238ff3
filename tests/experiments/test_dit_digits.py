"""dit_digits: the smoke config trains (the loss falls), and --mode sample writes its grid, samples and accuracy."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

import launch
from configs import dit_digits
from experiments.dit_digits import experiment
from experiments.dit_digits.model import diffusion_loss, make_model, make_tables
from experiments.dit_digits.sample import draw
from mmjax.train import aot, train_and_evaluate
from tests.train.metrics_io import read_metrics


def test_smoke_trains_and_samples(tmp_path):
  config = dit_digits.get_config('variant=smoke')
  config.log_every = 1
  config.progress_bar = False
  config.mesh = {'data': 1, 'fsdp': 1, 'tensor': 1}  # one device: sharding is tested on vit_digits
  workdir = str(tmp_path / 'run')
  out = train_and_evaluate(config, workdir)
  losses = [row['loss'] for _, row in sorted(read_metrics(workdir).items())]
  assert len(losses) == config.total_steps
  assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.05, losses
  assert np.isfinite(out['eval']['test/loss'])

  checkpoints = sorted(os.listdir(os.path.join(workdir, 'checkpoints')))
  summary = experiment.PROGRAMS['sample'](config, workdir)
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == checkpoints
  assert (summary['step'], summary['ema']) == (config.total_steps, True)
  files = os.path.join(workdir, 'samples')
  size, per_class, scales = config.data.image_size, config.sample.per_class, config.sample.cfg_scales
  with np.load(os.path.join(files, 'samples.npz')) as npz:
    samples, labels, predicted = npz['samples'], npz['labels'], npz['predicted']
    np.testing.assert_array_equal(npz['cfg_scales'], scales)
  assert samples.shape == (len(scales), 10 * per_class, size, size, 1)
  assert np.all(np.isfinite(samples)) and samples.min() >= -1 and samples.max() <= 1 and samples.std() > 0.05
  np.testing.assert_array_equal(labels, np.repeat(np.arange(10), per_class))
  assert predicted.shape == (len(scales), 10 * per_class)
  with open(os.path.join(files, 'accuracy.json')) as f:
    accuracy = json.load(f)
  for scale, p in zip(scales, predicted):
    assert accuracy['accuracy_by_cfg_scale'][f'{scale:g}'] == np.mean(p == labels)
  assert accuracy['classifier_real_test_accuracy'] > 0.9
  for scale in scales:
    with Image.open(os.path.join(files, f'grid_cfg{scale:g}.png')) as grid:
      assert grid.size == (2 * (per_class * (size + 1) - 1), 2 * (10 * (size + 1) - 1))  # one row per class


def test_learned_sigma_loss_and_ddpm_learned_range_sampling():
  config = dit_digits.get_config('variant=smoke')
  config.model.learn_sigma = True
  config.model.depth = 1
  config.sample.update(scheduler='DDPMScheduler', num_steps=3, per_class=1, cfg_scales=(1.0, 4.0))
  model = make_model(config)
  x0 = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (4, 16, 16, 1)), jnp.float32)
  labels = jnp.arange(4)
  params = model.init(jax.random.key(0), x0, labels, labels)['params']
  params = jax.tree.map(lambda p: p + 0.01, params)  # leave adaLN-Zero, so the variance head is not all zero
  loss, parts = diffusion_loss(model, make_tables(config), config, params, x0, labels, jax.random.key(1))
  assert loss.shape == (4,) and np.all(parts['vb'] > 0)
  np.testing.assert_allclose(loss, parts['mse'] + parts['vb'], rtol=1e-6)
  samples, labels = draw(config, params, [1.0, 4.0])
  assert samples.shape == (2, 10, 16, 16, 1) and np.all(np.isfinite(samples))
  assert not np.array_equal(samples[0], samples[1])  # the guidance scale acts


def test_launch_runs_the_trainer_programs_and_sample():
  assert list(launch.experiment_programs(experiment)) == ['train', 'eval', 'compile', 'sample']
  assert launch.pick_program(experiment, None)[0] == 'train'
  assert launch.pick_program(experiment, 'sample')[1] is experiment.PROGRAMS['sample']
  summary = aot.summary(aot.lower_train_step(dit_digits.get_config('variant=smoke'), num_devices=8))  # --mode compile
  assert summary['mesh']['data'] == 8 and summary['num_params'] > 0
