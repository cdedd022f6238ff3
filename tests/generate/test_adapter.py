"""The adapter path a multimodal model takes: extra model inputs reach its prefill (arrays traced and unpadded,
other values static), and a prefill from input embeddings decodes like one from token ids."""
import dataclasses
from typing import Any

import jax
import numpy as np

from mmjax.generate import Qwen2Adapter, generate, score
from tests.numerics import assert_close_programs


@dataclasses.dataclass(frozen=True)
class ShiftedEmbeddings:
  """A test adapter: the prompt's first embedding plus offsets[prompt] * scale, prefilled via `prefill_embeds`."""
  base: Qwen2Adapter
  vocab_size: int
  max_context: int

  def init_cache(self, batch: int, max_len: int) -> Any:
    return self.base.init_cache(batch, max_len)

  def prefill(self, params, tokens, lengths, cache, *, offsets, scale):
    assert isinstance(offsets, jax.Array) and isinstance(scale, float)  # traced array, static float
    embeds = self.base.module.apply({'params': params}, tokens, method='embed')
    embeds = embeds.at[:offsets.shape[0], 0].add(offsets * scale)
    return self.base.prefill_embeds(params, embeds, lengths, cache)

  def decode(self, params, tokens, cache):
    return self.base.decode(params, tokens, cache)

  def extend(self, params, tokens, lengths, cache, **kwargs):  # `score` appends the continuations as text
    return self.base.extend(params, tokens, lengths, cache, **kwargs)

  def logits(self, params, tokens, lengths, *, offsets, scale):
    embeds = self.base.module.apply({'params': params}, tokens, method='embed')
    embeds = embeds.at[:offsets.shape[0], 0].add(offsets * scale)
    mask = np.arange(tokens.shape[1])[None, :] < lengths[:, None]
    return self.base.module.apply({'params': params}, inputs_embeds=embeds, attention_mask=mask).logits


def test_an_embedding_prefill_adapter_plugs_in(tiny, prompts):
  _, module, params, _ = tiny
  adapter = ShiftedEmbeddings(Qwen2Adapter(module), module.config.vocab_size, module.config.max_position_embeddings)
  plain = generate(module, params, prompts, max_new_tokens=8)
  offsets = np.zeros((3, module.config.hidden_size), np.float32)  # 3 prompts, 4 batch rows: inputs stay unpadded
  same = generate(adapter, params, prompts, max_new_tokens=8, offsets=offsets, scale=1.0)
  assert [c.tokens for (c,) in same] == [c.tokens for (c,) in plain]
  shifted = generate(adapter, params, prompts, max_new_tokens=8, offsets=offsets + 3.0, scale=1.0)
  assert [c.tokens for (c,) in shifted] != [c.tokens for (c,) in plain]
  scored = score(adapter, params, prompts, [c.tokens for (c,) in shifted], offsets=offsets + 3.0, scale=1.0)
  for (completion,), logprobs in zip(shifted, scored):
    assert_close_programs(logprobs, completion.logprobs)
