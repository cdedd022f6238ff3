"""The tiny random transformers Qwen2 that the generation tests compare against.

initializer_range=0.2 (HF default 0.02) makes the logits spread widely enough that greedy and beam outputs are
diverse: a reference model that repeats one token would prove nothing.
"""
from pathlib import Path

import numpy as np
import torch
import transformers

from tests.models.hf_reference import QWEN2, _perturb

CONFIG = dict(QWEN2, initializer_range=0.2)


def save_tiny_qwen2(directory: Path, *, seed: int = 0, **overrides) -> transformers.Qwen2ForCausalLM:
  """A random 2-layer Qwen2ForCausalLM (vocab 128 unless overridden) saved to `directory`; returns it (eval)."""
  torch.manual_seed(seed)
  model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**{**CONFIG, **overrides})).eval()
  _perturb(model, seed)
  model.save_pretrained(directory)
  return model


def hf_generate(model: transformers.Qwen2ForCausalLM, prompts: list[list[int]], **kwargs):
  """transformers `generate` on left-padded prompts; returns (new tokens [B, N] np, the generate output)."""
  width = max(len(p) for p in prompts)
  ids = np.zeros((len(prompts), width), np.int64)
  mask = np.zeros((len(prompts), width), np.int64)
  for i, p in enumerate(prompts):
    ids[i, width - len(p):] = p
    mask[i, width - len(p):] = 1
  with torch.no_grad():
    out = model.generate(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), pad_token_id=0,
                         return_dict_in_generate=True, **kwargs)
  return out.sequences[:, width:].numpy(), out
