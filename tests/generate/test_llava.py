"""LLaVA-OneVision through the generation engine: processor inputs for the prompts taken together, greedy decoding
and scores against transformers, batch invariance with images, and clear errors for images that do not fit."""
import numpy as np
import pytest
import torch
import transformers

from mmjax.generate import LlavaOnevisionAdapter, as_adapter, generate, score
from mmjax.models.llava_onevision import LlavaOnevisionProcessor
from mmjax.weights import from_pretrained
from tests.hf_models import WIDE, llava_logits, save_llava_folder
from tests.models.test_llava_processor import _image
from tests.numerics import assert_close_torch

QUESTION = '<|im_start|>user\n{}What is shown in this image?<|im_end|>\n<|im_start|>assistant\n'
ONE = QUESTION.format('<image>\n')
TWO = QUESTION.format('<image>\n<image>\nCompare. ')
TEXT_ONLY = QUESTION.format('')
NEW_TOKENS = 20


def save_tiny_llava(directory) -> transformers.LlavaOnevisionForConditionalGeneration:
  """The tiny random LLaVA-OneVision folder of tests.hf_models with logits spread by WIDE; returns the model."""
  return save_llava_folder(directory, **WIDE)


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
  """(transformers model, mmjax module, params, our processor, {name: (text, images)})."""
  directory = tmp_path_factory.mktemp('llava_generate')
  hf = save_tiny_llava(directory)
  module, params, _ = from_pretrained(directory)
  cases = {'one': (ONE, [_image(40, 90, 0)]), 'two': (TWO, [_image(30, 50, 1), _image(64, 32, 2)])}
  return hf, module, params, LlavaOnevisionProcessor.from_pretrained(directory), cases


def _ids(inputs: dict) -> list[list[int]]:
  """The processor's left-padded rows without their padding."""
  return [row[mask.astype(bool)].tolist() for row, mask in zip(inputs['input_ids'], inputs['attention_mask'])]


def _images(inputs: dict) -> dict:
  return {k: inputs[k] for k in ('pixel_values', 'image_sizes', 'batch_num_images') if k in inputs}


def _hf_greedy(hf, inputs: dict) -> list[int]:
  """transformers' greedy continuation of a one-prompt processor output (pixels moved to NCHW)."""
  with torch.no_grad():
    out = hf.generate(input_ids=torch.from_numpy(inputs['input_ids'].astype(np.int64)),
                      attention_mask=torch.from_numpy(inputs['attention_mask'].astype(np.int64)),
                      pixel_values=torch.from_numpy(np.moveaxis(inputs['pixel_values'], -1, 2).copy()),
                      image_sizes=torch.from_numpy(inputs['image_sizes']),
                      batch_num_images=torch.from_numpy(inputs['batch_num_images']),
                      max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=0)
  return out[0, inputs['input_ids'].shape[1]:].tolist()


@pytest.fixture(scope='module')
def reference(setup):
  """{case: transformers' greedy tokens} for each prompt alone."""
  hf, _, _, processor, cases = setup
  return {name: _hf_greedy(hf, processor([text], images)) for name, (text, images) in cases.items()}


def test_the_module_gets_the_llava_adapter(setup):
  _, module, _, _, _ = setup
  assert as_adapter(module) == LlavaOnevisionAdapter(module)


@pytest.mark.parametrize('case', ['one', 'two'])
def test_greedy_with_images_matches_transformers(setup, reference, case):
  _, module, params, processor, cases = setup
  text, images = cases[case]
  inputs = processor([text], images)
  want = reference[case]
  assert len(want) == NEW_TOKENS and len(set(want)) >= 8, 'the reference model must not repeat a few tokens'
  ((completion,),) = generate(module, params, _ids(inputs), max_new_tokens=NEW_TOKENS, **_images(inputs))
  assert completion.tokens == want
  assert completion.finish_reason == 'length'


def test_a_batch_with_images_equals_its_prompts_alone(setup, reference):
  """Prompts of different lengths with different images (and one without): 3 prompts in 4 batch rows, the images
  of all prompts in prompt order as the processor returns them for the list."""
  _, module, params, processor, cases = setup
  texts = [cases['two'][0], TEXT_ONLY, cases['one'][0]]
  inputs = processor(texts, cases['two'][1] + cases['one'][1])
  np.testing.assert_array_equal(inputs['batch_num_images'], [2, 0, 1])
  got = generate(module, params, _ids(inputs), max_new_tokens=NEW_TOKENS, **_images(inputs))
  assert got[0][0].tokens == reference['two']
  assert got[2][0].tokens == reference['one']
  (alone,) = generate(module, params, _ids(processor([TEXT_ONLY])), max_new_tokens=NEW_TOKENS)[0]
  assert got[1][0].tokens == alone.tokens


def test_score_after_images_matches_transformers(setup, reference):
  hf, module, params, processor, cases = setup
  texts = [cases['one'][0], cases['two'][0]]
  inputs = processor(texts, cases['one'][1] + cases['two'][1])
  rng = np.random.default_rng(0)
  continuations = [reference['one'][:9], [int(t) for t in rng.integers(0, 200, 14)]]
  got = score(module, params, _ids(inputs), continuations, **_images(inputs))
  for i, (prompt, continuation) in enumerate(zip(_ids(inputs), continuations)):
    ids = np.asarray([prompt + continuation])
    one = [0, 1] if i == 0 else [1, 3]
    want = llava_logits(hf, ids, np.ones_like(ids), inputs['pixel_values'][one[0]:one[1]],
                        inputs['image_sizes'][one[0]:one[1]], inputs['batch_num_images'][i:i + 1])[0]
    want = torch.log_softmax(torch.from_numpy(want), -1).numpy()
    expected = want[np.arange(len(prompt) - 1, len(prompt) + len(continuation) - 1), continuation]
    assert got[i].shape == (len(continuation),)
    assert_close_torch(got[i], expected)


def test_images_that_do_not_fit_the_prompts_raise(setup):
  _, module, params, processor, cases = setup
  text, images = cases['two']
  inputs = processor([text], images)
  prompt = _ids(inputs)
  only_first = dict(pixel_values=inputs['pixel_values'][:1], image_sizes=inputs['image_sizes'][:1])
  with pytest.raises(ValueError, match=r'the prompts hold 34 image tokens \(\[34\] per prompt\), the 1 images'):
    generate(module, params, prompt, max_new_tokens=4, **only_first)
  with pytest.raises(ValueError, match='batch_num_images'):
    generate(module, params, prompt, max_new_tokens=4, **{**_images(inputs), 'batch_num_images': [1, 1]})
  with pytest.raises(ValueError, match='the prompts hold 34 image tokens .* the 0 images give 0 features'):
    score(module, params, prompt, [[1, 2]])
  # Images out of prompt order: each prompt's placeholders must be the tokens of its own images.
  swapped = processor([ONE, TWO], cases['one'][1] + images)
  order = [1, 2, 0]
  with pytest.raises(ValueError, match='prompt 0 holds 94 image tokens, its 2 images'):
    generate(module, params, _ids(swapped), max_new_tokens=4, pixel_values=swapped['pixel_values'][order],
             image_sizes=swapped['image_sizes'][order], batch_num_images=[2, 1])
  # truncate='left' cutting through the first image's tokens.
  keep = len(prompt[0]) - 20
  with pytest.raises(ValueError, match='do not cut prompts through them'):
    generate(module, params, prompt, max_new_tokens=as_adapter(module).max_context - keep, truncate='left',
             **_images(inputs))
