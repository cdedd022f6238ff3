"""Beam search with transformers' semantics (`generate(num_beams=K, early_stopping=True, do_sample=False)`).

Per prompt and step, as in transformers' vectorised `_beam_search`: the C = max(2, 1 + #eos) * K best
continuations of all K running beams (by summed log-probability) are taken; those that end (EOS, or the token
budget) and rank among the first K become finished candidates scored sum / new_tokens ** length_penalty, and the K
best finished hypotheses are kept; the K best continuations that did not end keep running. A prompt stops taking
hypotheses once it holds K (early_stopping=True); the loop ends when every prompt is full, when no running beam
can beat a prompt's worst kept hypothesis, or when the budget is spent.
"""
import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from mmjax.generate.adapters import DecoderAdapter, as_adapter, take_rows
from mmjax.generate.batching import bucket, fit_prompts, prepare_model_inputs
from mmjax.generate.compiles import record
from mmjax.generate.session import TokenIds, prefill_fitted, stop_rules

_NEG = -1.0e9  # transformers' "impossible" score; sums with it stay far below any real score


@dataclasses.dataclass(frozen=True)
class Hypothesis:
  """A finished beam: its new tokens (with the EOS token that ended it, if any) and its score
  sum(log-probabilities) / len(tokens) ** length_penalty (transformers' `sequences_scores`)."""
  tokens: list[int]
  score: float


@flax.struct.dataclass
class BeamState:
  """Loop carry for B prompts x K beams, N = bucketed budget; the cache has B * K rows (prompt-major).

  running: int32 [B, K, N] tokens and float32 [B, K] summed log-probs of the running beams.
  finished: int32 [B, K, N], scores float32 [B, K] (best first), lengths int32 [B, K], is_finished bool [B, K].
  improvable: bool [B], transformers' `is_early_stop_heuristic_unsatisfied`. more: bool scalar, loop condition.
  step: int32 scalar, tokens per running beam. real: bool [B], False for the prompts that pad the batch.
  """
  cache: Any
  running: jax.Array
  running_scores: jax.Array
  finished: jax.Array
  scores: jax.Array
  lengths: jax.Array
  is_finished: jax.Array
  improvable: jax.Array
  more: jax.Array
  step: jax.Array
  real: jax.Array


def beam_search(model: nn.Module | DecoderAdapter, params: Any, prompts: Sequence[TokenIds], *, num_beams: int,
                max_new_tokens: int, length_penalty: float = 1.0, eos_token_id: int | Sequence[int] | None = None,
                truncate: str | None = None, mesh: Mesh | None = None, **model_inputs: Any
                ) -> list[list[Hypothesis]]:
  """Beam search after each prompt; returns hypotheses[prompt], the num_beams best, best first.

  They equal transformers' `generate(num_beams=num_beams, early_stopping=True, length_penalty=length_penalty,
  do_sample=False, num_return_sequences=num_beams)` token for token, with its `sequences_scores`
  (max_new_tokens=0 gives one empty hypothesis). Arguments as in `generate`; each prompt is prefilled once and
  its cache copied to its beams (a `session.prefill`), which are reordered (a row gather) at every step.
  """
  adapter = as_adapter(model)
  if not isinstance(num_beams, int) or num_beams < 1:
    raise ValueError(f'num_beams must be an int >= 1, got {num_beams!r}.')
  if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
    raise ValueError(f'max_new_tokens must be an int >= 0, got {max_new_tokens!r}.')
  fitted = fit_prompts(prompts, vocab_size=adapter.vocab_size, max_context=adapter.max_context,
                       reserve=max_new_tokens, truncate=truncate)
  eos_ids = stop_rules(max_new_tokens, eos_token_id, None, adapter.vocab_size).eos_ids
  candidates = max(2, 1 + int(np.sum(np.asarray(eos_ids) >= 0))) * num_beams
  if candidates > num_beams * adapter.vocab_size:
    raise ValueError(f'{num_beams} beams need {candidates} candidates per step, more than the '
                     f'{num_beams * adapter.vocab_size} that the vocabulary offers.')
  model_inputs = prepare_model_inputs(adapter, fitted, model_inputs)
  if max_new_tokens == 0:
    return [[Hypothesis([], 0.0)] for _ in fitted]
  session = prefill_fitted(adapter, params, fitted, max_new_tokens, 0, np.zeros(len(fitted), np.uint32),
                           model_inputs, mesh)  # beam search never samples: the streams are unused
  real = np.arange(len(session.lengths)) < session.num_rows
  settings = (jnp.int32(max_new_tokens), eos_ids, jnp.float32(length_penalty))
  state = _start(session.logits, session.cache, real, *settings, num_beams=num_beams,
                 budget=bucket(max_new_tokens, minimum=8), candidates=candidates)
  state = _loop(adapter, params, state, *settings, candidates=candidates)
  finished, scores, lengths, is_finished = jax.device_get((state.finished, state.scores, state.lengths,
                                                           state.is_finished))
  return [[Hypothesis([int(t) for t in finished[p, k, :lengths[p, k]]], float(scores[p, k]))
           for k in range(num_beams) if is_finished[p, k]] for p in range(session.num_rows)]


