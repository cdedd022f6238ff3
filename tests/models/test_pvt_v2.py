"""PvtV2Model vs transformers' PvtV2Model/PvtV2Backbone (HF folder and timm-layout state dict), b0 shapes."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import save_file

from mmjax.models.pvt_v2 import PvtV2Config, PvtV2Model
from mmjax.weights import from_pretrained, load_into, pvt_v2 as pvt_weights, save_pretrained
from mmjax.weights.source import WeightsMismatchError
from tests.hf_models import perturb
from tests.numerics import assert_close_torch

# The tiny config of hf-internal-testing/tiny-random-PvtV2Backbone, with depths 1/2/1/1 to stay fast.
TINY = dict(hidden_sizes=[16, 32, 64, 128], depths=[1, 2, 1, 1], num_attention_heads=[1, 2, 4, 8],
            mlp_ratios=[2, 2, 2, 2], sr_ratios=[8, 4, 2, 1])
# timm's names for HF's (the inverse of the known timm -> HF rename), applied in order.
HF_TO_TIMM = ((r'^encoder\.layers\.0\.patch_embedding\.', 'patch_embed.'),
              (r'^encoder\.layers\.(\d+)\.patch_embedding\.', r'stages.\1.downsample.'),
              (r'^encoder\.layers\.(\d+)\.layer_norm\.', r'stages.\1.norm.'), (r'^encoder\.layers\.', 'stages.'),
              (r'layer_norm_1', 'norm1'), (r'layer_norm_2', 'norm2'), (r'attention\.query', 'attn.q'),
              (r'attention\.proj', 'attn.proj'), (r'attention\.spatial_reduction', 'attn.sr'),
              (r'attention\.layer_norm', 'attn.norm'), (r'\.layer_norm\.', '.norm.'), (r'mlp\.dense1', 'mlp.fc1'),
              (r'mlp\.dense2', 'mlp.fc2'), (r'mlp\.dwconv\.dwconv', 'mlp.dwconv'))


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
  """(HF folder of a random tiny PvtV2Backbone, the model, NCHW pixels [2, 3, 64, 48], its four feature maps)."""
  directory = tmp_path_factory.mktemp('pvt')
  torch.manual_seed(0)
  model = transformers.PvtV2Backbone(transformers.PvtV2Config(
      out_features=['stage1', 'stage2', 'stage3', 'stage4'], **TINY)).eval()
  perturb(model, 0)
  model.save_pretrained(directory)
  pixels = np.random.default_rng(0).standard_normal((2, 3, 64, 48)).astype(np.float32)
  with torch.no_grad():
    maps = [m.numpy().transpose(0, 2, 3, 1) for m in model(torch.from_numpy(pixels)).feature_maps]
  return directory, model, pixels.transpose(0, 2, 3, 1), maps


def test_hf_folder_matches_transformers(reference, tmp_path):
  directory, model, pixels, maps = reference
  module, params, config = from_pretrained(directory)
  assert config.depths == (1, 2, 1, 1) and config.embed_eps == 1e-6
  out = jax.jit(module.apply)({'params': params}, jnp.asarray(pixels))
  assert [o.shape for o in out] == [(2, 16, 12, 16), (2, 8, 6, 32), (2, 4, 3, 64), (2, 2, 2, 128)]
  for ours, theirs in zip(out, maps):
    assert_close_torch(ours, theirs)
  # Round trip: written back, transformers' PvtV2Model reads every tensor.
  save_pretrained(tmp_path, config, params)
  reloaded = transformers.PvtV2Model.from_pretrained(tmp_path, output_hidden_states=True).eval()
  with torch.no_grad():
    last = reloaded(torch.from_numpy(pixels.transpose(0, 3, 1, 2))).last_hidden_state.numpy()
  assert_close_torch(last.transpose(0, 2, 3, 1), maps[-1])
  # The written names carry the pvt_v2. prefix of PvtV2ForImageClassification folders; they read back as they were.
  jax.tree.map(np.testing.assert_array_equal, from_pretrained(tmp_path)[1], params)
  # The bare weight file, read by layout into the tree's shapes.
  abstract = jax.eval_shape(lambda: params)
  jax.tree.map(np.testing.assert_array_equal, load_into(abstract, tmp_path / 'model.safetensors', layout='pvt_v2'),
               params)


def test_timm_state_dict_matches_transformers(reference, tmp_path):
  _, model, pixels, maps = reference
  timm_state = {}
  for name, value in model.state_dict().items():
    value = value.numpy()
    for pattern, replacement in HF_TO_TIMM:
      name = re.sub(pattern, replacement, name)
    if '.attention.key.' in name:  # timm fuses key and value into one kv Linear [2E, E]
      value = np.concatenate([value, model.state_dict()[_hf(name, 'value')].numpy()])
      name = name.replace('.attention.key.', '.attn.kv.')
    elif '.attention.value.' in name:
      continue
    timm_state[name] = value
  assert 'stages.1.blocks.1.attn.kv.weight' in timm_state and 'stages.0.norm.bias' in timm_state
  config = PvtV2Config(**{k: tuple(v) for k, v in TINY.items()})
  module, params = pvt_weights.load_timm(timm_state, config)
  out = jax.jit(module.apply)({'params': params}, jnp.asarray(pixels))
  for ours, theirs in zip(out, maps):
    assert_close_torch(ours, theirs)
  # The same tensors under the original whai362/PVT names, from a .safetensors file.
  original = {re.sub(r'^stages\.(\d+)\.blocks\.', lambda m: f'block{int(m[1]) + 1}.', k): v
              for k, v in timm_state.items()}
  original = {re.sub(r'^stages\.(\d+)\.downsample\.', lambda m: f'patch_embed{int(m[1]) + 1}.', k): v
              for k, v in original.items()}
  original = {re.sub(r'^stages\.(\d+)\.norm\.', lambda m: f'norm{int(m[1]) + 1}.', k).replace(
      'patch_embed.', 'patch_embed1.').replace('mlp.dwconv.', 'mlp.dwconv.dwconv.'): v for k, v in original.items()}
  save_file(original, tmp_path / 'pvt.safetensors')
  _, params2 = pvt_weights.load_timm(tmp_path / 'pvt.safetensors', config)
  jax.tree.map(np.testing.assert_array_equal, params2, params)
  del timm_state['stages.2.blocks.0.attn.sr.weight']
  with pytest.raises(WeightsMismatchError, match=r'missing 1 parameters: layers_2/blocks_0/attention/'
                                                 r'spatial_reduction/kernel'):
    pvt_weights.load_timm(timm_state, config)


def _hf(timm_name: str, kind: str) -> str:
  """The HF name of the `kind` ('value') projection beside timm-renamed `timm_name`'s key projection."""
  stage, block, leaf = re.fullmatch(r'stages\.(\d+)\.blocks\.(\d+)\.attention\.key\.(\w+)', timm_name).groups()
  return f'encoder.layers.{stage}.blocks.{block}.attention.{kind}.{leaf}'


