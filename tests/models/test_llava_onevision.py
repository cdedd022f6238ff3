"""LlavaOnevisionForConditionalGeneration vs transformers on a tiny random checkpoint: AnyRes images of several
aspect ratios (one through the max-9 reduction), multi-image and video prompts, packing, KV cache, jit, errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from mmjax.models import anyres, init_cache
from mmjax.models.llava_onevision import LlavaOnevisionConfig, merge_features
from mmjax.weights import from_pretrained
from tests.hf_models import (
  IMAGE_TOKEN,
  LLAVA_TEXT,
  LLAVA_VISION,
  VIDEO_TOKEN,
  llava_logits,
  save_llava,
)
from tests.numerics import assert_close_programs, assert_close_torch

# (H, W): square, wide, tall, and one whose unpadded 12 x 16 map exceeds 9 crops and is reduced to 10 x 13.
SIZES = [(32, 32), (40, 90), (130, 40), (100, 128)]
# 88 x 110 tiles 3 x 4 crops (12 x 16 cells) and unpads to 110 * 12 / 88 = 14.999999999999998 columns: HF rounds
# to 7 decimals (15, pad 0); plain int() would give 14 (pad 1).
ROUNDING = (88, 110)


def prompts(rows: list[list[int | tuple[int, int]]], seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Left-padded ids [B, S] and mask from rows of text lengths (int) and (placeholder id, count) pairs."""
  rng = np.random.default_rng(seed)
  ids = [np.concatenate([rng.integers(0, 120, part) if isinstance(part, int) else np.full(part[1], part[0])
                         for part in row]) for row in rows]
  length = max(map(len, ids))
  out, mask = np.zeros((len(ids), length), np.int64), np.zeros((len(ids), length), np.int64)
  for i, row in enumerate(ids):
    out[i, length - len(row):], mask[i, length - len(row):] = row, 1
  return out, mask


@pytest.fixture(scope='module')
def llava(tmp_path_factory):
  directory = tmp_path_factory.mktemp('llava')
  reference = save_llava(directory)
  module, params, config = from_pretrained(directory)
  return directory, reference, module, params, config


def _run(module, params, ids, mask, **visual):
  """Logits through jax.jit; the static layout inputs (image_sizes, batch_num_images) are closed over."""
  sizes, counts = visual.pop('image_sizes', None), visual.pop('batch_num_images', None)
  fn = jax.jit(lambda p, i, m, v: module.apply({'params': p}, i, attention_mask=m, image_sizes=sizes,
                                               batch_num_images=counts, **v).logits)
  return np.asarray(fn(params, ids, mask, visual))


def test_config_and_layouts(llava):
  _, _, _, params, config = llava
  assert config.side == 4 and config.max_crops == 9 and config.image_grid_pinpoints[5] == (64, 64)
  assert config.projector_hidden_act == 'gelu' and config.vision_config.hidden_act == 'gelu_pytorch_tanh'
  assert params['image_newline'].shape == (64,)
  assert params['multi_modal_projector']['linear_1']['kernel'].shape == (32, 64)
  layouts = [config.image_layout(s) for s in SIZES]
  assert [layout.grid for layout in layouts] == [(1, 1), (2, 3), (4, 2), (4, 4)]
  assert [layout.reduced for layout in layouts] == [None, None, None, (10, 13)]
  assert layouts[1].rows_kept == (1, 7) and layouts[2].cols_kept == (2, 6) and layouts[3].rows_kept == (2, 14)
  assert [layout.num_tokens for layout in layouts] == [36, 16 + 6 * 13, 16 + 16 * 5, 16 + 10 * 14]


def test_anyres_images_match_transformers(llava):
  _, reference, module, params, config = llava
  sizes = [*SIZES, ROUNDING]
  layouts = [config.image_layout(s) for s in sizes]
  assert layouts[3].reduced is not None  # the max-9 reduction runs for the fourth image
  assert layouts[4].cols_kept == (0, 16)
  ids, mask = prompts([[3, (IMAGE_TOKEN, layout.num_tokens), 5] for layout in layouts], seed=0)
  crops = max(layout.num_crops for layout in layouts)
  pixels = np.random.default_rng(0).standard_normal((len(sizes), crops, 32, 32, 3)).astype(np.float32)
  logits = _run(module, params, ids, mask, pixel_values=pixels, image_sizes=sizes)
  expected = llava_logits(reference, ids, mask, pixels, sizes)
  real = mask.astype(bool)
  assert_close_torch(logits[real], expected[real])


