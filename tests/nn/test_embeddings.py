"""timestep_embedding and the 2-D sin-cos table vs diffusers; PatchEmbed vs torch Conv2d with copied weights."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers.models.embeddings import get_2d_sincos_pos_embed, get_timestep_embedding

from mmjax.nn import PatchEmbed, sincos_2d_position_embedding, timestep_embedding
from tests.numerics import assert_close_torch

P = jax.sharding.PartitionSpec
T = np.array([0.0, 1.0, 3.5, 250.0, 999.0], np.float32)


@pytest.mark.parametrize('dim,kwargs', [
    (32, {}),
    (33, {}),
    (64, {'flip_sin_to_cos': True, 'downscale_freq_shift': 0.0}),
    (15, {'flip_sin_to_cos': True, 'downscale_freq_shift': 1.0, 'scale': 1000.0, 'max_period': 5000}),
])
def test_timestep_embedding_matches_diffusers(dim, kwargs):
  expected = get_timestep_embedding(torch.from_numpy(T), dim, **kwargs).numpy()
  out = timestep_embedding(jnp.asarray(T), dim, **kwargs)
  assert out.shape == (len(T), dim) and out.dtype == jnp.float32
  # Angles reach 999 * scale radians, which amplify a last-ulp difference in exp(); 1e-3 covers scale=1000.
  assert_close_torch(out, expected, tol=1e-3 if kwargs.get('scale', 1.0) > 1 else 1e-4)
  if dim % 2:
    np.testing.assert_array_equal(out[:, -1], 0.0)


def test_timestep_embedding_rejects_bad_input():
  with pytest.raises(ValueError, match=r'\[N\]'):
    timestep_embedding(jnp.zeros((2, 1)), 8)
  with pytest.raises(ValueError, match='divides by zero'):
    timestep_embedding(jnp.zeros((2,)), 2)


@pytest.mark.parametrize('grid,kwargs', [((4, 4), {}), ((3, 5), {'base_size': 4}), ((6, 6), {'base_size': 4}),
                                         ((4, 4), {'base_size': 4, 'interpolation_scale': 2.0})])
def test_sincos_2d_matches_diffusers(grid, kwargs):
  # base_size=None keeps integer indices, which diffusers gets with base_size = grid length.
  expected = get_2d_sincos_pos_embed(16, grid, **{'base_size': grid[0], **kwargs}).numpy()
  out = sincos_2d_position_embedding(16, grid, **kwargs)
  assert out.shape == (grid[0] * grid[1], 16)
  assert_close_torch(out, expected)


def test_patch_embed_matches_conv2d():
  torch.manual_seed(0)
  conv = torch.nn.Conv2d(3, 8, kernel_size=(2, 4), stride=(2, 4))
  x = np.random.default_rng(0).standard_normal((2, 3, 6, 8)).astype(np.float32)  # NCHW
  expected = conv(torch.from_numpy(x)).detach().numpy()  # [B, E, 3, 2]
  params = {'kernel': jnp.asarray(conv.weight.detach().numpy().transpose(2, 3, 1, 0)),
            'bias': jnp.asarray(conv.bias.detach().numpy())}
  x_nhwc = jnp.asarray(x.transpose(0, 2, 3, 1))
  out = PatchEmbed((2, 4), 8).apply({'params': params}, x_nhwc)
  assert out.shape == (2, 6, 8)
  assert_close_torch(out, expected.transpose(0, 2, 3, 1).reshape(2, 6, 8))
  grid = PatchEmbed((2, 4), 8, flatten=False).apply({'params': params}, x_nhwc)
  assert_close_torch(grid, expected.transpose(0, 2, 3, 1))


def test_patch_embed_axes_and_errors():
  layer = PatchEmbed(4, 16)
  variables = jax.eval_shape(layer.init, jax.random.key(0), jnp.ones((1, 8, 8, 3)))
  assert nn.get_partition_spec(variables)['params'] == {'kernel': P('conv_h', 'conv_w', 'conv_in', 'embed'),
                                                        'bias': P('embed')}
  with pytest.raises(ValueError, match='H % 4 == 0'):
    layer.init(jax.random.key(0), jnp.ones((1, 9, 8, 3)))
