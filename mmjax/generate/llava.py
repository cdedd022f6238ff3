"""`DecoderAdapter`s for LLaVA (`LlavaAdapter`: one crop per image, any tower and decoder) and
`LlavaOnevisionForConditionalGeneration` (AnyRes, multi-image and video inputs): prefill image and video
embeddings, decode text. LLaVA-OneVision:

    inputs = processor(text=prompts, images=images)
    ids = [row[mask.astype(bool)].tolist() for row, mask in zip(inputs['input_ids'], inputs['attention_mask'])]
    generate(module, params, ids, max_new_tokens=64, pixel_values=inputs['pixel_values'],
             image_sizes=inputs['image_sizes'], batch_num_images=inputs['batch_num_images'])

Model inputs rule: the image and video inputs are those of the prompts taken together, exactly as
`LlavaOnevisionProcessor` returns them for the whole list: pixel_values [N, crops, H, W, 3] holds the images of all
prompts in prompt order (the images of prompt 0 first), image_sizes [N, 2] their (height, width), batch_num_images
[len(prompts)] (optional) the images of each prompt, pixel_values_videos [V, F, H, W, 3] the videos in prompt order.
The engine keeps the prompts in their order in one prefill batch and pads it only with rows after the last prompt
that hold no placeholder, so the k-th placeholder of the batch takes the k-th image's features (`merge_features`).
`prepare_inputs` checks before anything is traced that every prompt's placeholders are exactly the tokens of whole
images (and, with batch_num_images, of its own images), so a prompt cut by truncate='left' through an image, a
missing or extra image, or images out of order raise ValueError instead of decoding from misplaced features.
It then replaces the image inputs with bucketed crops and a traced packing table (`visual_buckets`), so image
counts and sizes are data, not static arguments: a benchmark compiles one prefill per (rows, prompt length,
crops, visual tokens) bucket instead of one per set of image sizes. Videos pass through unchanged.
"""
import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mmjax.generate import visual_buckets
from mmjax.generate.adapters import Qwen2Adapter, register_adapter
from mmjax.models import anyres
from mmjax.models.kv_cache import KVCache
from mmjax.models.llava import LlavaForConditionalGeneration, language_model_of, merge_features
from mmjax.models.llava_onevision import LlavaOnevisionForConditionalGeneration

MODEL_INPUTS = ('pixel_values', 'image_sizes', 'batch_num_images', 'pixel_values_videos')
PAD_TOKEN = 0  # the engine's padding token (batching.pack_prompts)


