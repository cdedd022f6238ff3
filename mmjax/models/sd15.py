"""A whole Stable Diffusion 1.x pipeline folder (diffusers' `StableDiffusionPipeline.save_pretrained` layout) as one
object: `load_pipeline(dir)` reads unet/, vae/, text_encoder/, tokenizer/, scheduler/ and an optional image_encoder/
(IP-Adapter's CLIP vision tower); `save_pipeline` writes a folder diffusers loads back.

`pipeline.generate(prompts, num_inference_steps=30, guidance_scale=7.5, seed=0)` -> images [B, H, W, 3] in [0, 1]:
the prompts and the empty prompt are encoded ([B, 77, D] each), the UNet denoises latents [B, H/8, W/8, 4] under
simple classifier-free guidance (mmjax.diffusion.sample, the whole loop one jitted program), and the VAE decodes
latents / scaling_factor. Sampling reuses its compiled program across calls with the same shapes and step count.
"""
from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from jax.typing import DTypeLike

from mmjax.data.clip_tokenizer import CLIPTokenizer
from mmjax.diffusion import cfg, from_diffusers_config, sample
from mmjax.models.clip import CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModelWithProjection
from mmjax.models.unet import UNet2DConditionConfig, UNet2DConditionModel
from mmjax.models.vae import AutoencoderKL, AutoencoderKLConfig
from mmjax.weights import from_pretrained, save_pretrained

# Folder -> (what it holds, the config class its config.json must read as).
_MODELS = {'unet': ('the UNet2DConditionModel', UNet2DConditionConfig),
           'vae': ('the AutoencoderKL', AutoencoderKLConfig),
           'text_encoder': ('the CLIPTextModel', CLIPTextConfig)}
_IMAGE_ENCODER = ('image_encoder', 'the CLIPVisionModelWithProjection', CLIPVisionConfig)
_SCHEDULER_FILE = 'scheduler_config.json'


