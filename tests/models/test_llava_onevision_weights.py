"""LLaVA-OneVision weights: save_pretrained round trip through transformers (tied and untied), the tensor naming
schemes, missing or unexpected tensors, and a sharded load on a (fsdp=4, tensor=2) mesh."""
import json

import flax.linen as nn
import jax
import numpy as np
import pytest
import transformers
from jax.sharding import AxisType, PartitionSpec as P
from safetensors.numpy import load_file, save_file

from mmjax.weights import from_pretrained, save_pretrained
from tests.hf_models import IMAGE_TOKEN, llava_logits, save_llava
from tests.models.test_llava_onevision import prompts
from tests.numerics import assert_close_programs, assert_close_torch, assert_same_program

SIZES = [(30, 50), (64, 32)]
RULES = {'batch': None, 'length': None, 'embed': 'fsdp', 'mlp': 'tensor', 'heads': 'tensor', 'kv_heads': 'tensor',
         'head_dim': None, 'vocab': 'tensor', 'conv_h': None, 'conv_w': None, 'conv_in': None}


def _multi_image_inputs(config):
  single = config.side ** 2 + 1
  ids, mask = prompts([[2, (IMAGE_TOKEN, single), 3, (IMAGE_TOKEN, single), 4]], seed=0)
  pixels = np.random.default_rng(0).standard_normal((2, 1, 32, 32, 3)).astype(np.float32)
  return ids, mask, pixels


@pytest.mark.parametrize('tied', [False, True], ids=['untied', 'tied'])
def test_round_trip_through_transformers(tmp_path, tied):
  reference = save_llava(tmp_path / 'src', tied=tied)
  module, params, config = from_pretrained(tmp_path / 'src')
  assert config.text_config.tie_word_embeddings == tied and ('lm_head' in params['language_model']) != tied
  save_pretrained(tmp_path / 'out', module, params)
  names = set(load_file(tmp_path / 'out' / 'model.safetensors'))
  # The released checkpoints' names, which transformers 4.x and 5.x both read.
  assert 'vision_tower.vision_model.encoder.layers.0.self_attn.q_proj.weight' in names
  assert {'image_newline', 'multi_modal_projector.linear_1.weight'} <= names
  assert ('language_model.lm_head.weight' in names) != tied
  reloaded, info = transformers.LlavaOnevisionForConditionalGeneration.from_pretrained(
      tmp_path / 'out', output_loading_info=True, attn_implementation='eager')
  assert not any(info.values()), info
  ids, mask, pixels = _multi_image_inputs(config)
  kwargs = dict(pixel_values=pixels, image_sizes=SIZES, batch_num_images=[2])
  expected = llava_logits(reference, ids, mask, **kwargs)
  assert_close_programs(llava_logits(reloaded.eval(), ids, mask, **kwargs), expected)
  logits = jax.jit(lambda p: module.apply({'params': p}, ids, attention_mask=mask, **kwargs).logits)(params)
  assert_close_torch(logits, expected)
  _, again, _ = from_pretrained(tmp_path / 'out')
  assert_same_program(again, params)


def test_reads_transformers_5_in_memory_names(tmp_path):
  """model.language_model.* / model.vision_tower.* (no vision_model.) / lm_head.weight."""
  save_llava(tmp_path)
  _, params, _ = from_pretrained(tmp_path)
  tensors = load_file(tmp_path / 'model.safetensors')
  renamed = {}
  for name, value in tensors.items():
    if name.startswith('language_model.lm_head.'):
      name = name.removeprefix('language_model.')
    elif name.startswith('language_model.model.'):
      name = 'model.language_model.' + name.removeprefix('language_model.model.')
    else:
      name = 'model.' + name.replace('vision_tower.vision_model.', 'vision_tower.')
    renamed[name] = value
  assert 'model.vision_tower.embeddings.patch_embedding.weight' in renamed and 'lm_head.weight' in renamed
  save_file(renamed, tmp_path / 'model.safetensors', metadata={'format': 'pt'})
  _, again, _ = from_pretrained(tmp_path)
  assert_same_program(again, params)


def test_missing_and_unexpected_tensors_are_named(tmp_path):
  save_llava(tmp_path)
  tensors = load_file(tmp_path / 'model.safetensors')
  del tensors['image_newline'], tensors['multi_modal_projector.linear_2.bias']
  tensors['multi_modal_projector.linear_3.weight'] = np.zeros((2, 2), np.float32)
  save_file(tensors, tmp_path / 'model.safetensors', metadata={'format': 'pt'})
  with pytest.raises(ValueError, match=r'Missing tensors: image_newline, multi_modal_projector\.linear_2\.bias\. '
                                       r'Unexpected tensors: multi_modal_projector\.linear_3\.weight'):
    from_pretrained(tmp_path)


def test_projector_without_bias_and_wrong_shapes(tmp_path):
  save_llava(tmp_path)
  config = json.loads((tmp_path / 'config.json').read_text())
  (tmp_path / 'config.json').write_text(json.dumps({**config, 'multimodal_projector_bias': False}))
  with pytest.raises(ValueError, match=r'Unexpected tensors: multi_modal_projector\.linear_1\.bias, '
                                       r'multi_modal_projector\.linear_2\.bias'):
    from_pretrained(tmp_path)
  text = {**config['text_config'], 'hidden_size': 32}
  (tmp_path / 'config.json').write_text(json.dumps({**config, 'text_config': text}))
  with pytest.raises(ValueError, match=r'tensor image_newline has shape \(64,\); the config needs \(32,\)'):
    from_pretrained(tmp_path)


def test_sharded_load_matches_one_device(tmp_path):
  """from_pretrained onto a (fsdp=4, tensor=2) mesh of the 8 CPU devices; logits equal the 1-device ones."""
  save_llava(tmp_path)
  module, params, config = from_pretrained(tmp_path)
  mesh = jax.make_mesh((4, 2), ('fsdp', 'tensor'), axis_types=(AxisType.Auto,) * 2)
  _, sharded, _ = from_pretrained(tmp_path, mesh=mesh, rules=RULES)
  assert sharded['multi_modal_projector']['linear_1']['kernel'].sharding.spec == P('fsdp', 'tensor')
  assert sharded['multi_modal_projector']['linear_2']['kernel'].sharding.spec == P('tensor', 'fsdp')
  assert sharded['image_newline'].sharding.spec == P('fsdp')
  assert sharded['vision_tower']['layers_0']['mlp']['fc1']['kernel'].sharding.spec == P('fsdp', 'tensor')
  assert_same_program(sharded, params)
  ids, mask, pixels = _multi_image_inputs(config)
  apply = jax.jit(lambda p, ids, mask, pixels: module.apply(
      {'params': p}, ids, attention_mask=mask, pixel_values=pixels, image_sizes=SIZES, batch_num_images=[2]).logits)
  expected = apply(params, ids, mask, pixels)
  with jax.set_mesh(mesh), nn.logical_axis_rules(tuple(RULES.items())):
    logits = apply(sharded, ids, mask, pixels)
  assert_close_programs(logits, expected)
