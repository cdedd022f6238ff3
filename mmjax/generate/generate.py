"""`generate` and `stream`: batched KV-cache decoding of token-id prompts, greedy or sampled."""
import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mmjax.generate import decode_loop as loop
from mmjax.generate.adapters import DecoderAdapter, as_adapter
from mmjax.generate.batching import fit_prompts, prepare_model_inputs
from mmjax.generate.sampling import Filters, SamplingValues, sampling_setup

TokenIds = Sequence[int]


@dataclasses.dataclass(frozen=True)
class Completion:
  """One continuation of one prompt.

  tokens: the new token ids, ending with the EOS token or the stop sequence that finished it (if any).
  logprobs: float32 [len(tokens)], log p(token | everything before it) under the model's unmodified
    distribution: log-softmax of the raw logits, at temperature 1 and without top-k/top-p/min-p filtering
    (transformers' `compute_transition_scores(sequences, output.logits, normalize_logits=True)`).
  finish_reason: 'eos', 'stop' (a stop sequence), 'length' (max_new_tokens reached), or None while `stream`
    is still producing it.
  """
  tokens: list[int]
  logprobs: np.ndarray
  finish_reason: str | None


def generate(model: nn.Module | DecoderAdapter, params: Any, prompts: Sequence[TokenIds], *, max_new_tokens: int,
             temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
             min_p: float | None = None, num_samples: int = 1, eos_token_id: int | Sequence[int] | None = None,
             stop_sequences: Sequence[TokenIds] | None = None, seed: int = 0, truncate: str | None = None,
             **model_inputs: Any) -> list[list[Completion]]:
  """Generates up to max_new_tokens tokens after each prompt; returns completions[prompt][sample].

  Args:
    model: a supported flax module (Qwen2ForCausalLM) or a `DecoderAdapter` (multimodal models).
    params: the model's parameters.
    prompts: token-id lists of any lengths (>= 1 token each).
    max_new_tokens: token budget of every continuation (0 returns empty completions).
    temperature: 0 is greedy decoding; > 0 samples from softmax(logits / temperature), after the optional
      top_k, top_p and min_p filters (transformers' order and semantics, see `sampling.py`).
    num_samples: continuations per prompt; each prompt is prefilled once and its cache copied to its samples.
      Needs temperature > 0 (greedy samples would be identical).
    eos_token_id: token id(s) that end a continuation (kept as its last token).
    stop_sequences: token-id sequences that end a continuation when its generated tokens end with one (kept).
    seed: sample s of a prompt draws from PRNG stream (seed, s), so results do not depend on the batch: a prompt
      gives the same samples alone or in a batch, and identical prompts in one call get identical samples.
    truncate: None raises ValueError for a prompt that, with max_new_tokens, exceeds the model's context;
      'left' drops its oldest tokens instead.
    model_inputs: the model's extra prefill inputs for the real prompts (e.g. pixel values), passed unchanged to
      the adapter's `prefill`: arrays are traced, other values (e.g. image sizes as tuples) are static.

  Prompt lengths, the batch size, the token budget and the cache length are bucketed (`batching.bucket`), so many
  calls compile few shapes; `compile_counts()` reports the compilations. Decoding is one jitted lax.while_loop
  that stops when every row has finished.
  """
  *_, completions = stream(model, params, prompts, max_new_tokens=max_new_tokens, temperature=temperature,
                           top_k=top_k, top_p=top_p, min_p=min_p, num_samples=num_samples,
                           eos_token_id=eos_token_id, stop_sequences=stop_sequences, seed=seed, truncate=truncate,
                           chunk=None, **model_inputs)
  return completions


