"""IPAdapter-Instruct inference on Stable Diffusion 1.5 (spec section 3): a condition image, a query that says what
to take from it, and a text prompt -> images.

Per call (R the instruct resampler, V(x) the image encoder's penultimate hidden states, T(s) the text encoder's
last hidden state [B, 77, D]), four sets of IP tokens [B, Q, D]:
  full = R(V(image), T(query), T(prompt))          U = R(V(0), T(''), T(negative))
  I    = R(V(image), T(negative), T(negative))     E = R(V(image), T('everything'), T(prompt))
V(0) is the encoder on an all-zeros normalised pixel tensor. The UNet cross-attends to the text states and, through
its decoupled IP attention (weight λ), to the IP tokens: full = [T(prompt) ‖ full], U = [T(negative) ‖ U],
I = [T(negative) ‖ I], E = [T(negative) ‖ E]. Queries naming style, colour, everything or the face use simple CFG
on (U, full): ε = ε_U + s·(ε_full − ε_U); the others the 3-way CFG over four UNet passes:
  ε = ε_U + s_img·(ε_I − ε_U) + s·(ε_E − ε_I) + s_instr·(ε_full − ε_E)
(s the guidance scale acts as the text scale). With auto_scale, composition and pose queries lower λ by 0.2.

Batch order: the official pipeline batches its branches as [full, U] (simple) and [full, I, E, U] (3-way); here
they are stacked least -> most conditioned, [U, full] and [U, I, E, full], as mmjax.diffusion.combine takes them.
The UNet treats every batch row on its own (per-row GroupNorm, attention and timestep embedding), so each branch's
ε is the same wherever it sits, and the guided ε is the same expression of them: the order changes nothing.

The whole denoising loop is one jitted program (mmjax.diffusion.sample), reused across calls, queries, λ, scales
and pipelines whose UNet has the same config; only the guidance mode (2 or 4 branches), shapes and step count
compile anew.
"""
from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import DTypeLike
from PIL import Image

from experiments.ipadapter_instruct.checkpoint import AdapterWeights, load_adapter, merge_unet, split_unet
from experiments.ipadapter_instruct.resampler import Resampler, ResamplerConfig
from experiments.ipadapter_instruct.tiny import SCHEDULER, random_params
from mmjax.diffusion import Guidance, from_diffusers_config, sample
from mmjax.models.clip import CLIPVisionModelWithProjection
from mmjax.models.sd15 import StableDiffusionPipeline, load_pipeline
from mmjax.models.unet import UNet2DConditionModel

# The SD1.5 queries of the official demo (foreground and background are beta there).
QUERIES = ('use everything from the image', 'use the style', 'use the colour', 'use the pose', 'use the composition',
           'use the face', 'use the object', 'use the foreground', 'use the background')
DEFAULT_PROMPT = 'best quality, high quality'
DEFAULT_NEGATIVE = 'monochrome, lowres, bad anatomy, worst quality, low quality'
MODES = ('simple', 'three_way')
# A query holding one of these words is guided by simple CFG (the official rule, which also reads 'color', 'facial').
_SIMPLE_WORDS = ('style', 'colour', 'color', 'everything', 'face', 'facial')
_AUTO_SCALE_WORDS = ('composition', 'pose')
_AUTO_SCALE_DROP = 0.2
# The official pipeline's instruction for the E branch.
_EVERYTHING = 'everything'
# CLIPImageProcessor's defaults (OpenAI CLIP's normalisation).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _check_query(query: str) -> None:
  if query not in QUERIES:
    raise ValueError(f'unknown query {query!r}; the queries are: {", ".join(repr(q) for q in QUERIES)}.')


def guidance_mode(query: str) -> str:
  """'simple' (2 UNet passes) for queries about style, colour, everything or the face, else 'three_way' (4 passes);
  ValueError naming the query and the valid ones when it is not one of QUERIES."""
  _check_query(query)
  return 'simple' if any(word in query for word in _SIMPLE_WORDS) else 'three_way'


def ip_scale(query: str, scale: float, auto_scale: bool) -> float:
  """The IP attention weight λ for the query: `scale`, less 0.2 for composition and pose queries when auto_scale
  (the SD1.5 demo's rule); ValueError for an unknown query."""
  _check_query(query)
  if auto_scale and any(word in query for word in _AUTO_SCALE_WORDS):
    return round(float(scale) - _AUTO_SCALE_DROP, 6)  # 0.6, not 0.6000000000000001, in the settings
  return float(scale)


