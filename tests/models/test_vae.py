"""AutoencoderKL vs diffusers on a tiny random VAE (encode moments, decode, the full forward), the posterior
against diffusers' DiagonalGaussianDistribution, latent scaling and the config reader."""
import functools
from pathlib import Path

import diffusers
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

from mmjax.models.vae import AutoencoderKL, AutoencoderKLConfig, DiagonalGaussian
from mmjax.weights import from_pretrained
from tests.hf_models import perturb
from tests.numerics import assert_close_programs, assert_close_torch

# Two widths (one downsample), 16 x 16 RGB images -> 8 x 8 x 4 latents.
VAE = dict(block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4, latent_channels=4, sample_size=16,
           down_block_types=('DownEncoderBlock2D',) * 2, up_block_types=('UpDecoderBlock2D',) * 2)


def save_vae(directory: Path, *, seed: int = 0, **overrides) -> diffusers.AutoencoderKL:
  """A random tiny diffusers AutoencoderKL (`VAE` updated by `overrides`), every weight perturbed (the group
  norms' too), saved to `directory`."""
  torch.manual_seed(seed)
  model = diffusers.AutoencoderKL(**{**VAE, **overrides}).eval()
  perturb(model, seed)
  model.save_pretrained(directory)
  return model


def vae_inputs(batch: int = 2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """NCHW images [B, 3, 16, 16] in [-1, 1] and latents [B, 4, 8, 8]."""
  rng = np.random.default_rng(seed)
  images = rng.uniform(-1, 1, (batch, 3, 16, 16)).astype(np.float32)
  return images, rng.standard_normal((batch, 4, 8, 8)).astype(np.float32)


def nhwc(x: np.ndarray) -> jax.Array:
  return jnp.asarray(x.transpose(0, 2, 3, 1))


def nchw(x: jax.Array) -> np.ndarray:
  return np.asarray(x).transpose(0, 3, 1, 2)


@functools.partial(jax.jit, static_argnums=0)
def _run(module: nn.Module, params, images: jax.Array, latents: jax.Array, key: jax.Array):
  """(posterior of images, decode(latents), module(images), module(images) from a posterior sample) in one
  program."""
  variables = {'params': params}
  return (module.apply(variables, images, method='encode'), module.apply(variables, latents, method='decode'),
          module.apply(variables, images), module.apply(variables, images, sample_posterior=True, rngs={'noise': key}))


def test_matches_diffusers(tmp_path):
  reference = save_vae(tmp_path)
  module, params, config = from_pretrained(tmp_path)
  assert config.block_out_channels == (8, 16) and config.downsample_factor == 2
  images, latents = vae_inputs()
  posterior, decoded, full, sampled = _run(module, params, nhwc(images), nhwc(latents), jax.random.key(0))
  with torch.no_grad():
    dist = reference.encode(torch.from_numpy(images)).latent_dist
    want_decoded = reference.decode(torch.from_numpy(latents)).sample.numpy()
    want_full = reference(torch.from_numpy(images)).sample.numpy()
  assert posterior.mean.shape == (2, 8, 8, 4) and decoded.shape == full.shape == (2, 16, 16, 3)
  assert_close_torch(nchw(posterior.mean), dist.mean.numpy(), msg='mean')
  assert_close_torch(nchw(posterior.logvar), dist.logvar.numpy(), msg='logvar')
  assert_close_torch(nchw(decoded), want_decoded, msg='decode')
  assert_close_torch(nchw(full), want_full, msg='forward')
  # sample_posterior draws from the 'noise' stream: another key, another image; neither is the mode's.
  resampled = _run(module, params, nhwc(images), nhwc(latents), jax.random.key(1))[3]
  assert np.abs(np.asarray(sampled - full)).max() > 1e-3 and np.abs(np.asarray(sampled - resampled)).max() > 1e-3


def test_without_mid_attention_and_quant_conv_matches_diffusers(tmp_path):
  reference = save_vae(tmp_path, mid_block_add_attention=False, use_quant_conv=False)
  module, params, config = from_pretrained(tmp_path)
  assert not config.mid_block_add_attention and 'quant_conv' not in params and 'post_quant_conv' in params
  assert 'attentions_0' not in params['decoder']['mid_block']
  images = vae_inputs()[0]
  with torch.no_grad():
    want = reference(torch.from_numpy(images)).sample.numpy()
  assert_close_torch(nchw(jax.jit(module.apply)({'params': params}, nhwc(images))), want)


def test_posterior_matches_diffusers_and_clips_logvar():
  rng = np.random.default_rng(1)
  moments = rng.standard_normal((2, 8, 3, 3)).astype(np.float32)
  moments[:, 4:, 0, 0] = [50.0, -50.0, 3.0, -3.0]  # log-variances outside [-30, 20] are clipped
  other_moments = rng.standard_normal((2, 8, 3, 3)).astype(np.float32)
  ours, other = DiagonalGaussian.from_moments(nhwc(moments)), DiagonalGaussian.from_moments(nhwc(other_moments))
  theirs = DiagonalGaussianDistribution(torch.from_numpy(moments))
  theirs_other = DiagonalGaussianDistribution(torch.from_numpy(other_moments))
  assert float(ours.logvar.max()) == 20.0 and float(ours.logvar.min()) == -30.0
  for name in ('mean', 'logvar', 'std', 'var'):
    assert_close_torch(nchw(getattr(ours, name)), getattr(theirs, name).numpy(), msg=name)
  assert_close_torch(np.asarray(ours.kl()), theirs.kl().numpy(), msg='kl to N(0, I)')
  assert_close_torch(np.asarray(ours.kl(other)), theirs.kl(theirs_other).numpy(), msg='kl')
  z = rng.standard_normal((2, 4, 3, 3)).astype(np.float32)
  assert_close_torch(np.asarray(ours.nll(nhwc(z))), theirs.nll(torch.from_numpy(z)).numpy(), msg='nll')
  np.testing.assert_array_equal(np.asarray(ours.mode()), np.asarray(ours.mean))


def test_posterior_samples_are_mean_plus_std_times_unit_noise():
  posterior = DiagonalGaussian(jnp.full((4, 8, 8, 4), 3.0), jnp.full((4, 8, 8, 4), np.log(0.25)))
  a, b = posterior.sample(jax.random.key(0)), posterior.sample(jax.random.key(1))
  np.testing.assert_array_equal(np.asarray(a), np.asarray(posterior.sample(jax.random.key(0))))
  assert not np.allclose(np.asarray(a), np.asarray(b))
  noise = (np.asarray(a) - 3.0) / 0.5
  assert abs(noise.mean()) < 0.15 and abs(noise.std() - 1.0) < 0.1


def test_every_parameter_has_logical_axes_and_bad_images_are_refused():
  config = AutoencoderKLConfig(**{k: v for k, v in VAE.items() if not k.endswith('block_types')})
  boxed = jax.eval_shape(AutoencoderKL(config).init, jax.random.key(0), jnp.zeros((1, 16, 16, 3)))['params']
  leaves = jax.tree.leaves(boxed, is_leaf=lambda v: isinstance(v, nn.LogicallyPartitioned))
  assert len(leaves) > 50 and all(isinstance(v, nn.LogicallyPartitioned) for v in leaves)
  assert all(len(v.names) == v.value.ndim for v in leaves)
  with pytest.raises(ValueError, match=r'multiples of 2, got shape \(1, 15, 16, 3\)'):
    jax.eval_shape(AutoencoderKL(config).init, jax.random.key(0), jnp.zeros((1, 15, 16, 3)))


def test_latent_scaling():
  z = jax.random.normal(jax.random.key(0), (2, 4, 4, 4))
  sd = AutoencoderKLConfig()
  np.testing.assert_allclose(np.asarray(sd.scale_latents(z)), np.asarray(z) * 0.18215, rtol=1e-6)
  sd3 = AutoencoderKLConfig(scaling_factor=1.5305, shift_factor=0.0609)
  np.testing.assert_allclose(np.asarray(sd3.scale_latents(z)), (np.asarray(z) - 0.0609) * 1.5305, rtol=1e-6)
  mean, std = (0.1, -0.2, 0.3, 0.0), (2.0, 1.0, 0.5, 4.0)
  sdxl = AutoencoderKLConfig(scaling_factor=0.5, latents_mean=mean, latents_std=std)
  np.testing.assert_allclose(np.asarray(sdxl.scale_latents(z)), (np.asarray(z) - mean) * 0.5 / np.asarray(std),
                             rtol=1e-6)
  for config in (sd, sd3, sdxl):
    assert_close_programs(config.unscale_latents(config.scale_latents(z)), z)


@pytest.mark.parametrize('key, value, message', [
    ('down_block_types', ['DownEncoderBlock2D', 'AttnDownEncoderBlock2D'], 'down_block_types=.* is not supported'),
    ('up_block_types', ['UpDecoderBlock2D'], 'up_block_types=.* is not supported'),
    ('act_fn', 'gelu', "act_fn 'gelu'"),
    ('norm_num_groups', 3, 'multiples of norm_num_groups 3'),
])
def test_unsupported_config_values_are_named(key, value, message):
  d = {'_class_name': 'AutoencoderKL', **VAE, key: value}
  with pytest.raises(ValueError, match=message):
    AutoencoderKLConfig.from_hf_dict(d)


def test_config_round_trips_through_the_diffusers_dict():
  config = AutoencoderKLConfig(block_out_channels=(8, 16), norm_num_groups=4, sample_size=(16, 24),
                               latents_mean=(0.0,) * 4, latents_std=(1.0,) * 4, force_upcast=False)
  d = config.to_hf_dict()
  assert d['_class_name'] == 'AutoencoderKL' and d['down_block_types'] == ['DownEncoderBlock2D'] * 2
  assert AutoencoderKLConfig.from_hf_dict(d) == config
  assert AutoencoderKLConfig.from_hf_dict({'_class_name': 'AutoencoderKL'}) == AutoencoderKLConfig()