def test_b0_shapes_and_parameter_count():
  """Full-size feature maps at 224 px (strides 4-32) by eval_shape; the parameter count equals transformers'
  PvtV2Model of the same config (built on the meta device, so nothing is allocated)."""
  config = PvtV2Config.variant('b0')
  variables = jax.eval_shape(PvtV2Model(config).init, jax.random.key(0), jnp.zeros((1, 224, 224, 3)))
  out = jax.eval_shape(PvtV2Model(config).apply, variables, jnp.zeros((1, 224, 224, 3)))
  assert [o.shape for o in out] == [(1, 224 // s, 224 // s, c) for s, c in zip((4, 8, 16, 32), config.hidden_sizes)]
  with torch.device('meta'):
    reference = transformers.PvtV2Model(transformers.PvtV2Config(**config.to_hf_dict()))
  assert sum(np.prod(x.shape) for x in jax.tree.leaves(variables)) == reference.num_parameters()


def test_config_errors():
  with pytest.raises(ValueError, match='Unknown PVTv2 variant'):
    PvtV2Config.variant('b9')
  with pytest.raises(ValueError, match='linear_attention'):
    PvtV2Config.from_hf_dict({'linear_attention': True})
  assert PvtV2Config.variant('b2', timm=True).embed_eps == 1e-5
  with pytest.raises(ValueError, match='one length each'):
    PvtV2Config(depths=(1, 1))
