"""null2geo: the config is the spec's DiT-B/1, CFG guides all four ε channels, the sampler is the respaced 250-step
DDPM, missing data is named, and a tiny smoke run trains, samples non-empty meshes and evaluates p-FID."""
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import trimesh
from PIL import Image

import launch
from configs import object_images
from experiments.object_images import experiment, null2geo, sample
from mmjax.diffusion import combine
from mmjax.train import train_and_evaluate
from tests.train.metrics_io import read_metrics


def test_config_is_the_spec_dit_b1():
  config = object_images.get_config('stage=null2geo')
  dit = null2geo.dit_config(config)
  assert (dit.patch_size, dit.num_layers, dit.inner_dim, dit.num_attention_heads) == (1, 12, 768, 12)
  assert (dit.in_channels, dit.output_channels, dit.num_classes, dit.sample_size) == (4, 8, 63, 64)
  assert (dit.downscale_freq_shift, dit.norm_eps, dit.activation_fn) == (0.0, 1e-6, 'gelu-approximate')
  assert null2geo.make_model(config).class_dropout_prob == 0.1
  assert (config.diffusion.beta_schedule, config.diffusion.num_train_timesteps) == ('squaredcos_cap_v2', 1000)
  o = config.optim
  assert (o.name, o.lr, o.weight_decay, o.clip_norm, o.schedule, config.ema_decay) == ('adamw', 1e-4, 0, 0,
                                                                                        'constant', 0)
  assert (config.compute_dtype, config.batch_size) == ('bfloat16', 32)
  assert list(launch.experiment_programs(experiment)) == ['train', 'eval', 'compile', 'encode', 'sample', 'evaluate',
                                                          'n2g2m']
  with pytest.raises(ValueError, match="stage must be one of .*null2geo.*got 'geo3mat'"):
    object_images.get_config('stage=geo3mat')


def test_sampler_is_the_respaced_250_step_ddpm():
  config = object_images.get_config()
  scheduler = sample.make_scheduler(config)
  # guided-diffusion's space_timesteps(1000, '250') keeps round(i * 999 / 249): 0 and 999 included.
  np.testing.assert_array_equal(np.sort(np.asarray(scheduler.timesteps)), np.round(np.linspace(0, 999, 250)))


def test_cfg_guides_all_four_eps_channels_not_the_variance():
  g = sample.guidance(object_images.get_config())
  outputs = np.random.default_rng(0).normal(size=(2, 3, 4, 4, 8)).astype(np.float32)  # (uncond, cond) ε and v
  guided = np.asarray(combine(outputs, g.scales, g.channels))
  u, c = np.asarray(outputs[0]), np.asarray(outputs[1])
  np.testing.assert_allclose(guided[..., :4], u[..., :4] + 4.0 * (c[..., :4] - u[..., :4]), rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(guided[..., 4:], c[..., 4:])


def test_missing_data_is_named(tmp_path):
  config = object_images.get_config()
  with pytest.raises(ValueError, match=r"config.data.path is empty: data.source='h5'"):
    null2geo.make_source(config)
  config.data.source, config.data.path = 'npz', str(tmp_path)
  with pytest.raises(ValueError, match='config.data.meta_path is empty'):
    null2geo.make_source(config)
  config.data.source, config.data.path = 'h5', str(tmp_path / 'df_p64_m02_res64.h5')
  with pytest.raises(FileNotFoundError, match='df_p64_m02_res64.h5 does not exist'):
    null2geo.make_source(config)
  config.data.source = 'obj'
  with pytest.raises(ValueError, match=r"config.data.source='obj' is not one of"):
    null2geo.make_source(config)


def test_smoke_trains_samples_meshes_and_evaluates(tmp_path):
  config = object_images.get_config('variant=smoke')
  config.data.update(smoke_dir=str(tmp_path / 'data'), smoke_shapes=6)
  config.model.update(patch=8, width=32, depth=1, num_heads=2)
  config.update(total_steps=4, ckpt_every=2, log_every=1, progress_bar=False)
  config.mesh = {'data': 1, 'fsdp': 1, 'tensor': 1}
  config.sample.update(num_steps=4, num_samples=3, batch_size=2)
  config.eval.update(steps=(2, 4), num_samples=3, num_ref=3, num_points=512, pointnet_width=4)
  workdir = str(tmp_path / 'run')
  train_and_evaluate(config, workdir)
  losses = [row['loss'] for _, row in sorted(read_metrics(workdir).items())]
  assert len(losses) == 4 and np.all(np.isfinite(losses))

  summary = experiment.PROGRAMS['sample'](config, workdir)
  out = summary['out_dir']
  with np.load(os.path.join(out, 'omages.npz')) as npz:
    omages, labels = npz['omages'], npz['labels']
  s = config.data.size  # variant=smoke: 32² omages
  assert omages.shape == (3, s, s, 4) and omages.min() >= 0 and omages.max() <= 1
  np.testing.assert_array_equal(labels, [0, 1, 2])  # the smoke classes (primitive kinds) cycled
  assert summary['step'] == 4 and len(summary['empty']) < 3
  for i, faces in enumerate(summary['faces']):
    if faces:
      mesh = trimesh.load(os.path.join(out, 'meshes', f'{i:03d}.glb'), force='mesh')
      assert len(mesh.faces) == faces
      assert os.path.getsize(os.path.join(out, 'meshes', f'{i:03d}.obj')) > 0
  with Image.open(os.path.join(out, 'preview.png')) as preview:
    assert preview.size == (2 * (3 * (2 * s + 2) - 2), 2 * s)

  result = experiment.PROGRAMS['evaluate'](config, workdir)
  assert [r['step'] for r in result['results']] == [2, 4]
  for r in result['results']:
    assert r['p_fid'] is None or (np.isfinite(r['p_fid']) and r['num_points'] == 512)
  with open(os.path.join(workdir, 'samples', 'eval.json')) as f:
    assert json.load(f) == json.loads(json.dumps(result))


def test_loss_has_mse_and_vb_on_four_channels():
  config = object_images.get_config('variant=smoke')
  config.model.update(patch=8, width=32, depth=1, num_heads=2)
  exp, batch = experiment.abstract_experiment(config)
  params = jax.tree.map(lambda p: p + 0.01, nn.unbox(exp.init_params(jax.random.key(0))))  # leave adaLN-Zero
  s = config.data.size
  x0 = jnp.asarray(np.random.default_rng(0).choice([-1.0, 1.0], (2, s, s, 4)), jnp.float32)
  loss, parts = jax.jit(exp.loss_fn)(params, {'omage': x0, 'label': jnp.array([0, 63])}, jax.random.key(1), 0)
  assert batch['omage'].shape == (config.batch_size, s, s, 4)
  assert parts['vb'] > 0 and parts['mse'] > 0
  np.testing.assert_allclose(loss, parts['mse'] + parts['vb'], rtol=1e-6)