@register_adapter(LlavaForConditionalGeneration)
@dataclasses.dataclass(frozen=True)
class LlavaAdapter:
  """Prefills the merged text and image embeddings of a LLaVA (any tower and decoder) into its language model
  (params['language_model']), whose text decode continues. Model input: pixel_values [N, H, W, 3], one crop per
  image (LLaVA-1.5's `pad` layout: `llava_image_processing.square_crop`), the images of all prompts in prompt
  order; each image fills config.tokens_per_crop placeholders."""
  module: LlavaForConditionalGeneration

  @functools.cached_property
  def text(self) -> Qwen2Adapter:
    """The language model's adapter (the module the LLaVA module nests as `language_model`)."""
    return Qwen2Adapter(language_model_of(self.module))

  @property
  def vocab_size(self) -> int:
    return self.text.vocab_size

  @property
  def max_context(self) -> int:
    return self.text.max_context

  def prepare_inputs(self, sequences: Sequence[np.ndarray], model_inputs: dict[str, Any]) -> dict[str, Any]:
    """Checks that the prompts' placeholders are the tokens of whole images, in order."""
    unknown = sorted(k for k, v in model_inputs.items() if v is not None and k != 'pixel_values')
    if unknown:
      raise ValueError(f'LLaVA takes the model input pixel_values [images, H, W, 3], got unknown {unknown}.')
    images = model_inputs.get('pixel_values')
    cfg = self.module.config
    count = 0 if images is None else np.shape(images)[0]
    if images is not None and np.ndim(images) != 4:
      raise ValueError(f'pixel_values must be [images, H, W, 3] (one crop per image), got {np.shape(images)}.')
    if count and cfg.image_token_index == PAD_TOKEN:
      raise ValueError(f'the image token id is {PAD_TOKEN}, the engine\'s padding token; padding would take image '
                       'features.')
    _check_placeholders('image', [int(np.sum(s == cfg.image_token_index)) for s in sequences],
                        [cfg.tokens_per_crop] * count, None)
    return {} if images is None else {'pixel_values': jnp.asarray(images)}

  def prefill(self, params: Any, tokens: jax.Array, lengths: jax.Array, cache: KVCache, **model_inputs: Any
              ) -> tuple[jax.Array, KVCache]:
    return self.text.prefill_embeds(params['language_model'], self._embed(params, tokens, **model_inputs),
                                    lengths, cache)

  def _embed(self, params: Any, tokens: jax.Array, **model_inputs: Any) -> jax.Array:
    """Token embeddings [B, S, E] with the image features at their placeholders."""
    return self.module.apply({'params': params}, tokens, method='embed', **model_inputs)

  def decode(self, params: Any, tokens: jax.Array, cache: KVCache) -> tuple[jax.Array, KVCache]:
    return self.text.decode(params['language_model'], tokens, cache)

  def extend(self, params: Any, tokens: jax.Array, lengths: jax.Array, cache: KVCache, *, every_token: bool = False
             ) -> tuple[jax.Array, KVCache]:
    """Appends text tokens (see `Qwen2Adapter.extend`); images enter only at prefill."""
    return self.text.extend(params['language_model'], tokens, lengths, cache, every_token=every_token)

  def init_cache(self, batch: int, max_len: int) -> KVCache:
    return self.text.init_cache(batch, max_len)

  def rewind(self, cache: KVCache, lengths: jax.Array) -> KVCache:
    return self.text.rewind(cache, lengths)

  def logits(self, params: Any, tokens: jax.Array, lengths: jax.Array, **model_inputs: Any) -> jax.Array:
    mask = jnp.arange(tokens.shape[1])[None, :] < lengths[:, None]
    return self.text.module.apply({'params': params['language_model']},
                                  inputs_embeds=self._embed(params, tokens, **model_inputs),
                                  attention_mask=mask).logits