def stream(model: nn.Module | DecoderAdapter, params: Any, prompts: Sequence[TokenIds], *, max_new_tokens: int,
           temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
           min_p: float | None = None, num_samples: int = 1, eos_token_id: int | Sequence[int] | None = None,
           stop_sequences: Sequence[TokenIds] | None = None, seed: int = 0, truncate: str | None = None,
           chunk: int | None = 1, **model_inputs: Any) -> Iterator[list[list[Completion]]]:
  """`generate`, yielding the completions so far after every `chunk` new tokens.

  Every yield is a full completions[prompt][sample] list; unfinished completions have finish_reason None. The
  last yield equals `generate`'s result. chunk=None decodes everything in one while_loop and yields only the
  result. All chunks run the same compiled loop. Arguments are checked when `stream` is called.
  """
  adapter = as_adapter(model)
  filters, values = sampling_setup(temperature, top_k, top_p, min_p)
  if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
    raise ValueError(f'max_new_tokens must be an int >= 0, got {max_new_tokens!r}.')
  if not isinstance(num_samples, int) or num_samples < 1:
    raise ValueError(f'num_samples must be an int >= 1, got {num_samples!r}.')
  if filters.greedy and num_samples > 1:
    raise ValueError(f'num_samples={num_samples} with greedy decoding (temperature=0) gives identical copies; '
                     'pass temperature > 0 to sample.')
  if chunk is not None and chunk < 1:
    raise ValueError(f'chunk must be >= 1 or None, got {chunk}.')
  fitted = fit_prompts(prompts, vocab_size=adapter.vocab_size, max_context=adapter.max_context,
                       reserve=max_new_tokens, truncate=truncate)
  rules = stop_rules(max_new_tokens, eos_token_id, stop_sequences, adapter.vocab_size)
  model_inputs = prepare_model_inputs(adapter, fitted, model_inputs)
  if max_new_tokens == 0:
    return iter([[[Completion([], np.zeros(0, np.float32), 'length')] * num_samples for _ in fitted]])
  return _decode(adapter, params, fitted, filters, values, rules, num_samples, seed, chunk, model_inputs)


def _decode(adapter: DecoderAdapter, params: Any, fitted: list[np.ndarray], filters: Filters,
            values: SamplingValues, rules: loop.StopRules, num_samples: int, seed: int, chunk: int | None,
            model_inputs: dict[str, Any]) -> Iterator[list[list[Completion]]]:
  """`stream`'s generator, for validated arguments and max_new_tokens >= 1."""
  max_new_tokens = int(rules.max_new)
  batch, budget, logits, cache = loop.prefill_prompts(adapter, params, fitted, max_new_tokens, model_inputs)
  rows = len(batch.lengths)
  state = loop.start(logits, cache, np.arange(rows) < batch.num_prompts, jax.random.key(seed),
                     num_samples=num_samples, budget=budget)
  until = 0
  while True:
    until = min(until + (chunk or max_new_tokens), max_new_tokens)
    state = loop.decode_loop(adapter, params, state, values, rules, jnp.int32(until), filters=filters)
    completions = _completions(state, batch.num_prompts, num_samples)
    yield completions
    if until == max_new_tokens or all(c.finish_reason for row in completions for c in row):
      return


def stop_rules(max_new_tokens: int, eos_token_id: int | Sequence[int] | None,
               stop_sequences: Sequence[TokenIds] | None, vocab_size: int) -> loop.StopRules:
  """Validated `StopRules` (EOS ids and right-aligned stop sequences, -1 padded)."""
  eos = [] if eos_token_id is None else [eos_token_id] if isinstance(eos_token_id, (int, np.integer)) else \
      list(eos_token_id)
  stops = [list(s) for s in stop_sequences or ()]
  for name, ids in [('eos_token_id', eos)] + [(f'stop_sequences[{i}]', s) for i, s in enumerate(stops)]:
    if not all(isinstance(t, (int, np.integer)) and 0 <= t < vocab_size for t in ids):
      raise ValueError(f'{name} must hold token ids in [0, {vocab_size}), got {ids}.')
  if any(not s for s in stops):
    raise ValueError('stop_sequences must not contain an empty sequence.')
  width = max([len(s) for s in stops] + [1])
  stop_ids = np.full((max(len(stops), 1), width), -1, np.int32)
  for i, s in enumerate(stops):
    stop_ids[i, width - len(s):] = s
  eos_ids = np.array(eos or [-1], np.int32)
  return loop.StopRules(max_new=jnp.int32(max_new_tokens), eos_ids=jnp.asarray(eos_ids),
                        stop_ids=jnp.asarray(stop_ids))


def _completions(state: loop.DecodeState, num_prompts: int, num_samples: int) -> list[list[Completion]]:
  tokens, logprobs, counts, finish = jax.device_get((state.tokens, state.logprobs, state.num_tokens,
                                                     state.finish))
  out = []
  for p in range(num_prompts):
    row = []
    for r in range(p * num_samples, (p + 1) * num_samples):
      n = int(counts[r])
      row.append(Completion([int(t) for t in tokens[r, :n]], logprobs[r, :n].copy(),
                            loop.FINISH_REASONS.get(int(finish[r]))))
    out.append(row)
  return out
