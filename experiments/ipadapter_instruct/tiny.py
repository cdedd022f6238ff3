"""A tiny random Stable Diffusion stack for the smoke runs and the tests: every module of SD1.5 + IP-Adapter at toy
sizes (32x32 RGB images, 16x16x4 latents, width-32 CLIP towers, a letters-only tokenizer), built in memory with
random weights in a few seconds. `tiny_pipeline(seed)` is a StableDiffusionPipeline (with an image encoder) that
`mmjax.models.sd15.save_pipeline` writes as a diffusers folder; `TINY_RESAMPLER` is a resampler sized for it.
"""
from __future__ import annotations

import string

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from experiments.ipadapter_instruct.resampler import ResamplerConfig
from mmjax.data.clip_tokenizer import BOS, END_OF_WORD, EOS, CLIPTokenizer
from mmjax.models.clip import CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModelWithProjection
from mmjax.models.sd15 import StableDiffusionPipeline
from mmjax.models.unet import UNet2DConditionConfig, UNet2DConditionModel
from mmjax.models.vae import AutoencoderKL, AutoencoderKLConfig

IMAGE_SIZE = 32  # pixels; the tiny VAE halves it, so latents are 16 x 16 x 4
WIDTH = 32  # the CLIP towers' hidden size and the UNet's cross_attention_dim
# The spec's scheduler (DDIM as the IPAdapter-Instruct demo configures it).
SCHEDULER = {'_class_name': 'DDIMScheduler', 'num_train_timesteps': 1000, 'beta_start': 0.00085, 'beta_end': 0.012,
             'beta_schedule': 'scaled_linear', 'clip_sample': False, 'set_alpha_to_one': False, 'steps_offset': 1,
             'prediction_type': 'epsilon'}

UNET = UNet2DConditionConfig(sample_size=IMAGE_SIZE // 2, block_out_channels=(32, 64), layers_per_block=1,
                             cross_attention_dim=WIDTH, attention_head_dim=4, norm_num_groups=8,
                             down_block_types=('CrossAttnDownBlock2D', 'DownBlock2D'),
                             up_block_types=('UpBlock2D', 'CrossAttnUpBlock2D'))
VAE = AutoencoderKLConfig(block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8, latent_channels=4,
                          sample_size=IMAGE_SIZE)
# A vocabulary of single characters (each also as a word end) and no merges: every word spells out letter by letter.
_CHARACTERS = string.ascii_lowercase + string.digits + ".,!?'-:;()"
_TOKENS = [*_CHARACTERS, *(c + END_OF_WORD for c in _CHARACTERS), BOS, EOS]
VOCAB = {token: i for i, token in enumerate(_TOKENS)}
TEXT = CLIPTextConfig(vocab_size=len(VOCAB), hidden_size=WIDTH, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, max_position_embeddings=77, pad_token_id=VOCAB[EOS],
                      bos_token_id=VOCAB[BOS], eos_token_id=VOCAB[EOS])
VISION = CLIPVisionConfig(hidden_size=WIDTH, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                          image_size=IMAGE_SIZE, patch_size=8, projection_dim=WIDTH, with_projection=True)
# 4 image tokens from the penultimate vision layer (17 x 32), instruction and prompt tokens of the text tower.
TINY_RESAMPLER = ResamplerConfig(dim=WIDTH, depth=2, dim_head=8, heads=4, num_queries=4, embedding_dim=WIDTH,
                                 output_dim=UNET.cross_attention_dim, ff_mult=2, instruct=True, text_dim=WIDTH)


def tiny_tokenizer() -> CLIPTokenizer:
  return CLIPTokenizer(VOCAB, [])


def random_params(module: nn.Module, *inputs: jax.Array, seed: int) -> dict:
  """Random float32 parameters for `module.init(key, *inputs)`, drawn with NumPy from the shapes alone (a jitted
  flax init of the tiny UNet compiles for half a minute on two cores): weights N(0, 1/fan_in) with fan_in the
  product of all but the last axis, LayerNorm/GroupNorm scales 1 + N(0, 0.02²), every other vector N(0, 0.02²), so
  that no weight sits at a value (0, 1) that would hide a wrong mapping."""
  shapes = nn.unbox(jax.eval_shape(module.init, jax.random.key(0), *inputs)['params'])
  rng = np.random.default_rng(seed)

  def draw(path, leaf) -> np.ndarray:
    shape = leaf.shape
    if len(shape) >= 2:
      return rng.normal(0.0, np.prod(shape[:-1]) ** -0.5, shape).astype(np.float32)
    base = 1.0 if jax.tree_util.keystr(path).endswith("['scale']") else 0.0
    return (base + rng.normal(0.0, 0.02, shape)).astype(np.float32)

  return jax.tree_util.tree_map_with_path(draw, shapes)


def tiny_pipeline(seed: int = 0) -> StableDiffusionPipeline:
  """The tiny SD1.5 stack with random float32 weights drawn from `seed` (the same seed, the same weights)."""
  unet, vae = UNet2DConditionModel(UNET), AutoencoderKL(VAE)
  text, vision = CLIPTextModel(TEXT), CLIPVisionModelWithProjection(VISION)
  latent = IMAGE_SIZE // VAE.downsample_factor
  pixels = jnp.zeros((1, IMAGE_SIZE, IMAGE_SIZE, 3))
  params = {
      'unet': random_params(unet, jnp.zeros((1, latent, latent, 4)), jnp.zeros((1,), jnp.int32),
                            jnp.zeros((1, 77, WIDTH)), seed=seed),
      'vae': random_params(vae, pixels, seed=seed + 1),
      'text_encoder': random_params(text, jnp.zeros((1, 77), jnp.int32), seed=seed + 2),
      'image_encoder': random_params(vision, pixels, seed=seed + 3)}
  return StableDiffusionPipeline(unet=unet, vae=vae, text_encoder=text, tokenizer=tiny_tokenizer(),
                                 scheduler_config=dict(SCHEDULER), params=params, image_encoder=vision)