def test_multi_image_prompt_matches_transformers(llava):
  """Row 0 holds three images (one crop + newline each), row 1 one AnyRes image: batch_num_images [3, 1]."""
  _, reference, module, params, config = llava
  sizes = [(30, 50), (64, 32), (32, 32), (40, 90)]
  single = anyres.single_crop_tokens(config.side)
  ids, mask = prompts([[2, (IMAGE_TOKEN, single), 3, (IMAGE_TOKEN, single), (IMAGE_TOKEN, single), 4],
                       [6, (IMAGE_TOKEN, config.image_layout(sizes[3]).num_tokens), 2]], seed=1)
  pixels = np.random.default_rng(1).standard_normal((4, 7, 32, 32, 3)).astype(np.float32)
  logits = _run(module, params, ids, mask, pixel_values=pixels, image_sizes=sizes, batch_num_images=[3, 1])
  expected = llava_logits(reference, ids, mask, pixels, sizes, [3, 1])
  real = mask.astype(bool)
  assert_close_torch(logits[real], expected[real])


def test_video_prompt_matches_transformers(llava):
  """Two 3-frame videos (2 x 2 pooled cells per frame + one newline = 13 tokens); row 0 also has an image."""
  _, reference, module, params, config = llava
  tokens = anyres.video_tokens(3, config.side)
  assert tokens == 3 * 4 + 1
  sizes = [(50, 40)]
  ids, mask = prompts([[2, (IMAGE_TOKEN, config.image_layout(sizes[0]).num_tokens), (VIDEO_TOKEN, tokens), 3],
                       [5, (VIDEO_TOKEN, tokens), 1]], seed=2)
  rng = np.random.default_rng(2)
  videos = rng.standard_normal((2, 3, 32, 32, 3)).astype(np.float32)
  pixels = rng.standard_normal((1, config.image_layout(sizes[0]).num_crops, 32, 32, 3)).astype(np.float32)
  logits = _run(module, params, ids, mask, pixel_values=pixels, image_sizes=sizes, pixel_values_videos=videos)
  expected = llava_logits(reference, ids, mask, pixels, sizes, videos=videos)
  real = mask.astype(bool)
  assert_close_torch(logits[real], expected[real])


def test_packing_matches_transformers(llava):
  """pack_anyres / pack_video against HF's own packing (the reduction and pooling resizes included)."""
  _, reference, _, _, config = llava
  rng = np.random.default_rng(3)
  newline = rng.standard_normal(8).astype(np.float32)
  for size in ((100, 128), (130, 40)):
    layout = config.image_layout(size)
    features = rng.standard_normal((layout.num_crops, 16, 8)).astype(np.float32)
    with torch.no_grad():
      (expected,), _ = reference.model.pack_image_features([torch.from_numpy(features)], torch.tensor([size]),
                                                           torch.from_numpy(newline))
    assert_close_torch(anyres.pack_anyres(jnp.asarray(features), layout, jnp.asarray(newline)), expected.numpy())
  frames = rng.standard_normal((2, 3, 16, 8)).astype(np.float32)
  with torch.no_grad():
    pooled = reference.model.apply_pooling(torch.from_numpy(frames.reshape(6, 16, 8))).numpy().reshape(2, 12, 8)
  packed = anyres.pack_video(jnp.asarray(frames), 4, jnp.asarray(newline))
  assert_close_torch(packed[:, :-1], pooled)
  np.testing.assert_array_equal(packed[:, -1], np.broadcast_to(newline, (2, 8)))


def test_prefill_from_embeds_then_cached_decoding(llava):
  """The generation path: prefill from `embed` (visual features merged), then one cached decode step."""
  _, _, module, params, config = llava
  sizes = [(40, 90)]
  ids, _ = prompts([[2, (IMAGE_TOKEN, config.image_layout(sizes[0]).num_tokens), 4]], seed=4)
  pixels = np.random.default_rng(4).standard_normal((1, 7, 32, 32, 3)).astype(np.float32)
  images = dict(pixel_values=pixels, image_sizes=sizes)
  full = _run(module, params, ids, np.ones_like(ids), **images)
  embeds = jax.jit(lambda p, i: module.apply({'params': p}, i, **images, method='embed'))(params, ids[:, :-1])
  step = jax.jit(lambda p, i, e, c: module.apply({'params': p}, i, inputs_embeds=e, cache=c))
  prefill = step(params, None, embeds, init_cache(config.text_config, 1, ids.shape[1]))
  decoded = step(params, ids[:, -1:], None, prefill.cache)
  assert_close_programs(prefill.logits, full[:, :-1])
  assert_close_programs(decoded.logits[:, 0], full[:, -1])