@dataclasses.dataclass(frozen=True, eq=False)
class StableDiffusionPipeline:
  """The modules of a pipeline, their parameters ({'unet', 'vae', 'text_encoder'[, 'image_encoder']} -> tree),
  the tokenizer and the scheduler's diffusers config (`mmjax.diffusion.from_diffusers_config` builds the sampler
  for a step count). Compared by identity; `dataclasses.replace(pipeline, scheduler_config=...)` swaps a part."""
  unet: UNet2DConditionModel
  vae: AutoencoderKL
  text_encoder: CLIPTextModel
  tokenizer: CLIPTokenizer
  scheduler_config: Mapping[str, Any]
  params: Mapping[str, Any]
  image_encoder: CLIPVisionModelWithProjection | None = None
  # Made once per pipeline, so that every call reuses the compiled programs: the jitted text encoder and decoder, and
  # the UNet call whose identity `sample`'s compiled loop is keyed on.
  _encode: Callable = dataclasses.field(init=False, repr=False)
  _decode: Callable = dataclasses.field(init=False, repr=False)
  _denoise: Callable = dataclasses.field(init=False, repr=False)

  def __post_init__(self):
    unet = self.unet

    def denoise(params: Any, x: jax.Array, t: jax.Array, context: jax.Array) -> jax.Array:
      return unet.apply({'params': params}, x, t, context)

    object.__setattr__(self, '_denoise', denoise)
    object.__setattr__(self, '_encode', jax.jit(lambda p, ids: self.text_encoder.apply({'params': p}, ids)))
    object.__setattr__(self, '_decode', jax.jit(
        lambda p, z: self.vae.apply({'params': p}, self.vae.config.unscale_latents(z), method='decode')))

  @property
  def latent_factor(self) -> int:
    """Image pixels per latent pixel along each axis (8 for SD)."""
    return self.vae.config.downsample_factor

  def encode_prompt(self, texts: str | Sequence[str]) -> jax.Array:
    """The text encoder's last_hidden_state of the tokenized texts: [B, 77, D] (what the UNet cross-attends to)."""
    return self._encode(self.params['text_encoder'], jnp.asarray(self.tokenizer(texts)))

  def sample_latents(self, prompts: str | Sequence[str], *, num_inference_steps: int = 50,
                     guidance_scale: float = 7.5, seed: int | None = None, latents: jax.Array | None = None,
                     height: int | None = None, width: int | None = None) -> jax.Array:
    """Denoised latents [B, H/f, W/f, C] (the scaled latents the UNet sees) for the prompts under simple CFG with
    the empty prompt as the unconditional branch.

    Start from `latents` [B, H/f, W/f, C] (channels last, unit variance; diffusers' `latents=` argument transposed)
    or from N(0, I) noise drawn with `seed`; height and width (pixels) default to the UNet's sample_size * f.
    """
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    noise = self._initial_latents(len(prompts), seed, latents, height, width)
    context = jnp.stack([self.encode_prompt([''] * len(prompts)), self.encode_prompt(prompts)])
    scheduler = from_diffusers_config(dict(self.scheduler_config), num_inference_steps)
    return sample(self._denoise, self.params['unet'], scheduler, noise.astype(context.dtype), cond=context,
                  guidance=cfg(guidance_scale))

  def decode(self, latents: jax.Array) -> jax.Array:
    """Scaled latents [B, h, w, C] -> images [B, h·f, w·f, 3] in [0, 1] (float32)."""
    images = self._decode(self.params['vae'], latents).astype(jnp.float32)
    return jnp.clip(images / 2 + 0.5, 0.0, 1.0)

  def generate(self, prompts: str | Sequence[str], *, num_inference_steps: int = 50, guidance_scale: float = 7.5,
               seed: int | None = None, latents: jax.Array | None = None, height: int | None = None,
               width: int | None = None) -> jax.Array:
    """Images [B, H, W, 3] in [0, 1] for the prompts: `sample_latents` (same arguments), then `decode`."""
    return self.decode(self.sample_latents(prompts, num_inference_steps=num_inference_steps,
                                           guidance_scale=guidance_scale, seed=seed, latents=latents, height=height,
                                           width=width))

  def _initial_latents(self, batch: int, seed: int | None, latents: jax.Array | None, height: int | None,
                       width: int | None) -> jax.Array:
    f, channels = self.latent_factor, self.unet.config.in_channels
    size = self.unet.config.sample_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    height, width = height or size[0] * f, width or size[1] * f
    if height % f or width % f:
      raise ValueError(f'height {height} and width {width} must be multiples of the VAE factor {f}.')
    shape = (batch, height // f, width // f, channels)
    if (seed is None) == (latents is None):
      raise ValueError('pass exactly one of seed= (fresh noise) and latents= (initial latents).')
    if latents is None:
      return jax.random.normal(jax.random.key(seed), shape, jnp.float32)
    if latents.shape != shape:
      raise ValueError(f'latents must be [B, H/{f}, W/{f}, {channels}] = {shape} for {batch} prompts at '
                       f'{height}x{width}, got {latents.shape}.')
    return jnp.asarray(latents)


def load_pipeline(directory: str | os.PathLike, dtype: DTypeLike = jnp.float32, *,
                  scheduler: str | Mapping[str, Any] | None = None) -> StableDiffusionPipeline:
  """Reads a diffusers Stable Diffusion folder; parameters in `dtype`, which is also the modules' compute dtype.

  scheduler: None keeps scheduler/scheduler_config.json; a class name ('DDIMScheduler') reads that file as the
    class (diffusers' `DDIMScheduler.from_config(pipe.scheduler.config)`: the hub's SD1.5 ships a PNDMScheduler,
    which mmjax.diffusion does not build); a dict is the scheduler config itself.

  Raises ValueError naming the folder and the component when unet/, vae/, text_encoder/, tokenizer/ or scheduler/
  is missing or holds another kind of model, or the scheduler is not supported (errors inside a component name
  its file).
  """
  directory = Path(directory)
  if not directory.is_dir():
    raise ValueError(f'{directory} is not a folder (expected a diffusers Stable Diffusion pipeline folder).')
  for name in (*_MODELS, 'tokenizer', 'scheduler'):
    if not (directory / name).is_dir():
      raise ValueError(f'{directory}: the pipeline has no {name}/ folder (its {name} component is missing).')
  scheduler_config = _scheduler_config(directory / 'scheduler' / _SCHEDULER_FILE, scheduler)
  modules, params = {}, {}
  components = [(name, *what) for name, what in _MODELS.items()]
  if (directory / _IMAGE_ENCODER[0]).is_dir():
    components.append(_IMAGE_ENCODER)
  for name, what, config_cls in components:
    module, params[name], config = from_pretrained(directory / name, dtype)
    if not isinstance(config, config_cls):
      raise ValueError(f'{directory / name}: the {name} component must be {what}, found a '
                       f'{type(config).__name__}.')
    modules[name] = module
  if not isinstance(modules['text_encoder'], CLIPTextModel):
    raise ValueError(f'{directory / "text_encoder"}: the text_encoder component must be {_MODELS["text_encoder"][0]} '
                     '(without projection).')
  tokenizer = CLIPTokenizer.from_folder(directory / 'tokenizer')
  positions = modules['text_encoder'].config.max_position_embeddings
  if tokenizer.max_length > positions:
    raise ValueError(f'{directory / "tokenizer"}: model_max_length {tokenizer.max_length} exceeds the text encoder\'s '
                     f'max_position_embeddings {positions}.')
  return StableDiffusionPipeline(unet=modules['unet'], vae=modules['vae'], text_encoder=modules['text_encoder'],
                                 tokenizer=tokenizer, scheduler_config=scheduler_config, params=params,
                                 image_encoder=modules.get('image_encoder'))


def _scheduler_config(path: Path, override: str | Mapping[str, Any] | None) -> dict[str, Any]:
  """The scheduler config load_pipeline keeps, checked by building its sampler; ValueError naming `path`."""
  if isinstance(override, Mapping):
    config, where = dict(override), 'the scheduler= config'
  else:
    if not path.is_file():
      raise ValueError(f'{path.parent}: the scheduler component has no {path.name}.')
    try:
      config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
      raise ValueError(f'{path}: cannot read the scheduler config ({e}).') from None
    if not isinstance(config, dict):
      raise ValueError(f'{path}: expected a JSON object.')
    where = str(path) if override is None else f'{path} read as {override}'
    if override is not None:
      config['_class_name'] = override
  try:
    from_diffusers_config(config, 1)
  except ValueError as e:
    hint = " (load_pipeline(..., scheduler='DDIMScheduler') reads it as a supported one)" if override is None else ''
    raise ValueError(f'{where}: {e}{hint}') from None
  return config


def save_pipeline(directory: str | os.PathLike, pipeline: StableDiffusionPipeline) -> None:
  """Writes `pipeline` as a diffusers folder (model_index.json and one folder per component) that diffusers'
  StableDiffusionPipeline.from_pretrained and load_pipeline read."""
  directory = Path(directory)
  modules = {'unet': pipeline.unet, 'vae': pipeline.vae, 'text_encoder': pipeline.text_encoder}
  if pipeline.image_encoder is not None:
    modules['image_encoder'] = pipeline.image_encoder
  for name, module in modules.items():
    save_pretrained(directory / name, module, pipeline.params[name])
  pipeline.tokenizer.save(directory / 'tokenizer')
  (directory / 'scheduler').mkdir(parents=True, exist_ok=True)
  (directory / 'scheduler' / _SCHEDULER_FILE).write_text(json.dumps(dict(pipeline.scheduler_config), indent=2))
  index = {'_class_name': 'StableDiffusionPipeline', 'requires_safety_checker': False,
           'unet': ['diffusers', 'UNet2DConditionModel'], 'vae': ['diffusers', 'AutoencoderKL'],
           'text_encoder': ['transformers', 'CLIPTextModel'], 'tokenizer': ['transformers', 'CLIPTokenizer'],
           'scheduler': ['diffusers', pipeline.scheduler_config['_class_name']],
           'safety_checker': [None, None], 'feature_extractor': [None, None],
           'image_encoder': ['transformers', 'CLIPVisionModelWithProjection'] if 'image_encoder' in modules
           else [None, None]}
  (directory / 'model_index.json').write_text(json.dumps(index, indent=2))
