"""DiT vs diffusers' DiTTransformer2DModel on tiny random configs (patch 1 and 2, learned sigma on and off), label
dropout, the adaLN-Zero init and the config reader."""
import functools
from pathlib import Path

import diffusers
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from mmjax.models.dit import DiT, DiTConfig
from mmjax.weights import from_pretrained
from tests.hf_models import perturb
from tests.numerics import assert_close_torch

# 2 layers, width 2 heads x 8, 8 x 8 x 4 latents, 3 classes (+ the null label).
DIT = dict(num_attention_heads=2, attention_head_dim=8, in_channels=4, num_layers=2, sample_size=8,
           num_embeds_ada_norm=3)


def save_dit(directory: Path, *, seed: int = 0, cls: type = diffusers.DiTTransformer2DModel,
             **overrides) -> torch.nn.Module:
  """A random tiny diffusers DiT (`DIT` updated by `overrides`), every weight perturbed, saved to `directory`."""
  torch.manual_seed(seed)
  extra = {'norm_type': 'ada_norm_zero'} if cls is diffusers.Transformer2DModel else {}
  model = cls(**{**DIT, **extra, **overrides}).eval()
  perturb(model, seed)
  model.save_pretrained(directory)
  return model


def dit_inputs(config: DiTConfig, batch: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """NCHW sample [B, C, S, S], timesteps [B] (0 and 999 included), labels [B] (the null label included)."""
  rng = np.random.default_rng(seed)
  sample = rng.standard_normal((batch, config.in_channels, config.sample_size, config.sample_size)).astype(np.float32)
  timestep = np.array([0, 999, *rng.integers(1, 999, batch - 2)], np.int64)
  labels = np.array([config.num_classes, *rng.integers(0, config.num_classes, batch - 1)], np.int64)
  return sample, timestep, labels


def torch_forward(model: torch.nn.Module, sample: np.ndarray, timestep: np.ndarray, labels: np.ndarray) -> np.ndarray:
  with torch.no_grad():
    return model(torch.from_numpy(sample), timestep=torch.from_numpy(timestep),
                 class_labels=torch.from_numpy(labels)).sample.numpy()


def jax_forward(module: nn.Module, params, sample: np.ndarray, timestep: np.ndarray, labels: np.ndarray) -> jax.Array:
  """module on NCHW numpy inputs, jitted, -> NCHW."""
  out = jax.jit(module.apply)({'params': params}, jnp.asarray(sample.transpose(0, 2, 3, 1)), jnp.asarray(timestep),
                              jnp.asarray(labels))
  return out.transpose(0, 3, 1, 2)


@pytest.mark.parametrize('overrides', [
    dict(patch_size=1, out_channels=8),
    dict(patch_size=2),
    dict(patch_size=2, out_channels=8, norm_elementwise_affine=True, attention_bias=False, activation_fn='gelu'),
], ids=['patch1-learned-sigma', 'patch2', 'patch2-learned-sigma-affine-nobias-gelu'])
def test_matches_diffusers(tmp_path, overrides):
  reference = save_dit(tmp_path, **overrides)
  module, params, config = from_pretrained(tmp_path)
  assert (config.patch_size, config.output_channels) == (overrides['patch_size'], overrides.get('out_channels', 4))
  inputs = dit_inputs(config)
  out = jax_forward(module, params, *inputs)
  assert out.shape == (3, config.output_channels, 8, 8)
  assert_close_torch(out, torch_forward(reference, *inputs))


def test_transformer_2d_model_folder_matches_diffusers(tmp_path):
  """The released facebook/DiT-* folders are Transformer2DModel with a DiT config."""
  reference = save_dit(tmp_path, cls=diffusers.Transformer2DModel, patch_size=2, out_channels=8,
                       attention_bias=True, activation_fn='gelu-approximate', norm_elementwise_affine=False)
  module, params, config = from_pretrained(tmp_path)
  inputs = dit_inputs(config)
  assert_close_torch(jax_forward(module, params, *inputs), torch_forward(reference, *inputs))


def test_label_dropout_draws_the_null_label():
  config = DiTConfig(**DIT, patch_size=2)
  sample, timestep, labels = dit_inputs(config, batch=64)
  sample, timestep, labels = jnp.asarray(sample.transpose(0, 2, 3, 1)), jnp.asarray(timestep), jnp.asarray(labels)
  params = nn.unbox(jax.jit(DiT(config).init)(jax.random.key(0), sample, timestep, labels)['params'])
  # Non-zero output layers, or every output is 0 whatever the labels (adaLN-Zero).
  # Drawn with numpy: a jax.random draw per parameter shape costs more XLA compilation than the whole test.
  rng = np.random.default_rng(1)
  params = jax.tree.map(lambda p: np.asarray(p) + np.float32(0.1) * rng.standard_normal(p.shape, np.float32), params)
  null = jnp.full_like(labels, config.num_classes)

  # Arrays are arguments, not closed-over constants that XLA would spend its time folding.
  @functools.partial(jax.jit, static_argnums=(0,))
  def run(train, params, sample, timestep, labels, key):
    return DiT(config, class_dropout_prob=0.5).apply({'params': params}, sample, timestep, labels,
                                                     deterministic=not train, rngs={'dropout': key})

  clean = run(False, params, sample, timestep, labels, jax.random.key(2))
  all_null = run(False, params, sample, timestep, null, jax.random.key(2))
  assert np.abs(np.asarray(clean - all_null)).max() > 1e-3
  # Training at p = 0.5: each example keeps its label or takes the null one, and both happen among 64.
  dropped_out = np.asarray(run(True, params, sample, timestep, labels, jax.random.key(3)))
  kept = np.all(np.isclose(dropped_out, clean, atol=1e-5), axis=(1, 2, 3))
  dropped = np.all(np.isclose(dropped_out, all_null, atol=1e-5), axis=(1, 2, 3))
  assert np.all(kept | dropped) and 0 < kept.sum() < 64


def test_init_is_adaln_zero_with_logical_axes():
  config = DiTConfig(**DIT, patch_size=1, out_channels=8)
  x = jnp.ones((2, 8, 8, 4))
  variables = jax.jit(DiT(config).init)(jax.random.key(0), x, jnp.array([1, 500]), jnp.array([0, 3]))
  boxed = jax.tree.leaves(variables['params'], is_leaf=lambda v: isinstance(v, nn.LogicallyPartitioned))
  assert boxed and all(isinstance(v, nn.LogicallyPartitioned) for v in boxed)
  params = nn.unbox(variables['params'])
  for path in (('layers_0', 'norm1', 'linear', 'kernel'), ('proj_out_1', 'kernel'), ('proj_out_2', 'kernel')):
    leaf = params
    for key in path:
      leaf = leaf[key]
    assert not np.any(np.asarray(leaf)), path
  assert np.std(np.asarray(params['layers_1']['norm1']['emb']['embedding_table'])) > 0.01
  out = jax.jit(DiT(config).apply)({'params': params}, x, jnp.array([1, 500]), jnp.array([0, 3]))
  assert out.shape == (2, 8, 8, 8) and not np.any(np.asarray(out))


def test_config_reads_and_writes_diffusers_dicts():
  config = DiTConfig(**DIT, patch_size=2, out_channels=8)
  assert DiTConfig.from_hf_dict(config.to_hf_dict()) == config
  scaled = DiTConfig(**DIT, patch_size=2, interpolation_scale=2.0)
  assert scaled.to_hf_dict()['_class_name'] == 'Transformer2DModel'
  assert DiTConfig.from_hf_dict(scaled.to_hf_dict()) == scaled
  released = {'_class_name': 'Transformer2DModel', 'activation_fn': 'gelu-approximate', 'attention_bias': True,
              'attention_head_dim': 72, 'in_channels': 4, 'norm_elementwise_affine': False,
              'norm_type': 'ada_norm_zero', 'num_attention_heads': 16, 'num_embeds_ada_norm': 1000, 'num_layers': 28,
              'out_channels': 8, 'patch_size': 2, 'sample_size': 32}
  assert DiTConfig.from_hf_dict(released).interpolation_scale == 1
  with pytest.raises(ValueError, match=r"this Transformer2DModel is not a DiT: it needs norm_type \"ada_norm_zero\""):
    DiTConfig.from_hf_dict({**released, 'norm_type': 'layer_norm'})
  with pytest.raises(ValueError, match=r'Transformer2DModel cross_attention_dim=768 is not supported'):
    DiTConfig.from_hf_dict({**released, 'cross_attention_dim': 768})
  with pytest.raises(ValueError, match=r"Unsupported DiT activation_fn 'geglu'"):
    DiTConfig.from_hf_dict({**released, 'activation_fn': 'geglu'})
  with pytest.raises(ValueError, match=r'diffusers hard-codes 1'):
    DiTConfig(**DIT, downscale_freq_shift=0.0).to_hf_dict()