def preprocess(images: np.ndarray | Image.Image | Sequence[Image.Image | np.ndarray], size: int) -> np.ndarray:
  """CLIPImageProcessor's defaults at `size`: RGB, the shortest side resized to `size` (PIL bicubic, the long side
  int(size·long/short)), a centred size x size crop, /255, CLIP mean/std.

  images: uint8 [B, H, W, 3] or [H, W, 3], a PIL image, or a list of PIL images / uint8 [H, W, 3] arrays (any
  sizes and modes). Returns float32 pixels [B, size, size, 3] (channels last, what the image encoder takes).
  """
  if isinstance(images, Image.Image):
    images = [images]
  elif isinstance(images, np.ndarray | jax.Array):
    images = list(np.asarray(images)[None] if np.ndim(images) == 3 else np.asarray(images))
  if not len(images):
    raise ValueError('preprocess got no images.')
  out = []
  for image in images:
    if not isinstance(image, Image.Image):
      array = np.asarray(image)
      if array.ndim != 3 or array.shape[-1] != 3 or array.dtype != np.uint8:
        raise ValueError(f'preprocess takes PIL images or uint8 images [H, W, 3] (stacked: [B, H, W, 3]), got '
                         f'{array.dtype} {array.shape}.')
      image = Image.fromarray(array)
    image = image.convert('RGB')
    width, height = image.size
    short, long = min(width, height), max(width, height)
    new_long = int(size * long / short)
    new_width, new_height = (size, new_long) if width <= height else (new_long, size)
    pixels = np.asarray(image.resize((new_width, new_height), Image.Resampling.BICUBIC))
    top, left = (new_height - size) // 2, (new_width - size) // 2
    pixels = pixels[top:top + size, left:left + size].astype(np.float64) / 255.0
    out.append(((pixels - np.asarray(CLIP_MEAN)) / np.asarray(CLIP_STD)).astype(np.float32))
  return np.stack(out)


def sd15_resampler_config(sd: StableDiffusionPipeline) -> ResamplerConfig:
  """The official SD1.5 ResamplerInstructBigger for this pipeline: width and output = the UNet's
  cross_attention_dim, image tokens of the image encoder's width, instructions and prompts of the text encoder's;
  depth 4, 12 heads x 64, 16 queries, FF x 4 (the config defaults)."""
  width = sd.unet.config.cross_attention_dim
  return ResamplerConfig(dim=width, output_dim=width, embedding_dim=sd.image_encoder.config.hidden_size,
                         text_dim=sd.text_encoder.config.hidden_size)


def _check_image_encoder(directory: Path) -> None:
  if not (directory / 'image_encoder').is_dir():
    raise ValueError(f'{directory}: the pipeline has no image_encoder/ folder; IPAdapter-Instruct needs its image '
                     'encoder there (a CLIPVisionModelWithProjection: laion/CLIP-ViT-H-14-laion2B-s32B-b79K for '
                     'SD1.5).')


def load_sd_for_adapter(pipeline_dir: str | os.PathLike, dtype: DTypeLike = jnp.float32,
                        resampler_config: ResamplerConfig | None = None
                        ) -> tuple[StableDiffusionPipeline, ResamplerConfig]:
  """(the SD1.5 stack of a diffusers folder with image_encoder/, with the spec's DDIM scheduler whatever scheduler/
  holds; the resampler config its adapter has: `resampler_config`, or the official SD1.5 one sized from it)."""
  directory = Path(pipeline_dir)
  if directory.is_dir():
    _check_image_encoder(directory)
  sd = load_pipeline(directory, dtype, scheduler=dict(SCHEDULER))
  return sd, resampler_config or sd15_resampler_config(sd)


def random_adapter(sd: StableDiffusionPipeline, resampler_config: ResamplerConfig, seed: int) -> AdapterWeights:
  """Random adapter weights for `sd` (tiny.random_params' draws: the smoke runs and tests, not a trained model)."""
  unet = sd.unet.clone(extra_token_sets=1)
  size = unet.config.sample_size
  size = (size, size) if isinstance(size, int) else tuple(size)
  unet_params = random_params(unet, jnp.zeros((1, *size, unet.config.in_channels)), jnp.zeros((1,), jnp.int32),
                              jnp.zeros((1, 1, unet.config.cross_attention_dim)), seed=seed)
  text = jnp.zeros((1, 1, resampler_config.text_dim))
  image_proj = random_params(Resampler(resampler_config), jnp.zeros((1, 1, resampler_config.embedding_dim)), text,
                             text, seed=seed + 1)
  return AdapterWeights(image_proj, split_unet(unet_params)[1])


