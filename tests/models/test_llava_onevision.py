"""LlavaOnevisionForConditionalGeneration vs transformers on a tiny random checkpoint: AnyRes images of several
aspect ratios (one through the max-9 reduction), multi-image and video prompts, packing, KV cache, jit, errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from mmjax.models import anyres, init_cache
from mmjax.models.llava_onevision import LlavaOnevisionConfig, merge_features
from mmjax.weights import from_pretrained
from tests.models.hf_reference import _perturb

# SigLIP 32 px / patch 8 -> 4 x 4 = 16 tokens per crop; up to 4 x 4 tiles so that the max-9 rule (16 * 9 = 144
# cells) can trigger.
VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, image_size=32,
              patch_size=8, vision_use_head=False, attn_implementation='eager')
TEXT = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, rope_theta=1e6, attn_implementation='eager')
PINPOINTS = [[32 * i, 32 * j] for i in range(1, 5) for j in range(1, 5)]
IMAGE, VIDEO = 126, 127
# (H, W): square, wide, tall, and one whose unpadded 12 x 16 map exceeds 9 crops and is reduced to 10 x 13.
SIZES = [(32, 32), (40, 90), (130, 40), (100, 128)]
# 88 x 110 tiles 3 x 4 crops (12 x 16 cells) and unpads to 110 * 12 / 88 = 14.999999999999998 columns: HF rounds
# to 7 decimals (15, pad 0); plain int() would give 14 (pad 1).
ROUNDING = (88, 110)


def save_llava(directory, *, tied: bool = False, seed: int = 0, vocab_size: int = 128, image_token: int = IMAGE,
               video_token: int = VIDEO) -> transformers.LlavaOnevisionForConditionalGeneration:
  """A random tiny LlavaOnevisionForConditionalGeneration saved to `directory`; returns it (eval)."""
  torch.manual_seed(seed)
  config = transformers.LlavaOnevisionConfig(
      vision_config=transformers.SiglipVisionConfig(**VISION),
      text_config=transformers.Qwen2Config(**{**TEXT, 'vocab_size': vocab_size}, tie_word_embeddings=tied),
      image_token_index=image_token, video_token_index=video_token, image_grid_pinpoints=PINPOINTS,
      vision_feature_layer=-1)
  model = transformers.LlavaOnevisionForConditionalGeneration(config).eval()
  _perturb(model, seed)
  model.save_pretrained(directory)
  return model


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


def hf_logits(model, ids, mask, pixel_values=None, image_sizes=None, batch_num_images=None, videos=None):
  """HF logits with NHWC pixels moved to NCHW and HF generation positions (cumsum(mask) - 1)."""
  nchw = lambda x: None if x is None else torch.from_numpy(np.moveaxis(np.asarray(x), -1, -3).copy())  # noqa: E731
  kwargs = dict(pixel_values=nchw(pixel_values), pixel_values_videos=nchw(videos),
                image_sizes=None if image_sizes is None else torch.tensor(image_sizes),
                batch_num_images=None if batch_num_images is None else torch.tensor(batch_num_images))
  with torch.no_grad():
    return model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                 position_ids=torch.from_numpy(np.maximum(mask.cumsum(-1) - 1, 0)), **kwargs).logits.numpy()


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
  ids, mask = prompts([[3, (IMAGE, layout.num_tokens), 5] for layout in layouts], seed=0)
  crops = max(layout.num_crops for layout in layouts)
  pixels = np.random.default_rng(0).standard_normal((len(sizes), crops, 32, 32, 3)).astype(np.float32)
  logits = _run(module, params, ids, mask, pixel_values=pixels, image_sizes=sizes)
  expected = hf_logits(reference, ids, mask, pixels, sizes)
  real = mask.astype(bool)
  np.testing.assert_allclose(logits[real], expected[real], atol=1e-4)


def test_multi_image_prompt_matches_transformers(llava):
  """Row 0 holds three images (one crop + newline each), row 1 one AnyRes image: batch_num_images [3, 1]."""
  _, reference, module, params, config = llava
  sizes = [(30, 50), (64, 32), (32, 32), (40, 90)]
  single = anyres.single_crop_tokens(config.side)
  ids, mask = prompts([[2, (IMAGE, single), 3, (IMAGE, single), (IMAGE, single), 4],
                       [6, (IMAGE, config.image_layout(sizes[3]).num_tokens), 2]], seed=1)
  pixels = np.random.default_rng(1).standard_normal((4, 7, 32, 32, 3)).astype(np.float32)
  logits = _run(module, params, ids, mask, pixel_values=pixels, image_sizes=sizes, batch_num_images=[3, 1])
  expected = hf_logits(reference, ids, mask, pixels, sizes, [3, 1])
  real = mask.astype(bool)
  np.testing.assert_allclose(logits[real], expected[real], atol=1e-4)


def test_video_prompt_matches_transformers(llava):
  """Two 3-frame videos (2 x 2 pooled cells per frame + one newline = 13 tokens); row 0 also has an image."""
  _, reference, module, params, config = llava
  tokens = anyres.video_tokens(3, config.side)
  assert tokens == 3 * 4 + 1
  sizes = [(50, 40)]
  ids, mask = prompts([[2, (IMAGE, config.image_layout(sizes[0]).num_tokens), (VIDEO, tokens), 3],
                       [5, (VIDEO, tokens), 1]], seed=2)
  rng = np.random.default_rng(2)
  videos = rng.standard_normal((2, 3, 32, 32, 3)).astype(np.float32)
  pixels = rng.standard_normal((1, config.image_layout(sizes[0]).num_crops, 32, 32, 3)).astype(np.float32)
  logits = _run(module, params, ids, mask, pixel_values=pixels, image_sizes=sizes, pixel_values_videos=videos)
  expected = hf_logits(reference, ids, mask, pixels, sizes, videos=videos)
  real = mask.astype(bool)
  np.testing.assert_allclose(logits[real], expected[real], atol=1e-4)


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
    np.testing.assert_allclose(anyres.pack_anyres(jnp.asarray(features), layout, jnp.asarray(newline)),
                               expected.numpy(), atol=1e-6)
  frames = rng.standard_normal((2, 3, 16, 8)).astype(np.float32)
  with torch.no_grad():
    pooled = reference.model.apply_pooling(torch.from_numpy(frames.reshape(6, 16, 8))).numpy().reshape(2, 12, 8)
  packed = anyres.pack_video(jnp.asarray(frames), 4, jnp.asarray(newline))
  np.testing.assert_allclose(packed[:, :-1], pooled, atol=1e-6)
  np.testing.assert_array_equal(packed[:, -1], np.broadcast_to(newline, (2, 8)))


def test_prefill_from_embeds_then_cached_decoding(llava):
  """The generation path: prefill from `embed` (visual features merged), then one cached decode step."""
  _, _, module, params, config = llava
  sizes = [(40, 90)]
  ids, _ = prompts([[2, (IMAGE, config.image_layout(sizes[0]).num_tokens), 4]], seed=4)
  pixels = np.random.default_rng(4).standard_normal((1, 7, 32, 32, 3)).astype(np.float32)
  images = dict(pixel_values=pixels, image_sizes=sizes)
  full = _run(module, params, ids, np.ones_like(ids), **images)
  embeds = jax.jit(lambda p, i: module.apply({'params': p}, i, **images, method='embed'))(params, ids[:, :-1])
  step = jax.jit(lambda p, i, e, c: module.apply({'params': p}, i, inputs_embeds=e, cache=c))
  prefill = step(params, None, embeds, init_cache(config.text_config, 1, ids.shape[1]))
  decoded = step(params, ids[:, -1:], None, prefill.cache)
  np.testing.assert_allclose(prefill.logits, full[:, :-1], atol=1e-5)
  np.testing.assert_allclose(decoded.logits[:, 0], full[:, -1], atol=1e-5)


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
  ids, _ = prompts([[2, (IMAGE, layout.num_tokens + 1)]], seed=5)
  with pytest.raises(ValueError, match='Image features and image tokens do not match: the input has 95 image'):
    module.apply({'params': params}, ids, pixel_values=pixels, image_sizes=[(40, 90)])
  with pytest.raises(ValueError, match='image_sizes must be concrete'):
    jax.jit(lambda s: module.apply({'params': params}, ids, pixel_values=pixels, image_sizes=s))(
        jnp.asarray([[40, 90]]))
  with pytest.raises(ValueError, match=r'pixel_values must be \[images, crops, 32, 32, 3\] \(channels last\)'):
    module.apply({'params': params}, ids, pixel_values=pixels.transpose(0, 1, 4, 2, 3), image_sizes=[(40, 90)])
  with pytest.raises(ValueError, match='image_sizes need 17'):
    module.apply({'params': params}, ids, pixel_values=pixels, image_sizes=[(100, 128)])
  with pytest.raises(ValueError, match=r'batch_num_images \[2\] sums to 2'):
    module.apply({'params': params}, ids, pixel_values=pixels, image_sizes=[(40, 90)], batch_num_images=[2])
  with pytest.raises(ValueError, match='inputs_embeds already holds'):
    module.apply({'params': params}, ids, inputs_embeds=jnp.zeros((1, 2, 64)))


def test_config_errors():
  config = {'vision_config': {**VISION, 'model_type': 'siglip_vision_model'},
            'text_config': {**TEXT, 'model_type': 'qwen2'}}
  assert LlavaOnevisionConfig.from_hf_dict(config).image_token_index == 151646
  with pytest.raises(ValueError, match='lacks'):
    LlavaOnevisionConfig.from_hf_dict({'text_config': config['text_config']})
  with pytest.raises(ValueError, match='only "full"'):
    LlavaOnevisionConfig.from_hf_dict({**config, 'vision_feature_select_strategy': 'default'})
  with pytest.raises(ValueError, match='a list of layers is not supported'):
    LlavaOnevisionConfig.from_hf_dict({**config, 'vision_feature_layer': [-2, -1]})
  with pytest.raises(ValueError, match='anyres_max_<N>'):
    LlavaOnevisionConfig.from_hf_dict({**config, 'vision_aspect_ratio': 'anyres'})
