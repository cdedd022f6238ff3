"""`score`: per-token log-probabilities of given continuations (multiple choice, DPO reference log-probs, PRMs)."""
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import numpy as np
from jax.sharding import Mesh

from mmjax.generate.adapters import DecoderAdapter, as_adapter
from mmjax.generate.batching import fit_prompts, prepare_model_inputs
from mmjax.generate.session import TokenIds, prefill_fitted


def score(model: nn.Module | DecoderAdapter, params: Any, prompts: Sequence[TokenIds],
          continuations: Sequence[TokenIds], *, truncate: str | None = None, mesh: Mesh | None = None,
          **model_inputs: Any) -> list[np.ndarray]:
  """log p(continuation[i][t] | prompt[i], continuation[i][:t]) for every pair; returns float32 [len(cont_i)] each.

  The log-probabilities are those of the model's unmodified distribution (log-softmax of the raw logits), as in
  `generate`'s Completion.logprobs. Built on a session: the prompts are prefilled (a prompt that several pairs
  share, as in multiple choice, once when there are no model inputs), each pair gets a fork of its prompt's row
  (`Session.select`), and the continuations are appended and scored in one `Session.score`. Prompts need >= 1
  token; continuations may be empty and are text (images and videos enter with the prompts). truncate='left' drops
  a too-long prompt's oldest tokens (never the continuation's); mesh and model_inputs as in `generate`. The adapter
  needs `extend` (see `mmjax.generate.adapters`).
  """
  adapter = as_adapter(model)
  if len(prompts) != len(continuations):
    raise ValueError(f'got {len(prompts)} prompts but {len(continuations)} continuations.')
  if not len(prompts):
    return []
  heads, tails = [], []
  for i, (prompt, continuation) in enumerate(zip(prompts, continuations)):
    tail = np.asarray(continuation, np.int64).reshape(-1)
    if tail.size and (tail.min() < 0 or tail.max() >= adapter.vocab_size):
      raise ValueError(f'continuation {i} has token ids outside [0, {adapter.vocab_size}).')
    heads += fit_prompts([prompt], vocab_size=adapter.vocab_size, max_context=adapter.max_context,
                         reserve=tail.size, truncate=truncate)
    tails.append(tail.astype(np.int32))
  rows = list(range(len(heads)))
  if not model_inputs:  # model inputs belong to their prompts, so only text-only prompts are shared
    first: dict[tuple[int, ...], int] = {}
    rows = [first.setdefault(tuple(h.tolist()), len(first)) for h in heads]
    heads = [heads[rows.index(r)] for r in range(len(first))]
  model_inputs = prepare_model_inputs(adapter, heads, model_inputs)
  session = prefill_fitted(adapter, params, heads, max(len(t) for t in tails), 0, np.zeros(len(heads), np.uint32),
                           model_inputs, mesh)  # scoring never samples: the streams are unused
  if len(heads) < len(rows):
    session = session.select(rows)
  return session.score(tails)