@dataclasses.dataclass(frozen=True)
class _Denoise:
  """`sample`'s model call: x [M, h, w, C], t [M], cond {'text': [M, 77, D], 'ip': [M, Q, D], 'scale': [M]} ->
  ε [M, h, w, C]. Equal for equal UNet modules, so sample's compiled loop (keyed on it) serves every pipeline with
  the same UNet config; λ is traced, so a new value does not recompile."""
  unet: UNet2DConditionModel

  def __call__(self, params: Any, x: jax.Array, t: jax.Array, cond: dict[str, jax.Array]) -> jax.Array:
    return self.unet.apply({'params': params}, x, t, cond['text'], extra_tokens=[(cond['ip'], cond['scale'])])


@functools.partial(jax.jit, static_argnums=0)
def _encode_image(encoder: CLIPVisionModelWithProjection, params: Any, pixels: jax.Array) -> jax.Array:
  """pixels [B, S, S, 3] -> the penultimate hidden states [B, 1 + N, E] (HF hidden_states[-2])."""
  return encoder.apply({'params': params}, pixels, feature_layer=-2)


@functools.partial(jax.jit, static_argnums=0)
def _project(resampler: Resampler, params: Any, image_tokens: jax.Array, instruction: jax.Array,
             prompt: jax.Array) -> jax.Array:
  return resampler.apply({'params': params}, image_tokens, instruction, prompt)


