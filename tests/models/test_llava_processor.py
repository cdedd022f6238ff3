"""LlavaOnevisionProcessor vs transformers' LlavaOnevisionProcessor (PIL image backend): input_ids, token counts and
pixel values; processor -> mmjax model vs HF processor -> HF model; videos; chat template; errors.

transformers' video processor needs torchvision, which is not installed: the HF processor is built without one,
video token counts are checked against its token-count logic (`_get_num_multimodal_tokens`) and video pixels
against an independent PIL + NumPy computation.
"""
import json

import jax
import numpy as np
import pytest
import transformers
from PIL import Image

from mmjax.data.chat_masking import render_chat, render_chatml
from mmjax.models import anyres
from mmjax.models.llava_image_processing import ImageProcessingConfig
from mmjax.models.llava_onevision import LlavaOnevisionProcessor
from mmjax.weights import from_pretrained
from tests.hf_models import (
  llava_logits,
  save_llava_folder,
)
from tests.numerics import assert_close_programs, assert_close_torch


def _hf_processor(image_processor, tokenizer, num_image_tokens: int) -> transformers.LlavaOnevisionProcessor:
  """transformers' processor without a video processor (torchvision is absent): its class check is skipped."""
  with pytest.MonkeyPatch.context() as patch:
    check = transformers.LlavaOnevisionProcessor.check_argument_for_proper_class
    patch.setattr(transformers.LlavaOnevisionProcessor, 'check_argument_for_proper_class',
                  lambda self, name, arg: None if arg is None else check(self, name, arg))
    return transformers.LlavaOnevisionProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                                video_processor=None, num_image_tokens=num_image_tokens,
                                                vision_feature_select_strategy='full')


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
  """(directory, our processor, HF processor, HF model): one tiny checkpoint with tokenizer and preprocessor."""
  directory = tmp_path_factory.mktemp('llava_processor')
  model = save_llava_folder(directory)
  hf_tokenizer = transformers.PreTrainedTokenizerFast.from_pretrained(directory)
  image_processor = transformers.LlavaOnevisionImageProcessorPil.from_pretrained(directory)
  ours = LlavaOnevisionProcessor.from_pretrained(directory)
  return directory, ours, _hf_processor(image_processor, hf_tokenizer, 16), model


def _image(height: int, width: int, seed: int, mode: str = 'RGB') -> Image.Image:
  rng = np.random.default_rng(seed)
  ramp = np.linspace(0, 200, width)[None, :, None] + np.linspace(0, 55, height)[:, None, None]
  pixels = np.clip(ramp + rng.integers(0, 40, (height, width, 4)), 0, 255).astype(np.uint8)
  return Image.fromarray(pixels, 'RGBA').convert(mode)


def _compare(ours: dict, theirs, keys=('input_ids', 'attention_mask', 'image_sizes', 'batch_num_images')):
  for key in keys:
    np.testing.assert_array_equal(ours[key], theirs[key], err_msg=key)
  assert_close_torch(ours['pixel_values'], np.moveaxis(theirs['pixel_values'], 2, -1))


def test_single_images_match_transformers(setup):
  """Four aspect ratios (the last through the max-9 reduction), an RGBA and a greyscale image, left padding."""
  _, ours, theirs, _ = setup
  sizes = [(32, 32), (40, 90), (130, 40), (100, 128), (45, 60), (70, 33)]
  images = [_image(h, w, i, mode) for i, ((h, w), mode) in enumerate(zip(sizes, ['RGB'] * 4 + ['RGBA', 'L']))]
  texts = [f'<|im_start|>user\n<image>\nWhat is shown in this image?{"!" * i}<|im_end|>' for i in range(6)]
  out = ours(texts, images)
  expected = theirs(text=texts, images=images, padding=True, padding_side='left', return_tensors='np')
  _compare(out, expected)
  counts = (out['input_ids'] == ours.image_token_id).sum(1)
  np.testing.assert_array_equal(counts, [ours.num_image_tokens(s) for s in sizes])
  assert counts[3] == 16 + 10 * 14  # 100 x 128: the unpadded 12 x 16 map is reduced to 10 x 13 (+ newlines)
  assert out['pixel_values'].shape == (6, 17, 32, 32, 3) and out['pixel_values'].dtype == np.float32


