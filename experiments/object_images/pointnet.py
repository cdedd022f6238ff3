"""Point-E's PointNet++ SSG classifier (ModelNet40), the feature network of the paper's p-FID / p-KID.

Architecture as Point-E's `evals/pointnet2_cls_ssg.py` (get_model(num_class=40, normal_channel=False,
width_mult=2)) in evaluation mode:
  sa1: FPS 512 centres, ball radius 0.2, 32 neighbours, shared MLP [w, w, 2w] on the centred xyz (3 channels);
  sa2: FPS 128 centres, radius 0.4, 64 neighbours, MLP [2w, 2w, 4w] on [centred xyz, sa1 features];
  sa3: one group of all points, MLP [4w, 8w, 16w] on [raw xyz, sa2 features];
  every MLP layer is a 1x1 conv (a Dense here) -> BatchNorm -> ReLU, then a max over the neighbours;
  head: fc1 16w -> 8w, bn1, ReLU; fc2 8w -> 4w, bn2 (the feature, taken before its ReLU); ReLU; fc3 -> classes.
w = 64 * width_mult = 128, so the feature is 512-d: Point-E's `feature_dim` property says 256, which is
256 * width_mult only for width_mult 1; the tensor it returns (bn2's output) has 256 * width_mult channels.

In evaluation mode Point-E's FPS is deterministic and starts cloud b of a device batch at point index b, so a
cloud's features depend on its position in the batch. `start` carries that index explicitly (see
`metrics.pointnet_features`). BatchNorm uses its running statistics (collection 'batch_stats').
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.traverse_util import flatten_dict

from mmjax.nn.linear import Dense


@dataclasses.dataclass(frozen=True)
class PointNet2Config:
  """width: the base channel count w (64 * width_mult; Point-E's P-FID network has width_mult 2).

  npoints / radii / nsamples: the two sampling set-abstraction levels (FPS centres, ball radius in the unit-sphere
  normalised cloud's units, neighbours per ball). A cloud needs at least max(npoints[0], nsamples[0]) points.
  """
  num_classes: int = 40
  width: int = 128
  npoints: tuple[int, int] = (512, 128)
  radii: tuple[float, float] = (0.2, 0.4)
  nsamples: tuple[int, int] = (32, 64)

  @property
  def feature_dim(self) -> int:
    return 4 * self.width

  @property
  def sa_widths(self) -> tuple[tuple[int, ...], ...]:
    w = self.width
    return (w, w, 2 * w), (2 * w, 2 * w, 4 * w), (4 * w, 8 * w, 16 * w)


POINT_E = PointNet2Config()  # the P-FID network: ModelNet40, width_mult 2


def farthest_point_sample(xyz: jax.Array, npoint: int, start: jax.Array) -> jax.Array:
  """Greedy farthest point sampling. xyz [B, N, 3], start [B] int (first index) -> indices [B, npoint] int32."""
  batch, n, _ = xyz.shape

  def step(i, carry):
    indices, nearest, current = carry
    indices = indices.at[:, i].set(current)
    centre = jnp.take_along_axis(xyz, current[:, None, None], axis=1)
    nearest = jnp.minimum(nearest, jnp.sum((xyz - centre) ** 2, axis=-1))
    return indices, nearest, jnp.argmax(nearest, axis=-1).astype(jnp.int32)

  init = (jnp.zeros((batch, npoint), jnp.int32), jnp.full((batch, n), 1e10, xyz.dtype), start.astype(jnp.int32))
  return jax.lax.fori_loop(0, npoint, step, init)[0]


def ball_query(xyz: jax.Array, centres: jax.Array, radius: float, nsample: int) -> jax.Array:
  """The nsample lowest point indices within `radius` of each centre, padded with the first one.

  xyz [B, N, 3], centres [B, S, 3] -> [B, S, nsample] int32. Squared distances use the same expansion as Point-E
  (|c|^2 + |x|^2 - 2 c.x) at full fp32 precision, so points near the ball's surface fall on the same side.
  """
  n = xyz.shape[1]
  cross = jnp.einsum('bsc,bnc->bsn', centres, xyz, precision=jax.lax.Precision.HIGHEST)
  sq = -2 * cross + jnp.sum(centres ** 2, -1)[..., None] + jnp.sum(xyz ** 2, -1)[:, None, :]
  index = jnp.where(sq > radius ** 2, n, jnp.arange(n, dtype=jnp.int32))
  index = -jax.lax.top_k(-index, nsample)[0]
  return jnp.where(index == n, index[..., :1], index)


def _gather(values: jax.Array, index: jax.Array) -> jax.Array:
  """values [B, N, C], index [B, ...] -> [B, ..., C]."""
  return jax.vmap(lambda v, i: v[i])(values, index)


class SetAbstraction(nn.Module):
  """Sample centres, group their neighbourhoods, shared MLP, max-pool. npoint None: one group of all points."""
  widths: Sequence[int]
  npoint: int | None = None
  radius: float | None = None
  nsample: int | None = None

  @nn.compact
  def __call__(self, xyz: jax.Array, features: jax.Array | None, start: jax.Array) -> tuple[jax.Array, jax.Array]:
    """xyz [B, N, 3], features [B, N, D] or None, start [B] -> (centres [B, S, 3], features [B, S, widths[-1]])."""
    if self.npoint is None:
      centres = jnp.zeros_like(xyz[:, :1])
      grouped = xyz[:, None]
      if features is not None:
        grouped = jnp.concatenate([grouped, features[:, None]], axis=-1)
    else:
      centres = _gather(xyz, farthest_point_sample(xyz, self.npoint, start))
      neighbours = ball_query(xyz, centres, self.radius, self.nsample)
      grouped = _gather(xyz, neighbours) - centres[:, :, None]
      if features is not None:
        grouped = jnp.concatenate([grouped, _gather(features, neighbours)], axis=-1)
    x = grouped
    for i, width in enumerate(self.widths):
      x = Dense(width, ('embed', 'mlp'), name=f'mlp_convs_{i}')(x)
      x = nn.relu(_batch_norm(f'mlp_bns_{i}')(x))
    return centres, jnp.max(x, axis=2)


def _batch_norm(name: str) -> nn.BatchNorm:
  """torch BatchNorm in eval mode: running statistics, eps 1e-5."""
  return nn.BatchNorm(use_running_average=True, epsilon=1e-5, name=name,
                      scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ('mlp',)),
                      bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ('mlp',)))


class PointNet2(nn.Module):
  """PointNet++ SSG classifier; returns class log-probabilities and the p-FID feature."""
  config: PointNet2Config = POINT_E

  @nn.compact
  def __call__(self, xyz: jax.Array, start: jax.Array) -> tuple[jax.Array, jax.Array]:
    """xyz [B, N, 3] (normalised clouds), start [B] int FPS start index -> (log_probs [B, classes],
    features [B, 4 * width])."""
    c = self.config
    l1_xyz, l1 = SetAbstraction(c.sa_widths[0], c.npoints[0], c.radii[0], c.nsamples[0], name='sa1')(xyz, None, start)
    l2_xyz, l2 = SetAbstraction(c.sa_widths[1], c.npoints[1], c.radii[1], c.nsamples[1], name='sa2')(
        l1_xyz, l1, start)
    _, l3 = SetAbstraction(c.sa_widths[2], name='sa3')(l2_xyz, l2, start)
    x = nn.relu(_batch_norm('bn1')(Dense(8 * c.width, ('embed', 'mlp'), name='fc1')(l3[:, 0])))
    features = _batch_norm('bn2')(Dense(4 * c.width, ('embed', 'mlp'), name='fc2')(x))
    logits = Dense(c.num_classes, ('embed', 'vocab'), name='fc3')(nn.relu(features))
    return jax.nn.log_softmax(logits, axis=-1), features


def _torch_layers(config: PointNet2Config) -> list[tuple[str, tuple[str, ...], str, tuple[str, ...]]]:
  """(torch linear/conv prefix, flax path, torch BatchNorm prefix, flax path) for every layer, input to output."""
  layers = []
  for level, widths in enumerate(config.sa_widths, start=1):
    for i in range(len(widths)):
      layers.append((f'sa{level}.mlp_convs.{i}', (f'sa{level}', f'mlp_convs_{i}'),
                     f'sa{level}.mlp_bns.{i}', (f'sa{level}', f'mlp_bns_{i}')))
  layers.append(('fc1', ('fc1',), 'bn1', ('bn1',)))
  layers.append(('fc2', ('fc2',), 'bn2', ('bn2',)))
  return layers


def variables_from_torch(state_dict: Mapping[str, np.ndarray], config: PointNet2Config = POINT_E
                         ) -> dict:
  """Point-E's `pointnet.pt` model_state_dict (tensor name -> array) -> {'params', 'batch_stats'} for PointNet2.

  Key map: `<layer>.weight` [out, in(, 1, 1)] -> kernel [in, out]; `<layer>.bias` -> bias; BatchNorm weight ->
  scale, bias -> bias, running_mean / running_var -> batch_stats mean / var (num_batches_tracked is unused).
  """
  arrays = {k: np.asarray(v, np.float32) for k, v in state_dict.items() if not k.endswith('num_batches_tracked')}
  used = set()

  def take(key: str, ndim: int) -> np.ndarray:
    if key not in arrays:
      raise KeyError(f'PointNet++ state dict: missing tensor {key!r} (is this Point-E\'s pointnet.pt?)')
    used.add(key)
    return arrays[key].reshape(arrays[key].shape[:ndim])

  params, stats = {}, {}

  def put(tree: dict, path: tuple[str, ...], name: str, value: np.ndarray) -> None:
    for p in path:
      tree = tree.setdefault(p, {})
    tree[name] = jnp.asarray(value)

  for linear, linear_path, norm, norm_path in [*_torch_layers(config), ('fc3', ('fc3',), None, None)]:
    put(params, linear_path, 'kernel', take(f'{linear}.weight', 2).T)
    put(params, linear_path, 'bias', take(f'{linear}.bias', 1))
    if norm is not None:
      put(params, norm_path, 'scale', take(f'{norm}.weight', 1))
      put(params, norm_path, 'bias', take(f'{norm}.bias', 1))
      put(stats, norm_path, 'mean', take(f'{norm}.running_mean', 1))
      put(stats, norm_path, 'var', take(f'{norm}.running_var', 1))
  extra = sorted(set(arrays) - used)
  if extra:
    raise KeyError(f'PointNet++ state dict: unexpected tensors {extra[:5]} (config {config} does not match)')
  expected = jax.eval_shape(PointNet2(config).init, jax.random.key(0), jnp.zeros((1, config.npoints[0], 3)),
                            jnp.zeros((1,), jnp.int32))
  variables = {'params': params, 'batch_stats': stats}
  want = {k: v.shape for k, v in flatten_dict(nn.unbox(expected)).items()}
  got = {k: v.shape for k, v in flatten_dict(variables).items()}
  if got != want:
    bad = [('/'.join(k), got.get(k), want.get(k)) for k in sorted(set(got) | set(want)) if got.get(k) != want.get(k)]
    raise ValueError(f'PointNet++ state dict: shapes do not fit config {config} (path, got, want): {bad[:3]}')
  return variables


def load_pointnet(path: str, config: PointNet2Config = POINT_E) -> dict:
  """Reads Point-E's released `pointnet.pt` (torch.load, weights_only) or a safetensors file of the same
  tensors -> PointNet2 variables."""
  if path.endswith('.safetensors'):
    from safetensors.numpy import load_file
    state = load_file(path)
  else:
    try:
      import torch
    except ImportError as e:
      raise ImportError(f'{path}: reading a .pt checkpoint needs torch; convert it to .safetensors instead') from e
    checkpoint = torch.load(path, map_location='cpu', weights_only=True)
    state = checkpoint.get('model_state_dict', checkpoint)
    state = {k: v.numpy() for k, v in state.items()}
  return variables_from_torch(state, config)
