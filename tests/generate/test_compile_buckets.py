"""Compile counts that do not grow with the data: LLaVA-OneVision image counts and sizes are bucketed data, not
static arguments, and the packing table that replaces them equals the model's own image features."""
import numpy as np
import pytest

from mmjax.generate import as_adapter, compile_counts, generate, visual_buckets
from mmjax.generate.batching import bucket
from mmjax.models.llava_onevision import LlavaOnevisionProcessor
from mmjax.weights import from_pretrained
from tests.generate.test_llava import QUESTION, _ids, _images, save_tiny_llava
from tests.models.test_llava_processor import _image
from tests.numerics import assert_close_programs

# (height, width) of images: small ones, wide and tall ones, and large ones whose AnyRes map is reduced bilinearly.
SIZES = [(40, 90), (128, 128), (128, 40), (30, 120), (100, 64), (70, 70), (33, 97), (120, 100)]


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
  directory = tmp_path_factory.mktemp('llava_buckets')
  save_tiny_llava(directory)
  module, params, _ = from_pretrained(directory)
  return module, params, LlavaOnevisionProcessor.from_pretrained(directory)


@pytest.mark.parametrize('per_prompt', [[1] * len(SIZES), [3, 2, 1, 2]])
def test_the_packing_table_equals_the_model_image_features(setup, per_prompt):
  module, params, processor = setup
  cfg = module.config
  assert any(cfg.image_layout(s).reduced is not None for s in SIZES), 'no size exercises the bilinear reduction'
  texts, images, first = [], [], 0
  for n in per_prompt:
    texts.append(QUESTION.format('<image>\n' * n))
    images.append([_image(*SIZES[first + k], first + k) for k in range(n)])
    first += n
  inputs = processor(texts, images)
  want = module.apply({'params': params}, inputs['pixel_values'], tuple(map(tuple, inputs['image_sizes'])),
                      tuple(inputs['batch_num_images']), method='image_features')
  layouts = [None if n > 1 else cfg.image_layout(tuple(int(x) for x in inputs['image_sizes'][i]))
             for i, n in enumerate(n for n in per_prompt for _ in range(n))]
  packed = visual_buckets.pack_images(inputs['pixel_values'], layouts, cfg.side)
  features = module.apply({'params': params}, packed['crops'], method='crop_features')
  got = visual_buckets.image_tokens(features, params['image_newline'], packed['taps'], packed['tap_weights'])
  assert got.shape[0] >= want.shape[0] and got.shape[0] == bucket(want.shape[0])
  assert_close_programs(np.asarray(got[:want.shape[0]]), np.asarray(want))
  assert not np.any(packed['tap_weights'][want.shape[0]:]), 'padding tokens must be zero'


def test_a_benchmark_mix_of_image_counts_and_sizes_compiles_a_handful(setup):
  """Eight batches of three prompts with 1-3 images each, every batch with its own image sizes: the static-argument
  engine compiled a prefill per batch; now prefill compiles once per (prompt length, crops, visual tokens) bucket."""
  module, params, processor = setup
  rng = np.random.default_rng(0)
  before = compile_counts()
  size_sets, buckets = set(), set()
  for batch in range(8):
    counts = [int(c) for c in rng.integers(1, 4, 3)]
    sizes = [[tuple(int(x) for x in rng.integers(24, 72, 2)) for _ in range(n)] for n in counts]
    texts = [QUESTION.format('<image>\n' * n) for n in counts]
    images = [[_image(h, w, batch * 10 + k) for k, (h, w) in enumerate(s)] for s in sizes]
    inputs = processor(texts, images)
    ids = _ids(inputs)
    size_sets.add(tuple(map(tuple, inputs['image_sizes'])))
    packed = as_adapter(module).prepare_inputs([np.asarray(i) for i in ids], _images(inputs))
    buckets.add((bucket(max(map(len, ids))), packed['crops'].shape, packed['taps'].shape))
    result = generate(module, params, ids, max_new_tokens=2, **_images(inputs))
    assert [len(c.tokens) for (c,) in result] == [2, 2, 2]
  new = {name: count - before.get(name, 0) for name, count in compile_counts().items()}
  assert len(size_sets) == 8
  assert new['prefill'] == len(buckets) <= 4, (new, buckets)
  assert all(count <= 4 for count in new.values()), new
