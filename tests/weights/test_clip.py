"""CLIP weights: HF folder round trips through transformers (towers with and without projection), a CLIPModel
folder's towers, bare files in the 'clip*' layouts, old position_ids buffers, and a missing tensor named."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file

from mmjax.models import CLIPTextConfig, CLIPTextModelWithProjection, CLIPVisionModel
from mmjax.weights import from_pretrained, load_into, save_pretrained
from tests.hf_models import save_clip_model, save_clip_text, save_clip_vision
from tests.numerics import assert_close_programs, assert_close_torch

PIXELS = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
IDS = np.array([[1, 7, 9, 30, 63, 0]])


def _abstract(module, *inputs):
  return jax.eval_shape(module.init, jax.random.key(0), *inputs)['params']


def test_vision_with_projection_round_trip(tmp_path):
  reference = save_clip_vision(tmp_path / 'src', projection=True)
  module, params, config = from_pretrained(tmp_path / 'src')
  save_pretrained(tmp_path / 'out', module, params)
  reloaded = transformers.CLIPVisionModelWithProjection.from_pretrained(tmp_path / 'out',
                                                                       attn_implementation='eager').eval()
  assert reloaded.config.architectures == ['CLIPVisionModelWithProjection']
  with torch.no_grad():
    expected, out = reference(torch.from_numpy(PIXELS)), reloaded(torch.from_numpy(PIXELS))
  assert_close_programs(out.image_embeds.numpy(), expected.image_embeds.numpy())
  assert_close_programs(out.last_hidden_state.numpy(), expected.last_hidden_state.numpy())
  names = load_file(tmp_path / 'out' / 'model.safetensors')
  assert 'visual_projection.weight' in names and 'vision_model.embeddings.class_embedding' in names
  _, again, again_config = from_pretrained(tmp_path / 'out')
  assert again_config == config
  jax.tree.map(np.testing.assert_array_equal, again, params)


def test_text_round_trip_keeps_token_ids(tmp_path):
  reference = save_clip_text(tmp_path / 'src', eos_token_id=2)
  _, params, config = from_pretrained(tmp_path / 'src')
  save_pretrained(tmp_path / 'out', config, {'params': params})  # a config and a {'params': ...} wrapper
  reloaded = transformers.CLIPTextModel.from_pretrained(tmp_path / 'out', attn_implementation='eager').eval()
  assert (reloaded.config.eos_token_id, reloaded.config.bos_token_id, reloaded.config.pad_token_id) == (2, 1, 0)
  with torch.no_grad():
    expected, out = reference(torch.from_numpy(IDS)), reloaded(torch.from_numpy(IDS))
  assert_close_programs(out.pooler_output.numpy(), expected.pooler_output.numpy())
  # The bare tower is written with the text_model. prefix that transformers 4.x and 5.x both read.
  assert all(k.startswith('text_model.') for k in load_file(tmp_path / 'out' / 'model.safetensors'))


def test_clip_model_folder_and_layouts(tmp_path):
  """A CLIPModel folder reads as its vision tower; the 'clip' layout reads its text tower with projection; the
  tower layouts read bare files of either naming."""
  reference = save_clip_model(tmp_path)
  module, params, _ = from_pretrained(tmp_path)
  assert type(module) is CLIPVisionModel
  text_config = json.loads((tmp_path / 'config.json').read_text())['text_config']
  text = CLIPTextModelWithProjection(CLIPTextConfig.from_hf_dict(text_config))
  text_params = load_into(_abstract(text, jnp.zeros((1, 6), jnp.int32)), tmp_path / 'model.safetensors',
                          layout='clip')
  with torch.no_grad():
    vision = reference.vision_model(torch.from_numpy(PIXELS))
    text_embeds = reference.text_projection(reference.text_model(torch.from_numpy(IDS)).pooler_output)
  pool = jax.jit(lambda p, x: module.apply({'params': p}, x, method='pool'))
  assert_close_torch(pool(params, jnp.asarray(PIXELS.transpose(0, 2, 3, 1))), vision.pooler_output.numpy())
  embed_text = jax.jit(lambda p, i: text.apply({'params': p}, i, method='text_embeds'))
  assert_close_torch(embed_text(text_params, jnp.asarray(IDS)), text_embeds.numpy())
  # A bare vision tower file as transformers 5.x names it (no prefix), with an old position_ids buffer.
  tensors = {k[len('vision_model.'):]: v for k, v in load_file(tmp_path / 'model.safetensors').items()
             if k.startswith('vision_model.')}
  tensors['embeddings.position_ids'] = np.arange(17)[None]
  save_file(tensors, tmp_path / 'tower.safetensors')
  bare = load_into(_abstract(module, jnp.zeros((1, 32, 32, 3))), tmp_path / 'tower.safetensors',
                   layout='clip_vision_model')
  jax.tree.map(np.testing.assert_array_equal, bare, params)


def test_missing_tensor_is_named_with_its_file(tmp_path):
  save_clip_vision(tmp_path)
  tensors = load_file(tmp_path / 'model.safetensors')
  del tensors['pre_layrnorm.weight']
  save_file(tensors, tmp_path / 'model.safetensors', metadata={'format': 'pt'})
  with pytest.raises(ValueError, match=rf'{tmp_path / "model.safetensors"}: .*Missing tensors: '
                                       r'vision_model\.pre_layrnorm\.weight\. Unexpected tensors: none'):
    from_pretrained(tmp_path)
