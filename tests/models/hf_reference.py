"""Tiny random transformers reference models saved as HF directories, shared by the model and weight tests.

HF init zeroes biases and sets norms to identity; every weight is perturbed so that a wrong mapping shows.
"""
from pathlib import Path

import numpy as np
import torch
import transformers

QWEN2 = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, rope_theta=1e6, initializer_range=0.1, attn_implementation='eager')
SIGLIP = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, image_size=32,
              patch_size=8, attn_implementation='eager')


def _perturb(model: torch.nn.Module, seed: int) -> None:
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.05 * torch.randn(p.shape, generator=gen))


def save_qwen2(directory: Path, *, tied: bool, seed: int = 0, dtype: torch.dtype = torch.float32
               ) -> transformers.Qwen2ForCausalLM:
  """A random 2-layer Qwen2ForCausalLM (GQA 4/2 heads, vocab 128) saved to `directory`; returns it (eval)."""
  torch.manual_seed(seed)
  model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(tie_word_embeddings=tied, **QWEN2)).eval()
  _perturb(model, seed)
  model.to(dtype).save_pretrained(directory)
  return model


def save_siglip(directory: Path, *, use_head: bool = True, seed: int = 0) -> transformers.SiglipVisionModel:
  """A random 3-layer SiglipVisionModel (image 32, patch 8 -> 16 tokens) saved to `directory`; returns it (eval)."""
  torch.manual_seed(seed)
  config = transformers.SiglipVisionConfig(vision_use_head=use_head, **SIGLIP)
  model = transformers.SiglipVisionModel(config).eval()
  _perturb(model, seed)
  model.save_pretrained(directory)
  return model


def qwen2_logits(model: transformers.Qwen2ForCausalLM, input_ids: np.ndarray,
                 attention_mask: np.ndarray | None = None) -> np.ndarray:
  """HF logits [B, S, V]; with a mask, positions follow HF generation (cumsum(mask) - 1)."""
  kwargs = {}
  if attention_mask is not None:
    kwargs = dict(attention_mask=torch.from_numpy(attention_mask),
                  position_ids=torch.from_numpy(np.maximum(attention_mask.cumsum(-1) - 1, 0)))
  with torch.no_grad():
    return model(torch.from_numpy(input_ids), **kwargs).logits.float().numpy()