def test_multi_image_prompt_matches_transformers(setup):
  _, ours, theirs, _ = setup
  images = [[_image(30, 50, 0), _image(64, 32, 1), _image(20, 20, 2)], [_image(40, 90, 3)]]
  texts = ['<image> then <image>, then <image>: which has more circles?', 'Describe <image> briefly.']
  out = ours(texts, images, padding_side='right')
  expected = theirs(text=texts, images=images, padding=True, padding_side='right', return_tensors='np')
  _compare(out, expected)
  np.testing.assert_array_equal((out['input_ids'] == ours.image_token_id).sum(1), [3 * 17, 94])
  # A flat image list is assigned to the prompts by their placeholders: the same inputs.
  flat = ours(texts, [im for sample in images for im in sample], padding_side='right')
  np.testing.assert_array_equal(flat['input_ids'], out['input_ids'])


def test_processor_inputs_give_transformers_logits(setup):
  """End to end: our processor + mmjax model == transformers' processor + transformers' model."""
  directory, ours, theirs, model = setup
  module, params, _ = from_pretrained(directory)
  images = [[_image(100, 128, 4)], [_image(30, 50, 5), _image(50, 30, 6)]]
  texts = [ours.apply_chat_template([{'role': 'user', 'content': [{'type': 'image'}, {'type': 'text', 'text': q}]}],
                                    add_generation_prompt=True) for q in ('What is shown?', 'Compare.')]
  texts[1] = texts[1].replace('<image>\n', '<image>\n<image>\n')
  out = ours(texts, images)
  expected = theirs(text=texts, images=images, padding=True, padding_side='left', return_tensors='np')
  layout = dict(image_sizes=out['image_sizes'], batch_num_images=out['batch_num_images'])
  logits = jax.jit(lambda p, ids, mask, pixels: module.apply(
      {'params': p}, ids, attention_mask=mask, pixel_values=pixels, **layout).logits)(
          params, out['input_ids'], out['attention_mask'], out['pixel_values'])
  reference = llava_logits(model, expected['input_ids'], expected['attention_mask'],
                           np.moveaxis(expected['pixel_values'], 2, -1), expected['image_sizes'],
                           expected['batch_num_images'])
  real = out['attention_mask'].astype(bool)
  assert_close_torch(np.asarray(logits)[real], reference[real])


def test_video_tokens_and_pixels(setup):
  _, ours, theirs, _ = setup
  rng = np.random.default_rng(7)
  at_size = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
  other = rng.integers(0, 256, (3, 48, 40, 3), dtype=np.uint8)
  out = ours(['<video> what happens?', 'and in <video>?'], videos=[at_size, list(other)])
  expected_tokens = theirs._get_num_multimodal_tokens(video_sizes=[(3, 32, 32)])['num_video_tokens'][0]
  assert expected_tokens == ours.num_video_tokens(3) == 3 * 2 * 2 + 1
  np.testing.assert_array_equal((out['input_ids'] == ours.video_token_id).sum(1), [expected_tokens] * 2)
  normalise = lambda x: (np.asarray(x, np.float64) / 255 - 0.5) / 0.5  # noqa: E731
  resized = [np.asarray(Image.fromarray(f).resize((32, 32), Image.Resampling.BICUBIC)) for f in other]
  assert out['pixel_values_videos'].shape == (2, 3, 32, 32, 3)
  assert_close_programs(out['pixel_values_videos'][0], normalise(at_size))
  assert_close_programs(out['pixel_values_videos'][1], normalise(np.stack(resized)))
  # 32 frames of the real tower (27 x 27 cells) -> 32 * 196 + 1.
  assert anyres.video_tokens(32, 27) == 6273


def test_token_counts_match_transformers_at_full_scale(setup):
  """The released checkpoints' layout (384 px crops, 27 x 27 cells, 36 pinpoints) over many image sizes.

  1375 x 1500 and 1750 x 1500 unpad to 98.99999999999999 and 125.99999999999999 cells, where HF's rounding to 7
  decimals and plain int() give different paddings.
  """
  _, _, theirs, _ = setup
  hf = _hf_processor(transformers.LlavaOnevisionImageProcessorPil(), theirs.tokenizer, 729)
  config = ImageProcessingConfig()
  count = lambda h, w: anyres.anyres_layout((h, w), config.grid_pinpoints, 384, 27, 9).num_tokens  # noqa: E731
  # The worked examples of the spec (section 2).
  assert [count(*s) for s in [(384, 384), (899, 1024), (720, 1280), (1080, 1920), (2304, 2304)]] == [
      1485, 6551, 5967, 7269, 7371]
  sizes = np.random.default_rng(8).integers(1, 4000, (300, 2)).tolist() + [[1375, 1500], [1750, 1500], [1, 4000]]
  assert [count(h, w) for h, w in sizes] == [hf._get_number_of_features(h, w, 384, 384) for h, w in sizes]
  assert anyres.single_crop_tokens(27) == 730


