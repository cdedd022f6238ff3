"""Tiny random transformers models saved as HF folders: the references of the model, weight, generation and
experiment tests, and the logits they give.

HF init zeroes biases and sets norms to identity; every weight is perturbed so that a wrong mapping shows.
`initializer_range=0.2` (HF default 0.02), passed by the generation tests, spreads the logits widely enough that
greedy and beam outputs are diverse: a reference model that repeats one token would prove nothing.
"""
from pathlib import Path

import numpy as np
import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

QWEN2 = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, rope_theta=1e6, initializer_range=0.1, attn_implementation='eager')
# Llama-2-like (multi-head, no scaling); GQA and the RoPE scalings are overrides (LLAMA3_ROPE, LINEAR_ROPE).
LLAMA = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=4, initializer_range=0.1, attn_implementation='eager')
# Llama-3.1 scaling scaled down to head_dim 16: wavelengths 6.3, 20, 63, 199, ... against 64 / 4 and 64 / 1 put one
# channel pair below the band, two in it and five above it.
LLAMA3_ROPE = dict(rope_type='llama3', rope_theta=500000.0, factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                   original_max_position_embeddings=64)
LINEAR_ROPE = dict(rope_type='linear', rope_theta=10000.0, factor=4.0)
SIGLIP = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, image_size=32,
              patch_size=8, attn_implementation='eager')
# LLaVA-OneVision: SigLIP 32 px / patch 8 -> 4 x 4 = 16 tokens per crop; up to 4 x 4 tiles so that the max-9 rule
# (16 * 9 = 144 cells) can trigger.
LLAVA_VISION = dict(SIGLIP, vision_use_head=False)
LLAVA_TEXT = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, rope_theta=1e6, attn_implementation='eager')
# Generation tests spread the logits (see the module docstring): save_qwen2(directory, **WIDE).
WIDE = dict(initializer_range=0.2)
PINPOINTS = [[32 * i, 32 * j] for i in range(1, 5) for j in range(1, 5)]
IMAGE_TOKEN, VIDEO_TOKEN = 126, 127
# The tokenizer's special tokens (ChatML and the LLaVA placeholders) and the text its BPE merges are learnt from.
SPECIAL_TOKENS = ['<|endoftext|>', '<|im_start|>', '<|im_end|>', '<image>', '<video>']
CORPUS = ['You are a helpful assistant.', 'What is shown in this image? A red circle left of a blue square.',
          'Which image has more circles? Describe the video.']