@dataclasses.dataclass(frozen=True, eq=False)
class InstructPipeline:
  """An SD pipeline whose UNet has one decoupled IP token set (sd.unet.extra_token_sets == 1, the to_[kv]_ip_0
  kernels in sd.params['unet']) and an image encoder, the instruct resampler and its params (image_proj)."""
  sd: StableDiffusionPipeline
  resampler: Resampler
  image_proj: Any
  _denoise: _Denoise = dataclasses.field(init=False, repr=False)

  def __post_init__(self):
    if self.sd.image_encoder is None:
      raise ValueError('IPAdapter-Instruct needs a pipeline with an image encoder (image_encoder/).')
    if self.sd.unet.extra_token_sets != 1:
      raise ValueError(f'the UNet must have one IP token set (extra_token_sets=1), it has '
                       f'{self.sd.unet.extra_token_sets}: build the pipeline with InstructPipeline.from_parts.')
    if not self.resampler.config.instruct:
      raise ValueError('IPAdapter-Instruct needs the instruct resampler (ResamplerConfig(instruct=True)).')
    object.__setattr__(self, '_denoise', _Denoise(self.sd.unet))

  @classmethod
  def from_parts(cls, sd: StableDiffusionPipeline, resampler_config: ResamplerConfig,
                 weights: AdapterWeights) -> InstructPipeline:
    """`sd` (its UNet without IP kernels, an image encoder) with the adapter: the IP kernels merged into the UNet
    params, the resampler computing in the UNet's dtype. The weights are used as given (their dtype included)."""
    unet = sd.unet.clone(extra_token_sets=1)
    params = {**sd.params, 'unet': merge_unet(sd.params['unet'], weights.unet_ip)}
    sd = dataclasses.replace(sd, unet=unet, params=params)
    return cls(sd, Resampler(resampler_config, dtype=unet.dtype), weights.image_proj)

  @classmethod
  def load(cls, pipeline_dir: str | os.PathLike, adapter_file: str | os.PathLike, dtype: DTypeLike = jnp.float32,
           resampler_config: ResamplerConfig | None = None) -> InstructPipeline:
    """A diffusers SD1.5 folder with image_encoder/ (CLIP ViT-H/14 for the released adapter) and an adapter file
    (checkpoint.load_adapter: .safetensors or the released .bin); parameters and compute in `dtype`; the spec's
    DDIM scheduler whatever scheduler/ holds (as the official demo sets it).

    resampler_config: None is the official SD1.5 resampler sized from the pipeline (sd15_resampler_config).
    Raises ValueError naming the folder when image_encoder/ is missing, FileNotFoundError for a missing adapter
    file, and load_pipeline's / load_adapter's errors (naming the component or the mismatched keys).
    """
    adapter_file = Path(adapter_file)
    if Path(pipeline_dir).is_dir():
      _check_image_encoder(Path(pipeline_dir))
    if not adapter_file.is_file():
      raise FileNotFoundError(f'{adapter_file}: no such adapter file.')
    sd, config = load_sd_for_adapter(pipeline_dir, dtype, resampler_config)
    return cls.from_parts(sd, config, load_adapter(adapter_file, sd.unet.config, config, dtype=dtype))

  def ip_tokens(self, pixels: jax.Array, instructions: str | Sequence[str],
                prompts: str | Sequence[str]) -> jax.Array:
    """IP tokens [B, Q, D] = R(V(pixels), T(instructions), T(prompts)); pixels [B, S, S, 3] (preprocess's
    output), a text or one text per image."""
    batch = pixels.shape[0]
    return self._resample(self._image_tokens(pixels), self._texts(instructions, batch), self._texts(prompts, batch))

  def sample_latents(self, images: np.ndarray | Sequence[Image.Image], query: str, prompt: str | Sequence[str] = (
                     DEFAULT_PROMPT), negative_prompt: str | Sequence[str] = DEFAULT_NEGATIVE, *,
                     num_inference_steps: int = 30, guidance_scale: float = 5.0, instruct_scale: float = 2.0,
                     image_scale: float = 1.0, scale: float = 0.8, auto_scale: bool = True, mode: str | None = None,
                     seed: int | None = None, latents: jax.Array | None = None, height: int | None = None,
                     width: int | None = None) -> jax.Array:
    """Denoised latents [B, H/f, W/f, C] for the condition images (preprocess's input: uint8 [B, H, W, 3] or PIL
    images), one query for all, a prompt and a negative prompt (a text or one per image).

    guidance_scale s, instruct_scale s_instr, image_scale s_img (the 3-way CFG above), scale λ (auto_scale:
    ip_scale's rule). mode: None picks guidance_mode(query); 'simple' or 'three_way' forces one. Start from
    `latents` or from noise drawn with `seed`; height and width default to the UNet's sample size x f (see
    StableDiffusionPipeline.sample_latents).
    """
    mode = guidance_mode(query) if mode is None else mode
    if mode not in MODES:
      raise ValueError(f'mode must be one of {MODES} (or None: the query decides), got {mode!r}.')
    weight = ip_scale(query, scale, auto_scale)
    pixels = jnp.asarray(preprocess(images, self.sd.image_encoder.config.image_size))
    batch = pixels.shape[0]
    noise = self.sd._initial_latents(batch, seed, latents, height, width)
    positive, negative = self._texts(prompt, batch), self._texts(negative_prompt, batch)
    tokens = self._image_tokens(jnp.concatenate([jnp.zeros_like(pixels), pixels]))
    blank, seen = tokens[:batch], tokens[batch:]
    # Each branch: (image tokens, instruction states, resampler prompt states, UNet text states).
    uncond = (blank, self._texts('', batch), negative, negative)
    full = (seen, self._texts(query, batch), positive, positive)
    if mode == 'simple':
      branches, scales = (uncond, full), (guidance_scale,)
    else:
      image_only = (seen, negative, negative, negative)
      everything = (seen, self._texts(_EVERYTHING, batch), positive, negative)
      branches, scales = (uncond, image_only, everything, full), (image_scale, guidance_scale, instruct_scale)
    stacked = [jnp.concatenate([branch[j] for branch in branches]) for j in range(4)]
    unfold = lambda x: x.reshape((len(branches), batch) + x.shape[1:])  # noqa: E731
    text = unfold(stacked[3])
    cond = {'text': text, 'ip': unfold(self._resample(*stacked[:3])).astype(text.dtype),
            'scale': jnp.full((len(branches), batch), weight, jnp.float32)}
    scheduler = from_diffusers_config(dict(self.sd.scheduler_config), num_inference_steps)
    return sample(self._denoise, self.sd.params['unet'], scheduler, noise.astype(text.dtype), cond=cond,
                  guidance=Guidance(jnp.asarray(scales, jnp.float32)))

  def generate(self, images: np.ndarray | Sequence[Image.Image], query: str, prompt: str | Sequence[str] = (
               DEFAULT_PROMPT), negative_prompt: str | Sequence[str] = DEFAULT_NEGATIVE, **kwargs: Any) -> jax.Array:
    """Images [B, H, W, 3] in [0, 1]: `sample_latents` (same arguments), then the VAE decoder."""
    return self.sd.decode(self.sample_latents(images, query, prompt, negative_prompt, **kwargs))

  def _texts(self, texts: str | Sequence[str], batch: int) -> jax.Array:
    """Text states [batch, 77, D]: one text encoded once and repeated, or one text per row."""
    if isinstance(texts, str):
      states = self.sd.encode_prompt([texts])
      return jnp.broadcast_to(states, (batch,) + states.shape[1:])
    if len(texts) != batch:
      raise ValueError(f'got {len(texts)} texts for {batch} images; pass one text, or one per image.')
    return self.sd.encode_prompt(list(texts))

  def _image_tokens(self, pixels: jax.Array) -> jax.Array:
    return _encode_image(self.sd.image_encoder, self.sd.params['image_encoder'], pixels)

  def _resample(self, image_tokens: jax.Array, instruction: jax.Array, prompt: jax.Array) -> jax.Array:
    return _project(self.resampler, self.image_proj, image_tokens, instruction, prompt)