def test_chat_template_is_the_training_rendering(setup):
  _, ours, _, _ = setup
  messages = [{'role': 'user', 'content': [{'type': 'text', 'text': 'Compare them.'}, {'type': 'image'},
                                           {'type': 'image'}]},
              {'role': 'assistant', 'content': 'The left one.'}, {'role': 'user', 'content': '<video>\nAnd this?'}]
  conversation = [{'from': 'human', 'value': '<image>\n<image>\nCompare them.'},
                  {'from': 'gpt', 'value': 'The left one.'}, {'from': 'human', 'value': '<video>\nAnd this?'}]
  text = ours.apply_chat_template(messages, add_generation_prompt=True)
  assert text == render_chatml(conversation, add_generation_prompt=True)
  assert text.startswith('<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<image>\n')
  system = ours.apply_chat_template([{'role': 'system', 'content': 'Be brief.'}, *messages[:1]])
  assert system == render_chatml([{'from': 'system', 'value': 'Be brief.'}, conversation[0]])
  ids = ours.tokenizer.encode(text).ids
  assert ours.decode(ids, skip_special_tokens=False) == text
  llama3 = ours.apply_chat_template(messages, add_generation_prompt=True, template='llama3')
  assert llama3 == render_chat(conversation, template='llama3', add_generation_prompt=True)
  assert llama3.startswith('<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n<image>\n<image>\n')


def test_errors(setup, tmp_path):
  directory, ours, _, _ = setup
  image = _image(20, 30, 0)
  with pytest.raises(ValueError, match='the text holds 2 <image> placeholders but 1 images were given'):
    ours('<image> and <image>', [image])
  with pytest.raises(ValueError, match='the text holds 0 <video> placeholders but 1 videos were given'):
    ours('<image>', [image], videos=[np.zeros((2, 8, 8, 3), np.uint8)])
  with pytest.raises(ValueError, match=r'the prompts hold \[2, 1\] <image> placeholders, the per-prompt image '
                                       r'lists hold \[1, 2\]'):
    ours(['<image><image>', '<image>'], [[image], [image, image]])
  corrupt = tmp_path / 'corrupt.png'
  corrupt.write_bytes(b'\x89PNG\r\n\x1a\nnot really a png')
  with pytest.raises(ValueError, match=f'cannot read image file {corrupt}'):
    ours('<image>', [corrupt])
  with pytest.raises(ValueError, match=r'image arrays must be uint8 \[H, W, 3\]'):
    ours('<image>', [np.zeros((3, 8, 8), np.float32)])
  with pytest.raises(ValueError, match='videos of one batch need the same number of frames'):
    ours(['<video>', '<video>'], videos=[np.zeros((2, 8, 8, 3), np.uint8), np.zeros((3, 8, 8, 3), np.uint8)])
  no_pad = LlavaOnevisionProcessor(ours.tokenizer, ours.image_config, side=4, max_crops=9,
                                   image_token_id=ours.image_token_id, video_token_id=ours.video_token_id)
  with pytest.raises(ValueError, match='no pad token'):
    no_pad(['a', 'a longer prompt'])
  with pytest.raises(ValueError, match='the tokenizer maps <image> to'):
    LlavaOnevisionProcessor(ours.tokenizer, ours.image_config, side=4, max_crops=9, image_token_id=1,
                            video_token_id=ours.video_token_id)


def test_from_pretrained_errors(setup, tmp_path):
  directory, _, _, _ = setup
  with pytest.raises(FileNotFoundError, match='config.json does not exist'):
    LlavaOnevisionProcessor.from_pretrained(tmp_path)
  config = json.loads((directory / 'config.json').read_text())
  (tmp_path / 'config.json').write_text(json.dumps({**config, 'model_type': 'llava_next'}))
  with pytest.raises(ValueError, match="model_type 'llava_next' is not 'llava_onevision'"):
    LlavaOnevisionProcessor.from_pretrained(tmp_path)
  (tmp_path / 'config.json').write_text(json.dumps(config))
  preprocessor = json.loads((directory / 'preprocessor_config.json').read_text())
  (tmp_path / 'preprocessor_config.json').write_text(json.dumps({**preprocessor, 'do_normalize': False}))
  with pytest.raises(ValueError, match='unsupported image processing settings: do_normalize=false'):
    LlavaOnevisionProcessor.from_pretrained(tmp_path)
  (tmp_path / 'preprocessor_config.json').write_text(json.dumps(preprocessor))
  with pytest.raises(FileNotFoundError, match='tokenizer.json does not exist'):
    LlavaOnevisionProcessor.from_pretrained(tmp_path)
