"""`generate` and `stream`: batched KV-cache decoding of token-id prompts, greedy or sampled, on a `Session`."""
from collections.abc import Iterator, Sequence
from typing import Any

import flax.linen as nn
import numpy as np
from jax.sharding import Mesh

from mmjax.generate.adapters import DecoderAdapter, as_adapter
from mmjax.generate.batching import fit_prompts, prepare_model_inputs
from mmjax.generate.sampling import sampling_setup
from mmjax.generate.session import Completion, TokenIds, check_request_ids, prefill_fitted, stop_rules

__all__ = ['Completion', 'TokenIds', 'generate', 'stream']


def generate(model: nn.Module | DecoderAdapter, params: Any, prompts: Sequence[TokenIds], *, max_new_tokens: int,
             temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
             min_p: float | None = None, num_samples: int = 1, eos_token_id: int | Sequence[int] | None = None,
             stop_sequences: Sequence[TokenIds] | None = None, seed: int = 0,
             request_ids: Sequence[int] | None = None, truncate: str | None = None, mesh: Mesh | None = None,
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
    seed, request_ids: the sampling streams (`session` module docstring). request_ids (ints in [0, 2**32)) name
      the prompts within a run; None numbers them 0, 1, ... in this call. So different prompts draw
      independently, and a caller that makes several calls (a benchmark, a chat) passes each prompt's index in its
      run so that calls draw independently too; the same seed and request ids reproduce the same samples however
      the prompts are batched. Sample 0 of a prompt is its num_samples=1 sample.
    truncate: None raises ValueError for a prompt that, with max_new_tokens, exceeds the model's context;
      'left' drops its oldest tokens instead.
    mesh: decode on this device mesh: parameters sharded by their logical axes (tensor parallel) and the cache
      rows over the data axes (`mmjax.generate.sharding`); None runs where the parameters are.
    model_inputs: the model's extra prefill inputs for the real prompts (e.g. pixel values), passed unchanged to
      the adapter's `prefill`: arrays are traced, other values (e.g. image sizes as tuples) are static.

  Prompt lengths, the batch size, the token budget and the cache length are bucketed (`batching.bucket`), so many
  calls compile few shapes; `compile_counts()` reports the compilations. Decoding is one jitted lax.while_loop
  that stops when every row has finished. This is `session.prefill`, a `select` that forks each prompt's row into
  its samples, and one `decode`.
  """
  *_, completions = stream(model, params, prompts, max_new_tokens=max_new_tokens, temperature=temperature,
                           top_k=top_k, top_p=top_p, min_p=min_p, num_samples=num_samples,
                           eos_token_id=eos_token_id, stop_sequences=stop_sequences, seed=seed,
                           request_ids=request_ids, truncate=truncate, chunk=None, mesh=mesh, **model_inputs)
  return completions


def stream(model: nn.Module | DecoderAdapter, params: Any, prompts: Sequence[TokenIds], *, max_new_tokens: int,
           temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
           min_p: float | None = None, num_samples: int = 1, eos_token_id: int | Sequence[int] | None = None,
           stop_sequences: Sequence[TokenIds] | None = None, seed: int = 0,
           request_ids: Sequence[int] | None = None, truncate: str | None = None, chunk: int | None = 1,
           mesh: Mesh | None = None, **model_inputs: Any) -> Iterator[list[list[Completion]]]:
  """`generate`, yielding the completions so far after every `chunk` new tokens.

  Every yield is a full completions[prompt][sample] list; unfinished completions have finish_reason None. The
  last yield equals `generate`'s result. chunk=None decodes everything in one while_loop and yields only the
  result. All chunks run the same compiled loop. Arguments are checked when `stream` is called.
  """
  adapter = as_adapter(model)
  filters, _ = sampling_setup(temperature, top_k, top_p, min_p)
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
  stop_rules(max_new_tokens, eos_token_id, stop_sequences, adapter.vocab_size)  # checked before prefill
  ids = check_request_ids(request_ids, len(fitted))
  model_inputs = prepare_model_inputs(adapter, fitted, model_inputs)
  if max_new_tokens == 0:
    return iter([[[Completion([], np.zeros(0, np.float32), 'length')] * num_samples for _ in fitted]])
  session = prefill_fitted(adapter, params, fitted, max_new_tokens, seed, ids, model_inputs, mesh)
  if num_samples > 1:  # each prompt is prefilled once; its samples are forks of its row
    session = session.select(np.repeat(np.arange(len(fitted)), num_samples))
  rows = session.stream(max_new_tokens=max_new_tokens, until=stop_sequences, eos_token_id=eos_token_id,
                        temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, chunk=chunk)
  return ([row[p * num_samples:(p + 1) * num_samples] for p in range(len(fitted))] for row in rows)