@functools.partial(jax.jit, static_argnames=('num_beams', 'budget', 'candidates'))
def _start(logits: jax.Array, cache: Any, real: jax.Array, max_new: jax.Array, eos_ids: jax.Array,
           length_penalty: jax.Array, *, num_beams: int, budget: int, candidates: int) -> BeamState:
  """Copies each prompt's prefill (logits [B, V], cache) to its beams and takes the first step."""
  record('beam_start', rows=logits.shape[0] * num_beams, budget=budget)
  b, k = logits.shape[0], num_beams
  tokens = jnp.zeros((b, k, budget), jnp.int32)
  state = BeamState(
      cache=take_rows(cache, jnp.repeat(jnp.arange(b), k)), running=tokens,
      # Only beam 0 is live at first, so the first step does not pick the same token K times.
      running_scores=jnp.zeros((b, k), jnp.float32).at[:, 1:].set(_NEG), finished=tokens,
      scores=jnp.full((b, k), _NEG, jnp.float32), lengths=jnp.zeros((b, k), jnp.int32),
      is_finished=jnp.broadcast_to(~real[:, None], (b, k)), improvable=real, more=jnp.bool_(True),
      step=jnp.int32(0), real=real)
  return _step(state, jnp.repeat(logits, k, axis=0), max_new, eos_ids, length_penalty, candidates)


@functools.partial(jax.jit, static_argnames=('adapter', 'candidates'), donate_argnames=('state',))
def _loop(adapter: DecoderAdapter, params: Any, state: BeamState, max_new: jax.Array, eos_ids: jax.Array,
          length_penalty: jax.Array, *, candidates: int) -> BeamState:
  """Decodes every running beam's last token and takes beam steps while `state.more`."""
  record('beam_loop', rows=state.running.shape[0] * state.running.shape[1], budget=state.running.shape[2])

  def body(s: BeamState) -> BeamState:
    last = jax.lax.dynamic_index_in_dim(s.running, s.step - 1, axis=2, keepdims=False)
    logits, cache = adapter.decode(params, last.reshape(-1), s.cache)
    return _step(s.replace(cache=cache), logits, max_new, eos_ids, length_penalty, candidates)

  return jax.lax.while_loop(lambda s: s.more, body, state)


def _step(s: BeamState, logits: jax.Array, max_new: jax.Array, eos_ids: jax.Array, length_penalty: jax.Array,
          candidates: int) -> BeamState:
  """One beam step from next-token logits [B * K, V]."""
  b, k, _ = s.running.shape
  vocab = logits.shape[-1]
  summed = (jax.nn.log_softmax(logits, axis=-1).reshape(b, k, vocab) + s.running_scores[:, :, None])
  top_scores, top_index = jax.lax.top_k(summed.reshape(b, k * vocab), candidates)
  parent, token = top_index // vocab, top_index % vocab
  grown = jnp.take_along_axis(s.running, parent[..., None], axis=1).at[:, :, s.step].set(token)
  ends = jnp.any(token[..., None] == eos_ids, axis=-1) | (s.step + 1 >= max_new)

  # Beams that go on: the K best continuations that did not end.
  alive_scores = top_scores + ends * _NEG
  keep = jax.lax.top_k(alive_scores, k)[1]
  parents = jnp.take_along_axis(parent, keep, axis=1)
  rows = (jnp.arange(b)[:, None] * k + parents).reshape(-1)
  cache = take_rows(s.cache, rows)

  # Finished hypotheses: merge the ended continuations ranked in the first K with those kept so far.
  new_length = s.step + 1
  just_finished = ends & (jnp.arange(candidates) < k)[None, :]
  full = jnp.all(s.is_finished, axis=1, keepdims=True)
  final = (top_scores / new_length.astype(jnp.float32) ** length_penalty + full * _NEG
           + (~s.improvable)[:, None] * _NEG + (~just_finished) * _NEG)
  merged_scores = jnp.concatenate([s.scores, final], axis=1)
  best = jax.lax.top_k(merged_scores, k)[1]

  def pick(kept: jax.Array, new: jax.Array) -> jax.Array:
    merged = jnp.concatenate([kept, new], axis=1)
    index = best.reshape(best.shape + (1,) * (merged.ndim - 2))
    return jnp.take_along_axis(merged, index, axis=1)

  is_finished = pick(s.is_finished, just_finished)
  running_scores = jnp.take_along_axis(alive_scores, keep, axis=1)
  scores = pick(s.scores, final)
  # transformers' early-stop heuristic (early_stopping=True): can the best running beam still beat the worst
  # kept hypothesis, judged at the current length?
  best_possible = running_scores[:, :1] / new_length.astype(jnp.float32) ** length_penalty
  worst_kept = jnp.where(is_finished, jnp.min(scores, axis=1, keepdims=True), _NEG)
  improvable = s.improvable & jnp.any(best_possible > worst_kept, axis=1)
  all_end = jnp.all(ends | ~s.real[:, None])
  more = jnp.any(improvable) & ~jnp.all(is_finished) & ~all_end
  return s.replace(cache=cache, running=jnp.take_along_axis(grown, keep[..., None], axis=1),
                   running_scores=running_scores, finished=pick(s.finished, grown),
                   scores=scores, lengths=pick(s.lengths, jnp.broadcast_to(new_length, (b, candidates))),
                   is_finished=is_finished, improvable=improvable, more=more, step=new_length)
