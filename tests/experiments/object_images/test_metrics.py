"""p-FID / p-KID: FID and KID against direct NumPy formulas, PointNet++ against a torch re-derivation of Point-E's
classifier (tiny widths, the same random weights), and the point sampling / normalisation they stand on."""
import jax
import numpy as np
import pytest
import trimesh
from safetensors.numpy import save_file

from experiments.object_images import metrics
from experiments.object_images.pointnet import (
  PointNet2,
  PointNet2Config,
  farthest_point_sample,
  load_pointnet,
  variables_from_torch,
)

TINY = PointNet2Config(num_classes=5, width=4, npoints=(16, 8), radii=(0.4, 0.8), nsamples=(8, 8))


def _gaussian(rng, n, mean, cov):
  return rng.multivariate_normal(mean, cov, size=n)


def _spd(rng, d):
  m = rng.normal(size=(d, d))
  return m @ m.T / d + 0.1 * np.eye(d)


def test_fid_matches_direct_formula():
  rng = np.random.default_rng(0)
  a = _gaussian(rng, 400, np.zeros(5), _spd(rng, 5))
  b = _gaussian(rng, 300, rng.normal(size=5), _spd(rng, 5))
  mu_a, mu_b, s_a, s_b = a.mean(0), b.mean(0), np.cov(a.T), np.cov(b.T)
  # tr (S_a S_b)^(1/2) = tr (S_a^(1/2) S_b S_a^(1/2))^(1/2), a symmetric PSD matrix: sum of sqrt eigenvalues.
  w, v = np.linalg.eigh(s_a)
  root_a = v @ np.diag(np.sqrt(w)) @ v.T
  tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh(root_a @ s_b @ root_a), 0, None)).sum()
  want = np.sum((mu_a - mu_b) ** 2) + np.trace(s_a) + np.trace(s_b) - 2 * tr_covmean
  assert metrics.frechet_distance(a, b) == pytest.approx(want, rel=1e-7)


def test_fid_equal_gaussians_and_shifted_mean():
  rng = np.random.default_rng(1)
  cov = _spd(rng, 4)
  a, b = _gaussian(rng, 20000, np.zeros(4), cov), _gaussian(rng, 20000, np.zeros(4), cov)
  assert 0 <= metrics.frechet_distance(a, b) < 0.01
  shift = np.array([0.5, -1.0, 2.0, 0.25])
  # The same samples shifted: equal covariances, so the distance is exactly |shift|^2.
  assert metrics.frechet_distance(a, a + shift) == pytest.approx(np.sum(shift ** 2), rel=1e-7)
  assert metrics.frechet_distance(a, a) == pytest.approx(0, abs=1e-9)


def _kid_direct(a, b, num_subsets, size, rng):
  """The official evaluator's estimator written out: t/m with t = offdiag(Kxx + Kyy)/(m-1) - 2 sum(Kxy)/m."""
  d, values = a.shape[1], []
  for _ in range(num_subsets):
    x, y = a[rng.choice(len(a), size, replace=False)], b[rng.choice(len(b), size, replace=False)]
    k_within = (x @ x.T / d + 1) ** 3 + (y @ y.T / d + 1) ** 3
    t = (k_within.sum() - np.diag(k_within).sum()) / (size - 1) - ((x @ y.T / d + 1) ** 3).sum() * 2 / size
    values.append(t / size)
  return np.mean(values), np.std(values)


def test_kid_matches_direct_implementation():
  rng = np.random.default_rng(2)
  a, b = rng.normal(size=(60, 8)), rng.normal(0.3, 1.2, size=(45, 8))
  got = metrics.kernel_inception_distance(a, b, num_subsets=7, max_subset_size=40, rng=np.random.default_rng(5))
  want = _kid_direct(a, b, 7, 40, np.random.default_rng(5))
  np.testing.assert_allclose(got, want, rtol=1e-9)
  assert got[0] > 0.05
  c = rng.normal(size=(800, 8))
  same = metrics.kernel_inception_distance(c[:400], c[400:], num_subsets=20, rng=np.random.default_rng(5))
  assert abs(same[0]) < got[0] / 5


def test_sample_points_on_surface_and_area_weighted():
  rng = np.random.default_rng(3)
  points = metrics.sample_points(trimesh.creation.box(extents=(2, 2, 2)), 500, rng)
  assert points.shape == (500, 3) and points.dtype == np.float32
  np.testing.assert_allclose(np.abs(points).max(axis=1), 1, atol=1e-6)
  # Two disjoint triangles of areas 0.5 and 1.5: a quarter of the points on the first.
  mesh = trimesh.Trimesh([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 5], [3, 0, 5], [0, 1, 5]], [[0, 1, 2], [3, 4, 5]],
                         process=False)
  points = metrics.sample_points(mesh, 20000, rng)
  first = points[:, 2] < 1
  assert abs(first.mean() - 0.25) < 0.015
  # Uniform inside a triangle: the mean is the centroid.
  np.testing.assert_allclose(points[first].mean(0), [1 / 3, 1 / 3, 0], atol=0.01)
  assert np.all(points[first][:, :2].sum(1) <= 1 + 1e-6)
  with pytest.raises(ValueError, match='no surface'):
    metrics.sample_points(trimesh.Trimesh(np.zeros((3, 3)), [[0, 1, 2]], process=False), 10, rng)


