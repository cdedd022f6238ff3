"""load_into: prefixes, skipped tensors, named mismatches, layout-named files, diffusers folders and the vision
tower of an HF SiglipModel."""
import json
import re
import shutil

import jax
import numpy as np
import pytest
from flax.traverse_util import flatten_dict

from mmjax.weights import WeightsMismatchError, from_pretrained, load_into, registry, siglip
from tests.hf_models import SIGLIP, save_qwen2, save_siglip, save_siglip_model


@pytest.fixture(scope='module')
def qwen2(tmp_path_factory):
  directory = tmp_path_factory.mktemp('qwen2')
  save_qwen2(directory, tied=False)
  module, params, _ = from_pretrained(directory)
  return directory, module, params


@pytest.fixture(scope='module')
def siglip_with_head(tmp_path_factory):
  directory = tmp_path_factory.mktemp('siglip')
  save_siglip(directory, use_head=True)
  return directory, from_pretrained(directory)[1]


def _abstract(params):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)


def _equal(a, b):
  jax.tree.map(np.testing.assert_array_equal, a, b)


def test_prefix_takes_a_part_and_skip_reads_past(siglip_with_head):
  directory, params = siglip_with_head
  layer = load_into(_abstract(params['layers_1']), directory, prefix='layers_1')
  _equal(layer, params['layers_1'])
  headless = {k: v for k, v in params.items() if k != 'head'}
  with pytest.raises(WeightsMismatchError, match=r'model\.safetensors does not fit the model: unexpected 11 '
                                                 r'parameters: head\.attention\.in_proj_bias, '
                                                 r'head\.attention\.in_proj_weight, '):
    load_into(_abstract(headless), directory)
  _equal(load_into(_abstract(headless), directory, skip=['head/.*']), headless)
  with pytest.raises(WeightsMismatchError, match=r"skip patterns \['heads/\.\*'\] match no parameter"):
    load_into(_abstract(headless), directory, skip=['head/.*', 'heads/.*'])
  with pytest.raises(WeightsMismatchError, match=r"has no parameters under 'tower'; its top-level subtrees are "
                                                 r'head, layers_0, layers_1, layers_2, patch_embedding'):
    load_into(_abstract(headless), directory, prefix='tower')


def test_missing_and_misshapen_parameters_are_named_with_the_file(qwen2):
  directory, _, params = qwen2
  wanted = _abstract(params)
  wanted['layers_2'] = wanted['layers_1']
  with pytest.raises(WeightsMismatchError, match=rf'{directory}/model\.safetensors does not fit the model: missing '
                                                 r'12 parameters: layers_2/input_layernorm/scale, '):
    load_into(wanted, directory)
  wanted = _abstract(params)
  wanted['norm']['scale'] = jax.ShapeDtypeStruct((32,), np.float32)
  with pytest.raises(WeightsMismatchError, match=r'tensor model\.norm\.weight has shape \(64,\); the config needs '
                                                 r'\(32,\)'):
    load_into(wanted, directory)


def test_a_bare_file_reads_with_a_named_layout(qwen2, tmp_path):
  directory, _, params = qwen2
  shutil.copy(directory / 'model.safetensors', tmp_path / 'weights.safetensors')
  _equal(load_into(_abstract(params), tmp_path / 'weights.safetensors', layout='qwen2'), params)
  with pytest.raises(ValueError, match=r"is a single file: name its layout \(layout=\.\.\., one of "
                                       + re.escape(f'{sorted(registry.LAYOUTS)})')):
    load_into(_abstract(params), tmp_path / 'weights.safetensors')
  with pytest.raises(ValueError, match=r"unknown weight layout 'timm'; registered layouts: \["):
    load_into(_abstract(params), tmp_path / 'weights.safetensors', layout='timm')


def test_a_diffusers_folder_is_matched_by_its_class_name(siglip_with_head, tmp_path, monkeypatch):
  directory, params = siglip_with_head
  config = json.loads((directory / 'config.json').read_text())
  del config['model_type']
  (tmp_path / 'config.json').write_text(json.dumps({**config, '_class_name': 'TinyVisionModel'}))
  shutil.copy(directory / 'model.safetensors', tmp_path / 'diffusion_pytorch_model.safetensors')
  with pytest.raises(ValueError, match=r"unsupported diffusers _class_name 'TinyVisionModel'; supported: "
                                       r"\['AutoencoderKL', 'DiTTransformer2DModel', 'Transformer2DModel', "
                                       r"'UNet2DConditionModel'\]"):
    load_into(_abstract(params), tmp_path)
  monkeypatch.setitem(registry.DIFFUSERS_SPECS, 'TinyVisionModel', siglip.SPEC)
  _equal(load_into(_abstract(params), tmp_path), params)
  _equal(from_pretrained(tmp_path)[1], params)


def test_the_vision_tower_of_a_siglip_model(tmp_path):
  """An HF SiglipModel folder (model_type 'siglip', text tower beside) fills a vision tower."""
  model = save_siglip_model(tmp_path)
  module, params, config = from_pretrained(tmp_path)
  assert config.num_hidden_layers == SIGLIP['num_hidden_layers'] and set(params) >= {'head', 'layers_2'}
  flat = flatten_dict(load_into(_abstract(params), tmp_path))
  np.testing.assert_array_equal(flat[('position_embedding',)],
                                model.vision_model.embeddings.position_embedding.weight.detach().numpy())
  fc2 = model.vision_model.encoder.layers[2].mlp.fc2.weight.detach().numpy()
  np.testing.assert_array_equal(flat[('layers_2', 'mlp', 'fc2', 'kernel')], fc2.T)
