"""p-FID and p-KID (spec section 6): uncoloured surface point clouds of generated and reference meshes, embedded by
Point-E's PointNet++ SSG classifier (`pointnet.py`), compared with the Frechet distance and the cubic-kernel MMD.

Protocol, as the official evaluator (3dlg-hcvc/omages `src/evals/fpd_eval.py` over Point-E's PointNetClassifier):
  - each cloud is centred on its mean and divided by its largest point radius (`normalize_points`);
  - the feature is bn2's output of the classifier (512-d for width_mult 2);
  - FPS starts cloud i at point index i mod 256: Point-E's evaluation-mode FPS starts cloud b of a device batch at
    index b, and the official evaluator runs device batches of 256 (`fps_start_period`);
  - FID from the features' mean and covariance with scipy's sqrtm; KID with k(x, y) = (x.y / d + 1)^3 over 100
    random subsets of size min(n, m, 1000), the unbiased MMD^2 estimate averaged over subsets.
Assumption: the number of points per cloud is stated in neither the paper nor its code; we default to 4096 and
record it in the result (`num_points`).
"""
from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import trimesh
from scipy import linalg

from experiments.object_images.pointnet import POINT_E, PointNet2, PointNet2Config

NUM_POINTS = 4096
FPS_START_PERIOD = 256


def sample_points(mesh: trimesh.Trimesh, n: int, rng: np.random.Generator) -> np.ndarray:
  """n points uniformly on the surface (faces drawn by area, uniform barycentric inside) -> float32 [n, 3]."""
  triangles = np.asarray(mesh.triangles, np.float64)
  areas = 0.5 * np.linalg.norm(np.cross(triangles[:, 1] - triangles[:, 0], triangles[:, 2] - triangles[:, 0]), axis=-1)
  total = areas.sum() if len(areas) else 0.0
  if not total > 0:
    raise ValueError(f'sample_points: the mesh has no surface ({len(areas)} faces, total area {total}); '
                     'drop empty or degenerate meshes before evaluation')
  faces = rng.choice(len(areas), size=n, p=areas / total)
  r1, r2 = np.sqrt(rng.random(n)), rng.random(n)
  weights = np.stack([1 - r1, r1 * (1 - r2), r1 * r2], axis=-1)
  return np.einsum('nk,nkc->nc', weights, triangles[faces]).astype(np.float32)


def normalize_points(points: np.ndarray) -> np.ndarray:
  """[..., N, 3] -> the same clouds centred on their mean and scaled so the farthest point has radius 1."""
  points = np.asarray(points, np.float32)
  centred = points - points.mean(axis=-2, keepdims=True)
  radius = np.linalg.norm(centred, axis=-1).max(axis=-1, keepdims=True)[..., None]
  if not np.all(radius > 0):
    raise ValueError('normalize_points: a cloud has all its points at one place; it cannot be scaled to the unit '
                     'sphere')
  return centred / radius


@functools.partial(jax.jit, static_argnums=0)
def _features(config: PointNet2Config, variables: dict, xyz: jax.Array, start: jax.Array) -> jax.Array:
  return PointNet2(config).apply(variables, xyz, start)[1]


def pointnet_features(variables: dict, clouds: np.ndarray, *, config: PointNet2Config = POINT_E,
                      batch_size: int = 64, fps_start_period: int = FPS_START_PERIOD) -> np.ndarray:
  """clouds [M, N, 3] (any scale) -> PointNet++ features float32 [M, config.feature_dim].

  Clouds are normalised here. Cloud i starts FPS at index i mod fps_start_period (see the module docstring), so the
  features do not depend on batch_size, which only bounds memory (the ball query holds [batch, 512, N] distances).
  Matmuls run at full fp32 precision (no TF32 on GPUs).
  """
  clouds = normalize_points(clouds)
  last_start, fewest = min(len(clouds), fps_start_period) - 1, min(clouds.shape[1], config.npoints[0])
  if last_start >= fewest:
    raise ValueError(f'pointnet_features: FPS start index {last_start} needs more than {fewest} points per level '
                     f'({clouds.shape[1]} points per cloud, {config.npoints[0]} sa1 centres); lower fps_start_period')
  starts = np.arange(len(clouds)) % fps_start_period
  out = []
  with jax.default_matmul_precision('highest'):
    for i in range(0, len(clouds), batch_size):
      chunk, start = clouds[i:i + batch_size], starts[i:i + batch_size]
      pad = batch_size - len(chunk)
      # Pad the last chunk to the same shape (one compiled program); BatchNorm uses running stats, so the padding
      # rows do not affect the real ones.
      chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)]) if pad else chunk
      start = np.concatenate([start, np.zeros(pad, start.dtype)]) if pad else start
      feats = _features(config, variables, jnp.asarray(chunk), jnp.asarray(start, jnp.int32))
      out.append(np.asarray(feats)[:batch_size - pad])
  return np.concatenate(out, axis=0)


