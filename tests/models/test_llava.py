"""LLaVA over any tower and decoder: a CLIP + Llama LLaVA-1.5-style checkpoint against transformers'
LlavaForConditionalGeneration (logits with images and padding, the HF round trip), the training forward (taps of the
`pad` layout) equal to the inference one, and the registries."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from mmjax.generate import LlavaAdapter, as_adapter, generate
from mmjax.models import visual_taps
from mmjax.models.clip import CLIPVisionConfig
from mmjax.models.llama import LlamaConfig
from mmjax.models.llava import (
  LlavaConfig,
  LlavaForConditionalGeneration,
  logits_fn,
)
from mmjax.models.llava_image_processing import ImageProcessingConfig, square_crop
from mmjax.weights import from_pretrained, save_pretrained
from tests.hf_models import CLIP_VISION, LLAVA_IMAGE_TOKEN, save_llava_clip_llama
from tests.numerics import assert_close_programs, assert_close_torch

CLIP_SIZES = {k: CLIP_VISION[k] for k in ('hidden_size', 'intermediate_size', 'num_hidden_layers',
                                        'num_attention_heads', 'image_size', 'patch_size')}
TOKENS = 16  # per image: (32 / 8)^2 patch tokens, the CLS token dropped


@pytest.fixture(scope='module')
def llava(tmp_path_factory):
  directory = tmp_path_factory.mktemp('llava')
  reference = save_llava_clip_llama(directory)
  module, params, config = from_pretrained(directory)
  return directory, reference, module, params, config


def _prompts(seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Two left-padded rows, each with one image: ids [2, S] and mask."""
  rng = np.random.default_rng(seed)
  rows = [np.concatenate([rng.integers(0, 120, 3), np.full(TOKENS, LLAVA_IMAGE_TOKEN), rng.integers(0, 120, n)])
          for n in (6, 2)]
  length = max(map(len, rows))
  ids, mask = np.zeros((2, length), np.int64), np.zeros((2, length), np.int64)
  for i, row in enumerate(rows):
    ids[i, length - len(row):], mask[i, length - len(row):] = row, 1
  return ids, mask


def _hf_logits(model, ids, mask, pixels):
  with torch.no_grad():
    return model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                 position_ids=torch.from_numpy(np.maximum(mask.cumsum(-1) - 1, 0)),
                 pixel_values=torch.from_numpy(np.moveaxis(pixels, -1, 1).copy())).logits.numpy()


def test_the_checkpoint_reads_as_clip_and_llama(llava):
  _, _, module, params, config = llava
  assert type(module) is LlavaForConditionalGeneration and isinstance(config, LlavaConfig)
  assert isinstance(config.vision_config, CLIPVisionConfig) and isinstance(config.text_config, LlamaConfig)
  assert config.vision_feature_layer == -2 and config.vision_feature_select_strategy == 'default'
  assert config.tokens_per_crop == TOKENS and 'image_newline' not in params
  assert 'class_embedding' in params['vision_tower'] and 'bias' not in params['language_model']['layers_0'][
      'self_attn']['q_proj']


def test_logits_match_transformers(llava):
  _, reference, module, params, _ = llava
  ids, mask = _prompts(0)
  pixels = np.random.default_rng(0).standard_normal((2, 32, 32, 3)).astype(np.float32)
  forward = jax.jit(lambda p, i, m, x: module.apply({'params': p}, i, attention_mask=m, pixel_values=x).logits)
  logits = forward(params, ids, mask, pixels)
  expected = _hf_logits(reference, ids, mask, pixels)
  real = mask.astype(bool)
  assert_close_torch(np.asarray(logits)[real], expected[real])
  # The images matter: other pixels give other logits after the image tokens (the same program, not op by op).
  other = forward(params, ids, mask, pixels[::-1])
  assert not np.allclose(np.asarray(other)[real], expected[real], atol=1e-3)


