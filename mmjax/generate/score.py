"""`score`: per-token log-probabilities of given continuations (multiple choice, DPO reference log-probs, PRMs)."""
import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mmjax.generate.adapters import DecoderAdapter, as_adapter
from mmjax.generate.batching import fit_prompts, pack_prompts, prepare_model_inputs, split_model_inputs
from mmjax.generate.compiles import record
from mmjax.generate.session import TokenIds


def score(model: nn.Module | DecoderAdapter, params: Any, prompts: Sequence[TokenIds],
          continuations: Sequence[TokenIds], *, truncate: str | None = None, **model_inputs: Any
          ) -> list[np.ndarray]:
  """log p(continuation[i][t] | prompt[i], continuation[i][:t]) for every pair; returns float32 [len(cont_i)] each.

  The log-probabilities are those of the model's unmodified distribution (log-softmax of the raw logits), as in
  `generate`'s Completion.logprobs. All pairs run as one batch of prompt + continuation sequences, right-padded to
  a bucketed length (one compilation per bucket). Prompts need >= 1 token; continuations may be empty.
  truncate='left' drops a too-long prompt's oldest tokens (never the continuation's); model_inputs as in
  `generate`.
  """
  adapter = as_adapter(model)
  if len(prompts) != len(continuations):
    raise ValueError(f'got {len(prompts)} prompts but {len(continuations)} continuations.')
  if not len(prompts):
    return []
  fitted = []
  for i, (prompt, continuation) in enumerate(zip(prompts, continuations)):
    tail = np.asarray(continuation, np.int64).reshape(-1)
    if tail.size and (tail.min() < 0 or tail.max() >= adapter.vocab_size):
      raise ValueError(f'continuation {i} has token ids outside [0, {adapter.vocab_size}).')
    (head,) = fit_prompts([prompt], vocab_size=adapter.vocab_size, max_context=adapter.max_context,
                          reserve=tail.size, truncate=truncate)
    fitted.append((head, tail.astype(np.int32)))
  sequences = [np.concatenate([head, tail]) for head, tail in fitted]
  model_inputs = prepare_model_inputs(adapter, sequences, model_inputs)
  batch = pack_prompts(sequences)
  starts = np.zeros(len(batch.lengths), np.int32)
  starts[:len(fitted)] = [len(head) for head, _ in fitted]
  array_inputs, static_inputs = split_model_inputs(model_inputs)
  logprobs = np.asarray(_token_logprobs(adapter, params, batch.tokens, batch.lengths, array_inputs,
                                        static_inputs=static_inputs))
  return [logprobs[i, starts[i] - 1:starts[i] - 1 + len(tail)].copy() for i, (_, tail) in enumerate(fitted)]


@functools.partial(jax.jit, static_argnames=('adapter', 'static_inputs'))
def _token_logprobs(adapter: DecoderAdapter, params: Any, tokens: jax.Array, lengths: jax.Array,
                    array_inputs: dict, *, static_inputs: tuple) -> jax.Array:
  """float32 [B, S]: [b, t] = log p(tokens[b, t + 1] | tokens[b, :t + 1]) (the last column is meaningless)."""
  record('score', rows=tokens.shape[0], length=tokens.shape[1])
  logits = adapter.logits(params, tokens, lengths, **array_inputs, **dict(static_inputs))
  following = jnp.concatenate([tokens[:, 1:], tokens[:, :1]], axis=1)
  return jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), following[..., None], axis=-1)[..., 0]