def test_merge_features_scatters_in_order_and_jits():
  embeds = jnp.zeros((2, 4, 1))
  mask = jnp.asarray([[False, True, True, False], [True, False, False, True]])
  features = jnp.arange(1.0, 5.0)[:, None]
  expected = [[0, 1, 2, 0], [3, 0, 0, 4]]
  np.testing.assert_array_equal(merge_features(embeds, mask, features)[..., 0], expected)
  np.testing.assert_array_equal(jax.jit(merge_features)(embeds, mask, features)[..., 0], expected)


def test_bad_inputs(llava):
  _, _, module, params, config = llava
  layout = config.image_layout((40, 90))
  pixels = np.zeros((1, layout.num_crops, 32, 32, 3), np.float32)
  ids, _ = prompts([[2, (IMAGE_TOKEN, layout.num_tokens + 1)]], seed=5)
  # Traced with abstract parameters: the checks run on the concrete ids and shapes, and nothing is compiled.
  apply = lambda *args, **kwargs: jax.eval_shape(  # noqa: E731
      lambda p: module.apply({'params': p}, *args, **kwargs), params)
  with pytest.raises(ValueError, match='Image features and image tokens do not match: the input has 95 image'):
    apply(ids, pixel_values=pixels, image_sizes=[(40, 90)])
  with pytest.raises(ValueError, match='image_sizes must be concrete'):
    jax.jit(lambda s: module.apply({'params': params}, ids, pixel_values=pixels, image_sizes=s))(
        jnp.asarray([[40, 90]]))
  with pytest.raises(ValueError, match=r'pixel_values must be \[images, crops, 32, 32, 3\] \(channels last\)'):
    apply(ids, pixel_values=pixels.transpose(0, 1, 4, 2, 3), image_sizes=[(40, 90)])
  with pytest.raises(ValueError, match='image_sizes need 17'):
    apply(ids, pixel_values=pixels, image_sizes=[(100, 128)])
  with pytest.raises(ValueError, match=r'batch_num_images \[2\] sums to 2'):
    apply(ids, pixel_values=pixels, image_sizes=[(40, 90)], batch_num_images=[2])
  with pytest.raises(ValueError, match='inputs_embeds already holds'):
    apply(ids, inputs_embeds=jnp.zeros((1, 2, 64)))


def test_config_errors():
  config = {'vision_config': {**LLAVA_VISION, 'model_type': 'siglip_vision_model'},
            'text_config': {**LLAVA_TEXT, 'model_type': 'qwen2'}}
  assert LlavaOnevisionConfig.from_hf_dict(config).image_token_index == 151646
  with pytest.raises(ValueError, match='lacks'):
    LlavaOnevisionConfig.from_hf_dict({'text_config': config['text_config']})
  assert LlavaOnevisionConfig.from_hf_dict({**config, 'vision_feature_select_strategy': 'default'}
                                           ).vision_feature_select_strategy == 'default'  # drops the first token
  with pytest.raises(ValueError, match="must be 'default' .* or 'full'"):
    LlavaOnevisionConfig.from_hf_dict({**config, 'vision_feature_select_strategy': 'cls_patch'})
  with pytest.raises(ValueError, match="unsupported vision tower model_type 'dinov2'"):
    LlavaOnevisionConfig.from_hf_dict({**config, 'vision_config': {**config['vision_config'], 'model_type': 'dinov2'}})
  with pytest.raises(ValueError, match='a list of layers is not supported'):
    LlavaOnevisionConfig.from_hf_dict({**config, 'vision_feature_layer': [-2, -1]})
  with pytest.raises(ValueError, match='anyres_max_<N>'):
    LlavaOnevisionConfig.from_hf_dict({**config, 'vision_aspect_ratio': 'anyres'})