def test_the_training_forward_equals_the_inference_forward(llava):
  """LLaVA-1.5's `pad` layout as taps: one crop per row, its cells copied; logits equal `embed`'s (padding as
  segment ids through the decoder)."""
  _, _, module, params, config = llava
  ids, mask = _prompts(1)
  pixels = np.random.default_rng(1).standard_normal((2, 1, 32, 32, 3)).astype(np.float32)
  index, weight = np.zeros((*ids.shape, visual_taps.TAPS), np.int32), np.zeros((*ids.shape, 4), np.float32)
  for row in range(2):
    where = np.flatnonzero(ids[row] == LLAVA_IMAGE_TOKEN)
    index[row, where], weight[row, where] = visual_taps.flat_taps(0, config.side)
  batch = dict(input_ids=jnp.asarray(ids), attention_mask=jnp.asarray(mask), pixel_values=jnp.asarray(pixels),
               tap_index=jnp.asarray(index), tap_weight=jnp.asarray(weight))
  trained = jax.jit(logits_fn(module))(params, batch)
  inferred = jax.jit(lambda p, i, m, x: module.apply({'params': p}, i, attention_mask=m, pixel_values=x).logits)(
      params, ids, mask, pixels[:, 0])  # jitted: one compile instead of one per operation
  real = mask.astype(bool)
  assert_close_programs(np.asarray(trained)[real], np.asarray(inferred)[real])


def test_round_trip_reloads_in_transformers(llava, tmp_path):
  directory, reference, module, params, _ = llava
  save_pretrained(tmp_path, module, params)
  reloaded = transformers.AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
  assert type(reloaded) is type(reference)
  original = reference.state_dict()
  for key, value in reloaded.state_dict().items():
    assert torch.equal(value, original[key]), key


def test_pad_layout_pads_to_a_square_in_the_mean_colour():
  config = ImageProcessingConfig(crop_size=8, image_mean=(0.48145466, 0.4578275, 0.40821073))
  image = np.full((4, 8, 3), 7, np.uint8)
  crop = square_crop(image, dataclasses.replace(config, resample=0))[0]  # nearest: the pixels stay exact
  background = [int(m * 255) for m in config.image_mean]
  assert crop.shape == (8, 8, 3)
  assert (crop[:2] == background).all() and (crop[6:] == background).all() and (crop[2:6] == 7).all()


def test_unregistered_components_are_named():
  text = LlamaConfig(vocab_size=8, hidden_size=8, intermediate_size=8, num_hidden_layers=1, num_attention_heads=2,
                     num_key_value_heads=2)
  with pytest.raises(ValueError, match='no vision tower is registered for LlamaConfig'):
    LlavaConfig(vision_config=text, text_config=text, vision_feature_layer=-1)
  with pytest.raises(ValueError, match="unsupported decoder model_type 'mistral'"):
    LlavaConfig.from_hf_dict({'vision_config': CLIPVisionConfig(**CLIP_SIZES).to_hf_dict(),
                              'text_config': {'model_type': 'mistral'}})


def test_greedy_generation_matches_transformers(llava):
  """The engine's LLaVA adapter (one crop per image) decodes as transformers' generate, prompt by prompt."""
  _, reference, module, params, _ = llava
  assert as_adapter(module) == LlavaAdapter(module)
  ids, mask = _prompts(2)
  pixels = np.random.default_rng(2).standard_normal((2, 32, 32, 3)).astype(np.float32)
  prompts = [row[m.astype(bool)].tolist() for row, m in zip(ids, mask)]
  completions = generate(module, params, prompts, max_new_tokens=8, pixel_values=pixels)
  for row, (completion,) in enumerate(completions):
    real = mask[row].astype(bool)
    with torch.no_grad():
      out = reference.generate(input_ids=torch.from_numpy(ids[row:row + 1, real]),
                               pixel_values=torch.from_numpy(np.moveaxis(pixels[row:row + 1], -1, 1).copy()),
                               max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=0)
    assert completion.tokens == out[0, int(real.sum()):].tolist(), row
  with pytest.raises(ValueError, match='image tokens'):
    generate(module, params, prompts, max_new_tokens=2, pixel_values=pixels[:1])