@register_adapter(LlavaOnevisionForConditionalGeneration)
@dataclasses.dataclass(frozen=True)
class LlavaOnevisionAdapter(LlavaAdapter):
  """LLaVA's adapter with OneVision's model inputs: pixel_values, image_sizes, batch_num_images,
  pixel_values_videos as in the module docstring (all optional; text-only prompts need none), images bucketed."""
  module: LlavaOnevisionForConditionalGeneration

  def prepare_inputs(self, sequences: Sequence[np.ndarray], model_inputs: dict[str, Any]) -> dict[str, Any]:
    """Checks the model inputs against the placeholders of the fitted prompts, in order; returns them with
    image_sizes and batch_num_images as static tuples."""
    unknown = sorted(set(model_inputs) - set(MODEL_INPUTS))
    if unknown:
      raise ValueError(f'LLaVA-OneVision takes the model inputs {list(MODEL_INPUTS)}, got unknown {unknown}.')
    inputs = {k: v for k, v in model_inputs.items() if v is not None}
    cfg = self.module.config
    images, videos = inputs.get('pixel_values'), inputs.get('pixel_values_videos')
    if images is None and ('image_sizes' in inputs or 'batch_num_images' in inputs):
      raise ValueError('image_sizes and batch_num_images describe pixel_values, which is missing.')
    image_tokens, video_tokens = [], []
    if images is not None:
      if 'image_sizes' not in inputs:
        raise ValueError('pixel_values needs image_sizes [images, 2] (height, width), as the processor returns.')
      sizes = tuple(tuple(int(x) for x in s) for s in np.asarray(inputs['image_sizes']).tolist())
      if np.ndim(images) != 5 or any(len(s) != 2 for s in sizes) or len(sizes) != np.shape(images)[0]:
        raise ValueError(f'pixel_values [images, crops, H, W, 3] and image_sizes [images, 2] must describe the '
                         f'same images, got shapes {np.shape(images)} and {np.shape(inputs["image_sizes"])}.')
      inputs['image_sizes'] = sizes
      single = [False] * len(sizes)
      if 'batch_num_images' in inputs:
        per_prompt = tuple(int(n) for n in np.asarray(inputs['batch_num_images']).reshape(-1))
        if len(per_prompt) != len(sequences) or sum(per_prompt) != len(sizes):
          raise ValueError(f'batch_num_images {list(per_prompt)} must give the images of each of the '
                           f'{len(sequences)} prompts and sum to the {len(sizes)} images of pixel_values.')
        inputs['batch_num_images'] = per_prompt
        single = [n > 1 for n in per_prompt for _ in range(n)]
      layouts = [None if one else cfg.image_layout(size) for one, size in zip(single, sizes)]
      image_tokens = [anyres.single_crop_tokens(cfg.side) if layout is None else layout.num_tokens
                      for layout in layouts]
    if videos is not None:
      if np.ndim(videos) != 5:
        raise ValueError(f'pixel_values_videos must be [videos, frames, H, W, 3], got {np.shape(videos)}.')
      video_tokens = [anyres.video_tokens(np.shape(videos)[1], cfg.side)] * np.shape(videos)[0]
    for kind, token, tokens in (('image', cfg.image_token_index, image_tokens),
                                ('video', cfg.video_token_index, video_tokens)):
      if token == PAD_TOKEN and tokens:
        raise ValueError(f'the {kind} token id is {PAD_TOKEN}, the engine\'s padding token; padding would take '
                         f'{kind} features.')
      _check_placeholders(kind, [int(np.sum(s == token)) for s in sequences], tokens,
                          inputs.get('batch_num_images') if kind == 'image' else None)
    if images is not None:
      for name in ('pixel_values', 'image_sizes', 'batch_num_images'):
        inputs.pop(name, None)
      inputs.update(visual_buckets.pack_images(images, layouts, cfg.side))
    return inputs

  def _embed(self, params: Any, tokens: jax.Array, *, crops: jax.Array | None = None,
             taps: jax.Array | None = None, tap_weights: jax.Array | None = None,
             pixel_values_videos: jax.Array | None = None) -> jax.Array:
    """Token embeddings [B, S, E] with the visual tokens at their placeholders, from `prepare_inputs`' output."""
    variables = {'params': params}
    embeds = self.module.apply(variables, tokens, method='embed')
    cfg = self.module.config
    if crops is not None:
      features = self.module.apply(variables, crops, method='crop_features')
      visual = visual_buckets.image_tokens(features, params['image_newline'], taps, tap_weights)
      embeds = merge_features(embeds, tokens == cfg.image_token_index, visual, 'image')
    if pixel_values_videos is not None:
      visual = self.module.apply(variables, pixel_values_videos, method='video_features')
      embeds = merge_features(embeds, tokens == cfg.video_token_index, visual.reshape(-1, embeds.shape[-1]),
                              'video')
    return embeds



def _check_placeholders(kind: str, found: list[int], tokens: list[int], per_prompt: tuple[int, ...] | None
                        ) -> None:
  """ValueError unless the placeholders found per sequence are the tokens of whole items (images or videos) in
  order: sequence i takes items per_prompt[i] when given, else the next items whose tokens its count covers."""
  hint = (f'Pass the {kind}s of all prompts in prompt order, each prompt with the placeholders the processor '
          'expanded, and do not cut prompts through them (truncate="left").')
  if sum(found) != sum(tokens):
    raise ValueError(f'the prompts hold {sum(found)} {kind} tokens ({found} per prompt), the {len(tokens)} '
                     f'{kind}s give {sum(tokens)} features. {hint}')
  ends = np.cumsum([0] + tokens)
  if per_prompt is not None:
    bounds = np.cumsum([0] + list(per_prompt))
    want = [int(ends[b] - ends[a]) for a, b in zip(bounds[:-1], bounds[1:])]
    bad = [i for i, (f, w) in enumerate(zip(found, want)) if f != w]
    if bad:
      raise ValueError(f'prompt {bad[0]} holds {found[bad[0]]} {kind} tokens, its {per_prompt[bad[0]]} {kind}s '
                       f'(batch_num_images) give {want[bad[0]]}. {hint}')
    return
  boundaries = set(ends.tolist())
  for i, end in enumerate(np.cumsum(found).tolist()):
    if end not in boundaries:
      raise ValueError(f'prompt {i} ends inside the tokens of a {kind}: the {kind}s do not follow their prompts. '
                       f'{hint}')