def test_normalize_points():
  rng = np.random.default_rng(4)
  clouds = rng.normal(size=(3, 50, 3)).astype(np.float32)
  out = metrics.normalize_points(clouds)
  np.testing.assert_allclose(out.mean(axis=1), 0, atol=1e-6)
  np.testing.assert_allclose(np.linalg.norm(out, axis=-1).max(axis=1), 1, rtol=1e-6)
  np.testing.assert_allclose(metrics.normalize_points(clouds * 3.5 + np.float32(2)), out, atol=1e-5)
  with pytest.raises(ValueError, match='one place'):
    metrics.normalize_points(np.ones((1, 5, 3)))


# --- PointNet++ against a torch re-derivation of Point-E's evaluation-mode classifier -------------------------------


def _torch_reference(torch, state, xyz, config):
  """Point-E's get_model(...).eval() forward, re-derived: FPS from start index b for cloud b, ball query by sorted
  index with first-index padding, 1x1 conv + BN + ReLU on [B, C, K, S], max over K; returns fps indices too."""
  F = torch.nn.functional

  def fps(points, npoint):
    b, n, _ = points.shape
    nearest, current = torch.full((b, n), 1e10, dtype=points.dtype), torch.arange(b)
    chosen = []
    for _ in range(npoint):
      chosen.append(current)
      d = ((points - points[torch.arange(b), current][:, None]) ** 2).sum(-1)
      nearest = torch.minimum(nearest, d)
      current = nearest.argmax(-1)
    return torch.stack(chosen, 1)

  def mlp(x, level, n):
    for i in range(n):
      p = f'sa{level}.mlp_'
      x = F.conv2d(x, state[f'{p}convs.{i}.weight'], state[f'{p}convs.{i}.bias'])
      x = F.relu(F.batch_norm(x, state[f'{p}bns.{i}.running_mean'], state[f'{p}bns.{i}.running_var'],
                              state[f'{p}bns.{i}.weight'], state[f'{p}bns.{i}.bias'], False, 0.0, 1e-5))
    return x.max(2)[0].permute(0, 2, 1)

  def sa(points, feats, level):
    npoint, radius, k = config.npoints[level - 1], config.radii[level - 1], config.nsamples[level - 1]
    b, n, _ = points.shape
    idx = fps(points, npoint)
    centres = torch.gather(points, 1, idx[..., None].expand(-1, -1, 3))
    sq = -2 * centres @ points.transpose(1, 2) + (centres ** 2).sum(-1)[..., None] + (points ** 2).sum(-1)[:, None]
    group = torch.arange(n).expand(b, npoint, n).clone()
    group[sq > radius ** 2] = n
    group = group.sort(-1)[0][..., :k]
    group = torch.where(group == n, group[..., :1], group)
    rows = torch.arange(b)[:, None, None]
    grouped = points[rows, group] - centres[:, :, None]
    if feats is not None:
      grouped = torch.cat([grouped, feats[rows, group]], -1)
    return centres, mlp(grouped.permute(0, 3, 2, 1), level, 3), idx

  l1_xyz, l1, fps1 = sa(xyz, None, 1)
  l2_xyz, l2, _ = sa(l1_xyz, l1, 2)
  l3 = mlp(torch.cat([l2_xyz, l2], -1)[:, None].permute(0, 3, 2, 1), 3, 3)[:, 0]

  def bn(x, name):
    return F.batch_norm(x, state[f'{name}.running_mean'], state[f'{name}.running_var'], state[f'{name}.weight'],
                        state[f'{name}.bias'], False, 0.0, 1e-5)

  x = F.relu(bn(F.linear(l3, state['fc1.weight'], state['fc1.bias']), 'bn1'))
  feats = bn(F.linear(x, state['fc2.weight'], state['fc2.bias']), 'bn2')
  logits = F.linear(F.relu(feats), state['fc3.weight'], state['fc3.bias'])
  return F.log_softmax(logits, -1), feats, fps1


