"""CLIP vision and text towers vs transformers: last_hidden_state, hidden_states[k] via feature_layer, pooled and
projected outputs, padding masks, both EOS conventions, quick_gelu and gelu; parameter axes and errors."""
import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from mmjax.models import CLIPTextConfig, CLIPVisionConfig, CLIPVisionModel
from mmjax.weights import from_pretrained
from tests.hf_models import save_clip_text, save_clip_vision
from tests.numerics import assert_close_programs, assert_close_torch

P = jax.sharding.PartitionSpec


@pytest.fixture(scope='module')
def vision(tmp_path_factory):
  """(CLIPVisionModelWithProjection, params, NHWC pixels [2, 32, 32, 3], HF outputs with hidden_states)."""
  directory = tmp_path_factory.mktemp('clip_vision')
  reference = save_clip_vision(directory, projection=True)
  module, params, config = from_pretrained(directory)
  assert config.with_projection and config.hidden_act == 'quick_gelu'
  pixels = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
  with torch.no_grad():
    expected = reference(torch.from_numpy(pixels), output_hidden_states=True)
  return module, params, jnp.asarray(pixels.transpose(0, 2, 3, 1)), expected


def test_vision_outputs_match_transformers(vision):
  module, params, pixels, expected = vision

  def outputs(p, x):
    run = functools.partial(module.apply, {'params': p}, x)
    return dict(last=run(), penultimate=run(feature_layer=-2), embeddings=run(feature_layer=0),
                layer_1=run(feature_layer=1), pool=run(method='pool'), image_embeds=run(method='image_embeds'))

  out = jax.jit(outputs)(params, pixels)
  assert out['last'].shape == (2, 17, 32)  # the CLS token and 4 x 4 patches
  assert_close_torch(out['last'], expected.last_hidden_state.numpy())
  for name, k in (('penultimate', -2), ('embeddings', 0), ('layer_1', 1)):
    assert_close_torch(out[name], expected.hidden_states[k].numpy(), msg=name)
  assert_close_torch(out['image_embeds'], expected.image_embeds.numpy())
  assert_close_torch(out['pool'] @ np.asarray(params['visual_projection']['kernel']), expected.image_embeds.numpy())


def test_bare_tower_skips_later_layers(vision):
  """LLaVA's use: the bare tower on the projection model's vision_model params, later layers and norms absent."""
  module, params, pixels, expected = vision
  truncated = {k: v for k, v in params['vision_model'].items() if k not in ('layers_2', 'post_layernorm')}
  tower = CLIPVisionModel(module.config)
  out = jax.jit(lambda p, x: tower.apply({'params': p}, x, feature_layer=-2)[:, 1:])(truncated, pixels)
  assert_close_torch(out, expected.hidden_states[-2][:, 1:].numpy())


def _ids(eos: int) -> tuple[np.ndarray, np.ndarray]:
  """ids [2, 10] and mask: row 0 right-padded with EOS ids after its EOS at 6, row 1 left-padded by 2 with EOS
  last. Other tokens are in [6, 62]: an EOS of 5 is not the largest id, one of 63 is (the legacy convention)."""
  ids = np.random.default_rng(1).integers(6, 63, (2, 10))
  mask = np.ones((2, 10), np.int64)
  ids[0, 0], ids[0, 6:], mask[0, 7:] = 1, eos, 0
  ids[1, :2], mask[1, :2], ids[1, 2], ids[1, 9] = 0, 0, 1, eos
  return ids, mask


@pytest.fixture(scope='module', params=['first_eos_quick_gelu', 'legacy_eos_gelu'])
def text(request, tmp_path_factory):
  """(module, params, ids, mask, HF outputs, legacy): eos_token_id 5 with projection and quick_gelu (pooled at the
  first 5), or the legacy eos_token_id 2 with gelu and no projection (pooled at the largest id, 63)."""
  legacy = request.param.startswith('legacy')
  directory = tmp_path_factory.mktemp('clip_text')
  reference = save_clip_text(directory, projection=not legacy, eos_token_id=2 if legacy else 5,
                             hidden_act='gelu' if legacy else 'quick_gelu')
  module, params, config = from_pretrained(directory)
  assert config.eos_token_id == (2 if legacy else 5) and config.with_projection == (not legacy)
  ids, mask = _ids(63 if legacy else 5)
  with torch.no_grad():
    expected = reference(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), output_hidden_states=True)
  return module, params, jnp.asarray(ids), jnp.asarray(mask), expected, legacy


def test_text_outputs_match_transformers(text):
  module, params, ids, mask, expected, legacy = text

  def outputs(p, i, m):
    run = functools.partial(module.apply, {'params': p}, i, attention_mask=m)
    out = dict(last=run(), penultimate=run(feature_layer=-2), pool=run(method='pool'))
    return out if legacy else {**out, 'text_embeds': run(method='text_embeds')}

  out = jax.jit(outputs)(params, ids, mask)
  valid = np.asarray(mask, bool)  # the states at padded positions are not meaningful
  assert_close_torch(np.asarray(out['last'])[valid], expected.last_hidden_state.numpy()[valid])
  assert_close_torch(np.asarray(out['penultimate'])[valid], expected.hidden_states[-2].numpy()[valid])
  assert_close_torch(out['pool'], expected.last_hidden_state.numpy()[[0, 1], [6, 9]])
  if legacy:
    assert_close_torch(out['pool'], expected.pooler_output.numpy())
  else:
    assert_close_torch(out['text_embeds'], expected.text_embeds.numpy())


def test_parameter_axes_and_errors():
  config = CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                            image_size=16, patch_size=8)
  variables = jax.eval_shape(CLIPVisionModel(config).init, jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
  specs = nn.get_partition_spec(variables)['params']
  assert specs['class_embedding'] == P('embed')
  assert specs['position_embedding'] == P('length', 'embed')
  assert 'bias' not in specs['patch_embedding']
  assert specs['layers_0']['mlp']['fc1']['kernel'] == P('embed', 'mlp')
  with pytest.raises(ValueError, match=r'feature_layer must be in \[-2, 1\]'):
    CLIPVisionModel(config).apply(variables, jnp.zeros((1, 16, 16, 3)), feature_layer=2)
  with pytest.raises(ValueError, match=r'pixel_values must be \[B, 16, 16, 3\] \(channels last\)'):
    CLIPVisionModel(config).apply(variables, jnp.zeros((1, 3, 16, 16)))
  with pytest.raises(ValueError, match='Unsupported CLIP vision hidden_act'):
    dataclasses.replace(config, hidden_act='swish')
  with pytest.raises(ValueError, match='lacks'):
    CLIPVisionConfig.from_hf_dict({'hidden_size': 8})
  text = dict(vocab_size=8, hidden_size=8, intermediate_size=8, num_hidden_layers=1, num_attention_heads=2)
  with pytest.raises(ValueError, match='eos_token_id must be one integer'):
    CLIPTextConfig.from_hf_dict({**text, 'eos_token_id': [2, 3]})


def test_remat_gives_the_same_gradients(vision):
  """The first layer's output under remat: the same gradients (the later layers are not run)."""
  module, params, pixels, _ = vision

  def grads(remat):
    tower = CLIPVisionModel(module.config, remat=remat)
    return jax.jit(jax.grad(lambda p: jnp.sum(tower.apply({'params': p}, pixels, feature_layer=1) ** 2)))(
        params['vision_model'])

  plain = grads(False)
  assert float(jnp.abs(plain['layers_0']['mlp']['fc1']['kernel']).max()) > 0
  assert_close_programs(grads(True), plain)
