"""The LLaVA-OneVision model of a run: its config, the module and the parameter init.

Training runs the model's fixed-shape forward (`mmjax.models.llava.logits_fn`: the tower and projector on every
crop of the batch, each visual token gathered from the crop features and `image_newline` with the taps of
mmjax.models.visual_taps, the decoder on the merged embeddings), the same tokens as
`LlavaOnevisionForConditionalGeneration.embed` without its per-size shapes.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from mmjax.models.llava_onevision import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration
from mmjax.models.qwen2 import Qwen2Config
from mmjax.models.siglip import SiglipVisionConfig

Params = Any
QWEN2_INIT_STD = 0.02  # the std mmjax.models.qwen2 initialises its matrices with


def model_config(config: ml_collections.ConfigDict, image_token_id: int, video_token_id: int
                 ) -> LlavaOnevisionConfig:
  """The architecture of config.model (SigLIP without its pooling head, features of its last layer)."""
  crop = config.model.vision.image_size
  anyres_fields = {}
  if config.data.image_layout == 'anyres':  # else (flat) the exported config keeps HF's AnyRes defaults
    anyres_fields = dict(image_grid_pinpoints=tuple((r * crop, c * crop) for r, c in config.data.grids),
                         vision_aspect_ratio=f'anyres_max_{config.data.anyres_max}')
  return LlavaOnevisionConfig(
      vision_config=SiglipVisionConfig(**config.model.vision.to_dict(), vision_use_head=False),
      text_config=Qwen2Config(**config.model.text.to_dict()),
      image_token_index=image_token_id, video_token_index=video_token_id, **anyres_fields)


def check_matches(cfg: LlavaOnevisionConfig, directory: str) -> None:
  """ValueError listing every size of config.model that differs from an HF directory's config.json (if any)."""
  path = Path(directory) / 'config.json'
  if not path.is_file():
    return
  hf_dict = json.loads(path.read_text())
  if hf_dict.get('model_type') != 'llava_onevision':
    raise ValueError(f'{path} has model_type {hf_dict.get("model_type")!r}; expected \'llava_onevision\'')
  hf = LlavaOnevisionConfig.from_hf_dict(hf_dict)
  problems = []
  for part, ours, theirs in (('vision', cfg.vision_config, hf.vision_config), ('text', cfg.text_config,
                                                                               hf.text_config)):
    for key in ours.__dataclass_fields__:
      if key not in ('vision_use_head', 'scan_layers') and getattr(ours, key) != getattr(theirs, key):
        problems.append(f'model.{part}.{key}: config {getattr(ours, key)!r}, checkpoint {getattr(theirs, key)!r}')
  if hf.vision_feature_layer != -1 or hf.vision_config.vision_use_head:
    problems.append(f'the checkpoint takes vision_feature_layer {hf.vision_feature_layer} with vision_use_head '
                    f'{hf.vision_config.vision_use_head}; OneVision uses -1 of a tower without its head')
  if problems:
    raise ValueError(f'{path} does not match the config (pick the right variant or override '
                     '--config.model.*):\n  ' + '\n  '.join(problems))


def make_module(cfg: LlavaOnevisionConfig, config: ml_collections.ConfigDict
                ) -> LlavaOnevisionForConditionalGeneration:
  return LlavaOnevisionForConditionalGeneration(cfg, dtype=jnp.dtype(config.compute_dtype),
                                                param_dtype=jnp.dtype(config.param_dtype),
                                                remat_policy=config.remat_policy)


def random_init(module: LlavaOnevisionForConditionalGeneration, text_std: float = QWEN2_INIT_STD
                ) -> Callable[[jax.Array], Params]:
  """rng -> boxed params (every tower, projector and decoder weight; embed creates the vision tower at init).

  text_std: the std of the decoder's normally initialised matrices and embeddings (HF initializer_range).
  mmjax.models.qwen2 draws them from N(0, 0.02^2); other values rescale those draws. Tiny decoders need about
  hidden^-1/2: at 0.02 a 64-wide decoder's attention starts so flat that content lookups (which option holds the
  answer) are not learned in 20k steps, at 0.1 within 1k.
  """
  scale = text_std / QWEN2_INIT_STD

  def rescale(path, box):
    return box.replace_boxed(box.value * scale) if path[-1].key in ('kernel', 'embedding') else box

  def init(rng):
    params = dict(module.init(rng, jnp.zeros((1, 1), jnp.int32))['params'])
    if scale != 1.0:
      params['language_model'] = jax.tree_util.tree_map_with_path(
          rescale, params['language_model'], is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata))
    return params

  return init


def flops_per_example(cfg: LlavaOnevisionConfig, length: int, crops: int) -> float:
  """Training FLOPs of one example (3 x forward; forward = 2 x weights x tokens + attention scores and values)."""
  t, v = cfg.text_config, cfg.vision_config
  kv = t.num_key_value_heads * t.head_dim
  text_layer = 2 * t.hidden_size * t.hidden_size + 2 * t.hidden_size * kv + 3 * t.hidden_size * t.intermediate_size
  text = length * (t.num_hidden_layers * text_layer + t.hidden_size * t.vocab_size)
  text_attention = t.num_hidden_layers * 2 * length * length * t.hidden_size
  tokens = crops * v.num_patches
  vision_layer = 4 * v.hidden_size ** 2 + 2 * v.hidden_size * v.intermediate_size
  vision = tokens * (v.num_hidden_layers * vision_layer + v.hidden_size * t.hidden_size + t.hidden_size ** 2)
  vision_attention = v.num_hidden_layers * 2 * crops * v.num_patches ** 2 * v.hidden_size
  return 3.0 * (2.0 * (text + vision) + 2.0 * (text_attention + vision_attention))