def frechet_distance(feats_a: np.ndarray, feats_b: np.ndarray, eps: float = 1e-6) -> float:
  """FID between Gaussians fitted to feats_a [n, d] and feats_b [m, d]: |mu_a - mu_b|^2 + tr(S_a + S_b
  - 2 (S_a S_b)^(1/2)).

  If sqrtm is not finite (a singular product), eps is added to both diagonals. Rounding can leave an imaginary
  part: it is dropped, with a warning when a diagonal entry's exceeds 1e-3 (where the official code raises).
  """
  a, b = np.asarray(feats_a, np.float64), np.asarray(feats_b, np.float64)
  mu_a, mu_b = a.mean(0), b.mean(0)
  sigma_a, sigma_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
  covmean = linalg.sqrtm(sigma_a @ sigma_b)
  if not np.isfinite(covmean).all():
    warnings.warn(f'frechet_distance: singular covariance product; adding {eps} to the diagonals', stacklevel=2)
    offset = np.eye(len(sigma_a)) * eps
    covmean = linalg.sqrtm((sigma_a + offset) @ (sigma_b + offset))
  if np.iscomplexobj(covmean):
    if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
      warnings.warn(f'frechet_distance: sqrtm has an imaginary component up to {np.abs(covmean.imag).max():.3g}; '
                    'using its real part', stacklevel=2)
    covmean = covmean.real
  diff = mu_a - mu_b
  return float(diff @ diff + np.trace(sigma_a) + np.trace(sigma_b) - 2 * np.trace(covmean))


def kernel_inception_distance(feats_a: np.ndarray, feats_b: np.ndarray, *, num_subsets: int = 100,
                              max_subset_size: int = 1000, rng: np.random.Generator | None = None
                              ) -> tuple[float, float]:
  """KID: unbiased MMD^2 with k(x, y) = (x.y / d + 1)^3 between subsets of feats_a [n, d] and feats_b [m, d].

  Each of num_subsets rounds draws s = min(n, m, max_subset_size) rows of a, then of b, without replacement.
  Returns (mean, std) over the rounds, in feature units (the paper's table shows KID x 10^3).
  """
  a, b = np.asarray(feats_a, np.float64), np.asarray(feats_b, np.float64)
  rng = np.random.default_rng(0) if rng is None else rng
  d, s = a.shape[1], min(len(a), len(b), max_subset_size)
  if s < 2:
    raise ValueError(f'kernel_inception_distance: needs at least 2 samples on each side, got {len(a)} and {len(b)}')
  values = []
  for _ in range(num_subsets):
    x = a[rng.choice(len(a), s, replace=False)]
    y = b[rng.choice(len(b), s, replace=False)]
    kxx, kyy, kxy = ((x @ x.T / d + 1) ** 3, (y @ y.T / d + 1) ** 3, (x @ y.T / d + 1) ** 3)
    within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (s * (s - 1))
    values.append(within - 2 * kxy.mean())
  return float(np.mean(values)), float(np.std(values))


def p_fid_kid(gen_meshes: Sequence[trimesh.Trimesh], ref_meshes: Sequence[trimesh.Trimesh], variables: dict, *,
              config: PointNet2Config = POINT_E, num_points: int = NUM_POINTS, seed: int = 0,
              batch_size: int = 64, fps_start_period: int = FPS_START_PERIOD, kid_subsets: int = 100,
              kid_subset_size: int = 1000) -> dict:
  """p-FID and p-KID of generated meshes against reference meshes.

  variables: PointNet2 variables (`pointnet.load_pointnet` for Point-E's weights). Points are sampled with
  np.random.default_rng(seed) (generated meshes first), KID subsets with default_rng(seed + 1).
  Returns {'p_fid', 'p_kid_x1e3', 'p_kid_std_x1e3' (KID and its std over subsets, x 10^3 as the paper's table),
  'num_points', 'num_gen', 'num_ref', 'feature_dim', 'seed'}.
  """
  rng = np.random.default_rng(seed)
  clouds = [np.stack([sample_points(m, num_points, rng) for m in meshes]) for meshes in (gen_meshes, ref_meshes)]
  gen, ref = (pointnet_features(variables, c, config=config, batch_size=batch_size, fps_start_period=fps_start_period)
              for c in clouds)
  kid, kid_std = kernel_inception_distance(gen, ref, num_subsets=kid_subsets, max_subset_size=kid_subset_size,
                                           rng=np.random.default_rng(seed + 1))
  return {'p_fid': frechet_distance(gen, ref), 'p_kid_x1e3': kid * 1e3, 'p_kid_std_x1e3': kid_std * 1e3,
          'num_points': num_points, 'num_gen': len(gen), 'num_ref': len(ref), 'feature_dim': gen.shape[1],
          'seed': seed}