def perturb(model: torch.nn.Module, seed: int) -> None:
  """Adds N(0, 0.05^2) noise to every parameter, in place."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.05 * torch.randn(p.shape, generator=gen))


def save_qwen2(directory: Path, *, tied: bool = False, seed: int = 0, dtype: torch.dtype = torch.float32,
               **overrides) -> transformers.Qwen2ForCausalLM:
  """A random 2-layer Qwen2ForCausalLM (GQA 4/2 heads, vocab 128; `overrides` replace QWEN2 entries) saved to
  `directory`; returns it (eval, in `dtype`)."""
  torch.manual_seed(seed)
  config = transformers.Qwen2Config(**{**QWEN2, 'tie_word_embeddings': tied, **overrides})
  model = transformers.Qwen2ForCausalLM(config).eval()
  perturb(model, seed)
  model.to(dtype).save_pretrained(directory)
  return model


def save_llama(directory: Path, *, tied: bool = False, seed: int = 0, **overrides) -> transformers.LlamaForCausalLM:
  """A random 2-layer LlamaForCausalLM (4 heads, vocab 128; `overrides` replace LLAMA entries, e.g.
  num_key_value_heads=2 or rope_parameters=LLAMA3_ROPE) saved to `directory`; returns it (eval)."""
  torch.manual_seed(seed)
  config = transformers.LlamaConfig(**{**LLAMA, 'tie_word_embeddings': tied, **overrides})
  model = transformers.LlamaForCausalLM(config).eval()
  perturb(model, seed)
  model.save_pretrained(directory)
  return model


def save_siglip(directory: Path, *, use_head: bool = True, seed: int = 0) -> transformers.SiglipVisionModel:
  """A random 3-layer SiglipVisionModel (image 32, patch 8 -> 16 tokens) saved to `directory`; returns it (eval)."""
  torch.manual_seed(seed)
  model = transformers.SiglipVisionModel(transformers.SiglipVisionConfig(vision_use_head=use_head, **SIGLIP)).eval()
  perturb(model, seed)
  model.save_pretrained(directory)
  return model


def save_siglip_model(directory: Path, *, seed: int = 0) -> transformers.SiglipModel:
  """A random SiglipModel (model_type 'siglip': a 1-layer text tower beside the SIGLIP vision tower, as the hub's
  siglip-so400m holds them) saved to `directory`; returns it (eval)."""
  torch.manual_seed(seed)
  text = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4)
  model = transformers.SiglipModel(transformers.SiglipConfig(text_config=text, vision_config=SIGLIP)).eval()
  model.save_pretrained(directory)
  return model


def save_llava(directory: Path, *, tied: bool = False, seed: int = 0, vocab_size: int = 128,
               image_token: int = IMAGE_TOKEN, video_token: int = VIDEO_TOKEN, **overrides
               ) -> transformers.LlavaOnevisionForConditionalGeneration:
  """A random tiny LlavaOnevisionForConditionalGeneration saved to `directory`; returns it (eval).

  `overrides` (e.g. initializer_range) go to the vision, text and top-level configs alike.
  """
  torch.manual_seed(seed)
  config = transformers.LlavaOnevisionConfig(
      vision_config=transformers.SiglipVisionConfig(**LLAVA_VISION, **overrides),
      text_config=transformers.Qwen2Config(**{**LLAVA_TEXT, 'vocab_size': vocab_size}, tie_word_embeddings=tied,
                                           **overrides),
      image_token_index=image_token, video_token_index=video_token, image_grid_pinpoints=PINPOINTS,
      vision_feature_layer=-1, **overrides)
  model = transformers.LlavaOnevisionForConditionalGeneration(config).eval()
  perturb(model, seed)
  model.save_pretrained(directory)
  return model


def bpe_tokenizer() -> Tokenizer:
  """A small Qwen2-like byte-level BPE tokenizer (~300 tokens) with SPECIAL_TOKENS."""
  tokenizer = Tokenizer(models.BPE())
  tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tokenizer.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                show_progress=False)
  tokenizer.train_from_iterator(CORPUS * 4, trainer)
  tokenizer.add_special_tokens(SPECIAL_TOKENS)
  return tokenizer


def save_tokenizer(directory: Path) -> Tokenizer:
  """bpe_tokenizer() saved to `directory` as an HF fast tokenizer (pad <|endoftext|>); returns it."""
  tokenizer = bpe_tokenizer()
  transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token='<|endoftext|>').save_pretrained(
      directory)
  return tokenizer


def save_image_processor(directory: Path) -> None:
  """The LLaVA-OneVision image processor for 32 px crops over PINPOINTS, saved to `directory`.

  The hub preprocessor_config.json sets mean = std = 0.5 (the class default is CLIP's).
  """
  transformers.LlavaOnevisionImageProcessorPil(
      image_mean=[0.5] * 3, image_std=[0.5] * 3, size={'height': 32, 'width': 32},
      image_grid_pinpoints=PINPOINTS).save_pretrained(directory)


def save_llava_folder(directory: Path, **overrides) -> transformers.LlavaOnevisionForConditionalGeneration:
  """A tokenizer, an image processor and a random tiny LLaVA-OneVision sized to them, saved to `directory` (the
  layout `LlavaOnevisionProcessor.from_pretrained` reads); `overrides` go to `save_llava`. Returns the model."""
  tokenizer = save_tokenizer(directory)
  save_image_processor(directory)
  return save_llava(directory, vocab_size=tokenizer.get_vocab_size(), image_token=tokenizer.token_to_id('<image>'),
                    video_token=tokenizer.token_to_id('<video>'), **overrides)


def qwen2_logits(model: transformers.Qwen2ForCausalLM, input_ids: np.ndarray,
                 attention_mask: np.ndarray | None = None) -> np.ndarray:
  """HF logits [B, S, V]; with a mask, positions follow HF generation (cumsum(mask) - 1)."""
  kwargs = {}
  if attention_mask is not None:
    kwargs = dict(attention_mask=torch.from_numpy(attention_mask),
                  position_ids=torch.from_numpy(np.maximum(attention_mask.cumsum(-1) - 1, 0)))
  with torch.no_grad():
    return model(torch.from_numpy(input_ids), **kwargs).logits.float().numpy()


def llava_logits(model: transformers.LlavaOnevisionForConditionalGeneration, ids: np.ndarray, mask: np.ndarray,
                 pixel_values=None, image_sizes=None, batch_num_images=None, videos=None) -> np.ndarray:
  """HF logits [B, S, V] with NHWC pixels moved to NCHW and HF generation positions (cumsum(mask) - 1)."""
  nchw = lambda x: None if x is None else torch.from_numpy(np.moveaxis(np.asarray(x), -1, -3).copy())  # noqa: E731
  kwargs = dict(pixel_values=nchw(pixel_values), pixel_values_videos=nchw(videos),
                image_sizes=None if image_sizes is None else torch.tensor(image_sizes),
                batch_num_images=None if batch_num_images is None else torch.tensor(batch_num_images))
  with torch.no_grad():
    return model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                 position_ids=torch.from_numpy(np.maximum(mask.cumsum(-1) - 1, 0)), **kwargs).logits.numpy()


# CLIP towers: 32 px / patch 8 -> 1 + 16 tokens; text of up to 16 tokens over a 64-token vocabulary.
CLIP_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, image_size=32,
                   patch_size=8, projection_dim=24, attn_implementation='eager')
CLIP_TEXT = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                 max_position_embeddings=16, projection_dim=24, pad_token_id=0, bos_token_id=1,
                 attn_implementation='eager')


def save_clip_vision(directory: Path, *, projection: bool = False, seed: int = 0, **overrides
                     ) -> transformers.CLIPVisionModel | transformers.CLIPVisionModelWithProjection:
  """A random 3-layer CLIPVisionModel (or ...WithProjection; `overrides` replace CLIP_VISION entries, e.g.
  hidden_act='gelu') saved to `directory`; returns it (eval)."""
  torch.manual_seed(seed)
  cls = transformers.CLIPVisionModelWithProjection if projection else transformers.CLIPVisionModel
  model = cls(transformers.CLIPVisionConfig(**{**CLIP_VISION, **overrides})).eval()
  perturb(model, seed)
  model.save_pretrained(directory)
  return model


def save_clip_text(directory: Path, *, projection: bool = False, eos_token_id: int = 63, seed: int = 0, **overrides
                   ) -> transformers.CLIPTextModel | transformers.CLIPTextModelWithProjection:
  """A random 3-layer CLIPTextModel (or ...WithProjection) saved to `directory`; returns it (eval).

  eos_token_id=2 is the legacy convention (HF pools at the largest id); any other id pools at its first position.
  """
  torch.manual_seed(seed)
  cls = transformers.CLIPTextModelWithProjection if projection else transformers.CLIPTextModel
  model = cls(transformers.CLIPTextConfig(**{**CLIP_TEXT, 'eos_token_id': eos_token_id, **overrides})).eval()
  perturb(model, seed)
  model.save_pretrained(directory)
  return model


def save_clip_model(directory: Path, *, seed: int = 0) -> transformers.CLIPModel:
  """A random CLIPModel (model_type 'clip': the CLIP_TEXT and CLIP_VISION towers and both projections, as the
  hub's openai/clip-vit-* hold them) saved to `directory`; returns it (eval)."""
  torch.manual_seed(seed)
  model = transformers.CLIPModel(transformers.CLIPConfig(text_config=CLIP_TEXT, vision_config=CLIP_VISION,
                                                         projection_dim=24)).eval()
  perturb(model, seed)
  model.save_pretrained(directory)
  return model


# LLaVA over a CLIP tower (CLIP_VISION: 16 patch tokens per image after the CLS token) and a Llama decoder.
LLAVA_LLAMA = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-6,
                   attn_implementation='eager')
LLAVA_IMAGE_TOKEN = 127


def save_llava_clip_llama(directory: Path, *, seed: int = 0) -> transformers.LlavaForConditionalGeneration:
  """A random tiny LLaVA-1.5-style LlavaForConditionalGeneration (CLIP tower, features of its penultimate layer
  without the CLS token, Llama decoder) saved to `directory`; returns it (eval)."""
  torch.manual_seed(seed)
  vision = {k: v for k, v in CLIP_VISION.items() if k != 'projection_dim'}
  config = transformers.LlavaConfig(
      vision_config=transformers.CLIPVisionConfig(**vision), text_config=transformers.LlamaConfig(**LLAVA_LLAMA),
      image_token_index=LLAVA_IMAGE_TOKEN, vision_feature_layer=-2, vision_feature_select_strategy='default',
      image_seq_length=16)
  model = transformers.LlavaForConditionalGeneration(config).eval()
  perturb(model, seed)
  model.save_pretrained(directory)
  return model
