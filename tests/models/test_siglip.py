"""SiglipVisionModel vs transformers: last_hidden_state, hidden_states[k] via feature_layer, pooled head; errors."""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from mmjax.models import SiglipVisionConfig, SiglipVisionModel
from mmjax.weights import from_pretrained
from tests.hf_models import save_siglip
from tests.numerics import assert_close_torch

P = jax.sharding.PartitionSpec


@pytest.fixture(scope='module')
def siglip(tmp_path_factory):
  """(mmjax module, params, NHWC pixels [2, 32, 32, 3], HF outputs with hidden_states, jitted apply)."""
  directory = tmp_path_factory.mktemp('siglip')
  reference = save_siglip(directory, use_head=True)
  module, params, config = from_pretrained(directory)
  assert config.vision_use_head and config.hidden_act == 'gelu_pytorch_tanh'
  pixels = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
  with torch.no_grad():
    expected = reference(torch.from_numpy(pixels), output_hidden_states=True)
  run = jax.jit(lambda p, x, layer: module.apply({'params': p}, x, feature_layer=layer), static_argnums=2)
  return module, params, jnp.asarray(pixels.transpose(0, 2, 3, 1)), expected, run


def test_last_hidden_state_and_pooler_match_transformers(siglip):
  module, params, pixels, expected, run = siglip
  out = run(params, pixels, None)
  assert out.shape == (2, 16, 32)
  assert_close_torch(out, expected.last_hidden_state.numpy())
  pool = jax.jit(lambda p, x: module.apply({'params': p}, x, method='pool'))
  assert_close_torch(pool(params, pixels), expected.pooler_output.numpy())


@pytest.mark.parametrize('feature_layer', [-2, -1, 0, 2])
def test_feature_layer_matches_hidden_states(siglip, feature_layer):
  _, params, pixels, expected, run = siglip
  out = run(params, pixels, feature_layer)
  assert_close_torch(out, expected.hidden_states[feature_layer].numpy())


def test_feature_layer_skips_later_layers(siglip):
  """OneVision drops the last layer: its parameters (and post-LN, head) are not needed for feature_layer=-2."""
  module, params, pixels, expected, _ = siglip
  truncated = {k: v for k, v in params.items() if k not in ('layers_2', 'post_layernorm', 'head')}
  out = jax.jit(lambda p, x: module.apply({'params': p}, x, feature_layer=-2))(truncated, pixels)
  assert_close_torch(out, expected.hidden_states[-2].numpy())


def test_no_head_config_and_parameter_axes():
  config = SiglipVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                              image_size=16, patch_size=8, vision_use_head=False)
  variables = jax.eval_shape(SiglipVisionModel(config).init, jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
  specs = nn.get_partition_spec(variables)['params']
  assert 'head' not in specs
  assert specs['patch_embedding']['kernel'] == P('conv_h', 'conv_w', 'conv_in', 'embed')
  assert specs['position_embedding'] == P('length', 'embed')
  assert specs['layers_0']['mlp']['fc1']['kernel'] == P('embed', 'mlp')
  with pytest.raises(ValueError, match='no pooling head'):
    SiglipVisionModel(config).apply(variables, jnp.zeros((1, 16, 16, 3)), method='pool')


def test_errors(siglip):
  module, params, pixels, _, _ = siglip
  with pytest.raises(ValueError, match=r'feature_layer must be in \[-4, 3\]'):
    module.apply({'params': params}, pixels, feature_layer=4)
  with pytest.raises(ValueError, match=r'pixel_values must be \[B, 32, 32, 3\] \(channels last\)'):
    module.apply({'params': params}, pixels.transpose(0, 3, 1, 2))
  with pytest.raises(ValueError, match='Unsupported SigLIP hidden_act'):
    dataclasses.replace(module.config, hidden_act='swish')
  with pytest.raises(ValueError, match='lacks'):
    SiglipVisionConfig.from_hf_dict({'hidden_size': 8})
