"""The geo2mat stage as programs and the N2G2M pipeline: the config is the spec's stage 2, the stage trains through
the shared trainer with an EMA, samples materials for data geometry (meshes whose GLB reloads with every vertex),
and N2G2M chains a null2geo and a geo2mat run into textured meshes, previews, renders and a summary."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import trimesh
from PIL import Image

from configs import object_images
from experiments.object_images import experiment, geo2mat_stage
from experiments.object_images.geo2mat import Geo2MatConfig
from experiments.object_images.meshing import omage_to_mesh
from experiments.object_images.null2geo import make_source
from mmjax.train import train_and_evaluate
from mmjax.weights import read_workdir_params
from tests.train.metrics_io import read_metrics

S = object_images.get_config('variant=smoke').data.size  # 32² omages: the U-Net steps cost half of 64²'s

# Smaller than variant=smoke's U-Net: one level, so that the step and the sampler compile in seconds.
TINY_UNET = dict(dim=8, dim_mults=(1,), layer_attns=(False,), layer_cross_attns=(False,), attn_heads=1,
                 attn_dim_head=4, text_embed_dim=4, max_text_len=2, attn_pool_num_latents=2, attn_pool_max_seq_len=2,
                 learned_sinu_pos_emb_dim=4, resnet_groups=2, num_resnet_blocks=0)


def _config(arg: str, data_dir: str):
  config = object_images.get_config(arg)
  config.data.update(smoke_dir=data_dir, smoke_shapes=5)  # variant=smoke: 32² omages
  config.unet.update(TINY_UNET)
  config.model.update(patch=8, width=32, depth=1, num_heads=2)
  config.update(ckpt_every=2, log_every=1, progress_bar=False)
  config.mesh = {'data': 1, 'fsdp': 1, 'tensor': 1}
  config.sample.update(num_steps=2, num_samples=3, batch_size=2)
  config.geo2mat.num_steps = 2
  config.n2g2m.render_size = 32
  return config


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """(geo2mat config, its workdir, null2geo config, its workdir): a 30-step geo2mat run and a 1-step null2geo run."""
  root = tmp_path_factory.mktemp('n2g2m')
  data = str(root / 'data')
  geo = _config('variant=smoke,stage=geo2mat', data)
  # ema_decay 0.5 makes the EMA of a constant exactly that constant (x * 0.5 + x * 0.5 == x in floating point).
  geo.update(total_steps=30, batch_size=2, ckpt_every=15, ema_decay=0.5)
  geo.optim.update(lr=1e-2, warmup_steps=0)
  geo_dir = str(root / 'geo2mat')
  train_and_evaluate(geo, geo_dir)
  null = _config('variant=smoke', data)
  null.update(total_steps=1, ckpt_every=1, batch_size=2)
  null_dir = str(root / 'null2geo')
  train_and_evaluate(null, null_dir)
  return geo, geo_dir, null, null_dir


def test_geo2mat_config_is_the_spec_stage_2():
  config = object_images.get_config('stage=geo2mat')
  assert geo2mat_stage.unet_config(config) == Geo2MatConfig()  # dim 256, mults (1, 2, 3, 4), 3 blocks, 8 heads
  o = config.optim
  assert (o.lr, o.b1, o.b2, o.eps, o.weight_decay, o.clip_norm, o.schedule) == (1e-4, 0.9, 0.99, 1e-8, 0, 0,
                                                                                  'constant')
  assert (config.ema_decay, config.compute_dtype, config.batch_size) == (0.999, 'float32', 32)
  g = config.geo2mat
  assert (g.cond_drop_prob, g.min_snr_gamma, g.num_steps, g.cond_scale, g.dynamic_threshold) == (0.1, 5, 1000, 1, 0.95)
  with pytest.raises(ValueError, match='config.n2g2m.null2geo_workdir is empty'):
    experiment.PROGRAMS['n2g2m'](config, '/nonexistent')
  with pytest.raises(ValueError, match='--mode evaluate scores a null2geo run'):
    experiment.PROGRAMS['evaluate'](config, '/nonexistent')


def test_geo2mat_trains_through_the_trainer_with_an_ema(runs):
  geo, geo_dir, _, _ = runs
  losses = [row['loss'] for _, row in sorted(read_metrics(geo_dir).items())]
  assert len(losses) == 30 and np.all(np.isfinite(losses))
  abstract = geo2mat_stage.abstract_params(geo)
  early, _ = read_workdir_params(geo_dir, abstract, step=15)
  params, info = read_workdir_params(geo_dir, abstract)
  assert info.step == 30 and info.ema
  assert params['final_conv']['kernel'].shape[-1] == 5  # albedo, metalness, roughness
  # The class table stays at its init, as the official optimiser leaves it; the rest trains.
  np.testing.assert_array_equal(params['label_embed'], early['label_embed'])
  assert np.abs(params['final_conv']['kernel'] - early['final_conv']['kernel']).max() > 0
  # The loss on fixed draws fell from that of the initial U-Net (whose zero output conv predicts 0 whatever the other
  # weights, so zeroing the conv of the trained U-Net restores the initial loss).
  exp = geo2mat_stage.experiment(geo, None)
  source = make_source(geo, channels=12)
  batch = {k: jnp.asarray(np.stack([source[i][k] for i in range(2)])) for k in ('omage', 'label')}
  keys = jax.random.split(jax.random.key(1000), 4)
  evaluate = jax.jit(lambda p: jnp.mean(jax.vmap(lambda r: exp.loss_fn(p, batch, r, 0)[0])(keys)))
  initial = {**params, 'final_conv': jax.tree.map(jnp.zeros_like, params['final_conv'])}
  assert float(evaluate(params)) < 0.9 * float(evaluate(initial))  # 0.163 vs 0.211 here (seeds as set)


def test_geo2mat_samples_materials_for_data_geometry(runs):
  geo, geo_dir, _, _ = runs
  geo.sample.num_samples = 2
  summary = experiment.PROGRAMS['sample'](geo, geo_dir)
  out = summary['out_dir']
  with np.load(os.path.join(out, 'omages.npz')) as npz:
    omages, labels = npz['omages'], npz['labels']
  source = make_source(geo, channels=12)
  truth = np.stack([(source[i]['omage'] + 1) / 2 for i in range(2)])
  assert omages.shape == (2, S, S, 12) and omages.min() >= 0 and omages.max() <= 1
  np.testing.assert_allclose(omages[..., :7], truth[..., :7], atol=1e-6)  # geometry and normals are the data's
  np.testing.assert_array_equal(labels, [source[i]['label'] for i in range(2)])
  occupied = truth[..., 3] > 0.5
  assert np.all(omages[~occupied] == 0)  # background 0 (-1 in model space) in every channel
  assert summary['ema'] and all(np.isfinite(v) for v in summary['material_mae'].values())
  assert summary['empty'] == [] and min(summary['faces']) > 0
  for i in range(2):
    mesh = omage_to_mesh(omages[i])
    glb = trimesh.load(os.path.join(out, 'meshes', f'{i:03d}.glb'), force='mesh')
    assert len(glb.vertices) == len(mesh.vertices) and len(glb.faces) == summary['faces'][i]
    for suffix in ('.obj', '.mtl', '_albedo.png', '_roughness.png', '_metalness.png'):
      assert os.path.getsize(os.path.join(out, 'meshes', f'{i:03d}{suffix}')) > 0


def test_n2g2m_writes_textured_meshes_previews_and_renders(runs, tmp_path):
  geo, geo_dir, null, null_dir = runs
  null.n2g2m.update(null2geo_workdir=null_dir, geo2mat_workdir=geo_dir)
  summary = experiment.PROGRAMS['n2g2m'](null, str(tmp_path))
  out = summary['out_dir']
  assert out == str(tmp_path / 'n2g2m')
  with np.load(os.path.join(out, 'omages.npz')) as npz:
    omages = npz['omages']
    np.testing.assert_array_equal(npz['labels'], [0, 1, 2])  # the smoke classes cycled
  assert omages.shape == (3, S, S, 12)
  occ = omages[..., 3]
  assert set(np.unique(occ)) <= {0.0, 1.0}  # the geometry was binarised as the loader binarises data
  assert np.all(omages[occ == 0] == 0) and np.all(omages[..., 4:7] == 0)  # no normals from null2geo
  with open(os.path.join(out, 'summary.json')) as f:
    written = json.load(f)
  assert written == json.loads(json.dumps({k: v for k, v in summary.items() if k != 'out_dir'}))
  assert (written['null2geo_step'], written['geo2mat_step'], written['geo2mat_ema']) == (1, 30, True)
  for i, faces in enumerate(written['faces']):
    assert faces == len(omage_to_mesh(omages[i]).faces)
    assert os.path.exists(os.path.join(out, 'meshes', f'{i:03d}.glb')) == (faces > 0)
  with Image.open(os.path.join(out, 'preview.png')) as preview:
    assert preview.size == (2 * (3 * (2 * S + 2) - 2), 2 * S)
  with Image.open(os.path.join(out, 'render.png')) as render:
    assert render.size == (3 * 34 - 2, 32)
