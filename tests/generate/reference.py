"""transformers `generate` on left-padded prompts: the reference of the generation tests."""
import numpy as np
import torch
import transformers


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