def _random_state(torch, config):
  """A Point-E-named state dict with random weights and running statistics."""
  gen = torch.Generator().manual_seed(0)
  state, c = {}, 3
  for level, widths in enumerate(config.sa_widths, start=1):
    c = 3 if level == 1 else c + 3
    for i, w in enumerate(widths):
      state[f'sa{level}.mlp_convs.{i}.weight'] = torch.randn(w, c, 1, 1, generator=gen) / c ** 0.5
      state[f'sa{level}.mlp_convs.{i}.bias'] = 0.1 * torch.randn(w, generator=gen)
      _random_bn(torch, state, f'sa{level}.mlp_bns.{i}', w, gen)
      c = w
  for name, bn, (c_in, c_out) in (('fc1', 'bn1', (16 * config.width, 8 * config.width)),
                                  ('fc2', 'bn2', (8 * config.width, 4 * config.width)),
                                  ('fc3', None, (4 * config.width, config.num_classes))):
    state[f'{name}.weight'] = torch.randn(c_out, c_in, generator=gen) / c_in ** 0.5
    state[f'{name}.bias'] = 0.1 * torch.randn(c_out, generator=gen)
    if bn:
      _random_bn(torch, state, bn, c_out, gen)
  return state


def _random_bn(torch, state, name, w, gen):
  state[f'{name}.weight'] = 1 + 0.2 * torch.randn(w, generator=gen)
  state[f'{name}.bias'] = 0.1 * torch.randn(w, generator=gen)
  state[f'{name}.running_mean'] = 0.1 * torch.randn(w, generator=gen)
  state[f'{name}.running_var'] = 0.5 + torch.rand(w, generator=gen)
  state[f'{name}.num_batches_tracked'] = torch.tensor(7)


def test_pointnet_matches_torch_rederivation(tmp_path):
  torch = pytest.importorskip('torch')
  state = _random_state(torch, TINY)
  clouds = metrics.normalize_points(np.random.default_rng(6).normal(size=(3, 64, 3)))
  log_probs, feats, fps1 = _torch_reference(torch, state, torch.from_numpy(clouds), TINY)
  ours_fps = farthest_point_sample(clouds, TINY.npoints[0], np.arange(3))
  np.testing.assert_array_equal(np.asarray(ours_fps), fps1.numpy())
  torch.save({'model_state_dict': state, 'epoch': 3}, tmp_path / 'pointnet.pt')
  variables = load_pointnet(str(tmp_path / 'pointnet.pt'), TINY)
  ours_lp, ours_feats = jax.jit(PointNet2(TINY).apply)(variables, clouds, np.arange(3))
  np.testing.assert_allclose(np.asarray(ours_feats), feats.numpy(), atol=1e-4, rtol=1e-4)
  np.testing.assert_allclose(np.asarray(ours_lp), log_probs.numpy(), atol=1e-4, rtol=1e-4)
  # Batched extraction: cloud i starts FPS at i mod period whatever the batch size (2 here, so 2 programs' rows).
  got = metrics.pointnet_features(variables, clouds * 2 + 1, config=TINY, batch_size=2, fps_start_period=4)
  np.testing.assert_allclose(got, feats.numpy(), atol=1e-4, rtol=1e-4)


def test_variables_from_torch_names_missing_and_extra_tensors(tmp_path):
  torch = pytest.importorskip('torch')
  state = {k: v.numpy() for k, v in _random_state(torch, TINY).items()}
  save_file(state, str(tmp_path / 'pointnet.safetensors'))
  from_file = load_pointnet(str(tmp_path / 'pointnet.safetensors'), TINY)
  kernel = from_file['params']['sa1']['mlp_convs_0']['kernel']
  np.testing.assert_array_equal(kernel, state['sa1.mlp_convs.0.weight'][:, :, 0, 0].T)
  np.testing.assert_array_equal(from_file['batch_stats']['bn2']['var'], state['bn2.running_var'])
  with pytest.raises(KeyError, match='sa2.mlp_convs.1.weight'):
    variables_from_torch({k: v for k, v in state.items() if k != 'sa2.mlp_convs.1.weight'}, TINY)
  with pytest.raises(KeyError, match='fc4.weight'):
    variables_from_torch({**state, 'fc4.weight': np.zeros((1, 1))}, TINY)
  with pytest.raises(ValueError, match='shapes do not fit'):
    variables_from_torch(state, PointNet2Config(num_classes=6, width=4, npoints=(16, 8), nsamples=(8, 8)))


def test_p_fid_kid_end_to_end():
  torch = pytest.importorskip('torch')
  variables = variables_from_torch({k: v.numpy() for k, v in _random_state(torch, TINY).items()}, TINY)
  boxes = [trimesh.creation.box(extents=(1, 1 + 0.1 * i, 2)) for i in range(4)]
  spheres = [trimesh.creation.icosphere(subdivisions=1, radius=1 + 0.1 * i) for i in range(4)]
  kwargs = dict(config=TINY, num_points=64, batch_size=4, fps_start_period=4, kid_subsets=5)
  out = metrics.p_fid_kid(boxes, spheres, variables, **kwargs)
  assert out['num_points'] == 64 and out['num_gen'] == out['num_ref'] == 4 and out['feature_dim'] == 16
  assert out['p_fid'] > 0 and np.isfinite(out['p_kid_x1e3'])
  same = metrics.p_fid_kid(boxes, boxes, variables, **kwargs)
  assert same['p_fid'] < out['p_fid']
