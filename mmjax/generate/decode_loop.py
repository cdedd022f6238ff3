"""The jitted pieces of decoding: prefill, and the decode `lax.while_loop` over the rows of a session.

Every row carries its own cache row (`session.Session` forks rows by gathering them). Each loop step selects every
running row's next token from its pending logits, then feeds the tokens to the model for the next logits; a row
that has finished keeps the logits after its last token, and the caller rewinds its cache to its own tokens, so
the session can go on. The loop runs until every row is finished (EOS, a stop sequence, or its token budget) or
until a step bound `until`, so a caller can stream by running it in chunks; one call with until = budget is one
while_loop.
"""
import functools
from typing import Any

import chex
import flax.struct
import jax
import jax.numpy as jnp

from mmjax.generate.adapters import DecoderAdapter
from mmjax.generate.batching import bucket, pack_prompts, split_model_inputs
from mmjax.generate.compiles import record
from mmjax.generate.sampling import Filters, SamplingValues, select_tokens

RUNNING, EOS, STOP, LENGTH = 0, 1, 2, 3
FINISH_REASONS = {EOS: 'eos', STOP: 'stop', LENGTH: 'length'}
PAD = 0  # token written after a row finishes; results are cut at num_tokens, so it never shows


@flax.struct.dataclass
class StopRules:
  """Traced stopping rules.

  max_new: int32 scalar token budget per row. eos_ids: int32 [E], -1 = unused.
  stop_ids: int32 [S, L] stop sequences right-aligned, -1 = padding (an all -1 row never matches).
  """
  max_new: jax.Array
  eos_ids: jax.Array
  stop_ids: jax.Array


@flax.struct.dataclass
class DecodeState:
  """The loop carry. R rows, N = bucketed token budget.

  cache: the adapter's cache, R rows. logits: float32 [R, V], the pending next-token logits.
  tokens: int32 [R, N] and logprobs float32 [R, N] of the generated tokens; num_tokens: int32 [R].
  finish: int32 [R], RUNNING or the finish reason. step: int32 scalar, tokens generated so far.
  keys: PRNG keys [R], each row's stream; drawn: int32 [R], tokens the row drew before this loop. Step t draws
  with fold_in(keys[r], drawn[r] + t), so decoding in several calls continues one stream.
  """
  cache: Any
  logits: jax.Array
  tokens: jax.Array
  logprobs: jax.Array
  num_tokens: jax.Array
  finish: jax.Array
  step: jax.Array
  keys: jax.Array
  drawn: jax.Array


@functools.partial(jax.jit, static_argnames=('adapter', 'static_inputs', 'cache_len'))
def prefill(adapter: DecoderAdapter, params: Any, tokens: jax.Array, lengths: jax.Array, array_inputs: dict,
            *, static_inputs: tuple, cache_len: int) -> tuple[jax.Array, Any]:
  """(logits [B, V] after each prompt, cache of cache_len slots) for right-padded tokens [B, P], lengths [B].

  array_inputs, static_inputs: the model inputs from `batching.split_model_inputs`.
  """
  record('prefill', rows=tokens.shape[0], prompt_len=tokens.shape[1], cache_len=cache_len,
         **{name: tuple(value.shape) for name, value in array_inputs.items()}, **dict(static_inputs))
  cache = adapter.init_cache(tokens.shape[0], cache_len)
  logits, cache = adapter.prefill(params, tokens, lengths, cache, **array_inputs, **dict(static_inputs))
  # The adapter contract: one row of last-token logits per prompt (not [B, P, V]), which the loop samples from.
  chex.assert_shape(logits, (tokens.shape[0], adapter.vocab_size))
  return logits, cache


def prefill_prompts(adapter: DecoderAdapter, params: Any, fitted: list, max_new_tokens: int, model_inputs: dict
                    ) -> tuple[Any, int, jax.Array, Any]:
  """Packs fitted prompts (see `batching.pack_prompts`) and prefills them into a cache with room for
  max_new_tokens, both lengths bucketed. Returns (the packed batch, the token budget, logits [B, V], cache)."""
  batch = pack_prompts(fitted)
  budget = bucket(max_new_tokens, minimum=8)
  array_inputs, static_inputs = split_model_inputs(model_inputs)
  logits, cache = prefill(adapter, params, batch.tokens, batch.lengths, array_inputs, static_inputs=static_inputs,
                          cache_len=cache_len(batch.tokens.shape[1], budget))
  return batch, budget, logits, cache


def cache_len(prompt_len: int, budget: int) -> int:
  """Cache slots per row for a bucketed prompt length and token budget."""
  return bucket(prompt_len + budget)


@functools.partial(jax.jit, static_argnames=('budget',))
def begin(logits: jax.Array, cache: Any, real: jax.Array, keys: jax.Array, drawn: jax.Array, *, budget: int
          ) -> DecodeState:
  """The loop's initial state for R rows, no token selected yet.

  logits [R, V] and cache: each row's pending next-token logits and its cache; real: bool [R], False for
  batch-padding rows (born finished); keys: PRNG keys [R]; drawn: int32 [R] (see DecodeState).
  """
  record('begin', rows=logits.shape[0], budget=budget)
  rows = logits.shape[0]
  # The cache passes through uncopied (no second cache in memory): the loop, which donates its state, consumes it.
  return DecodeState(
      cache=cache, logits=logits, tokens=jnp.full((rows, budget), PAD, jnp.int32),
      logprobs=jnp.zeros((rows, budget), jnp.float32), num_tokens=jnp.zeros((rows,), jnp.int32),
      finish=jnp.where(real, RUNNING, LENGTH), step=jnp.int32(0), keys=keys, drawn=drawn)


@functools.partial(jax.jit, static_argnames=('adapter', 'filters'), donate_argnames=('state',))
def decode_loop(adapter: DecoderAdapter, params: Any, state: DecodeState, values: SamplingValues,
                rules: StopRules, until: jax.Array, *, filters: Filters) -> DecodeState:
  """Selects tokens and decodes them while some row runs and state.step < until."""
  record('decode_loop', rows=state.logits.shape[0], budget=state.tokens.shape[1], filters=filters)

  def running(s: DecodeState) -> jax.Array:
    return (s.step < until) & jnp.any(s.finish == RUNNING)

  def step(s: DecodeState) -> DecodeState:
    emitting = s.finish == RUNNING
    s, token = _emit(s, filters, values, rules)
    # Every row appends (finished rows a PAD that the caller rewinds away); a row keeps the logits after its own
    # last token, so a session can continue it.
    logits, cache = adapter.decode(params, token, s.cache)
    return s.replace(logits=jnp.where(emitting[:, None], logits, s.logits), cache=cache)

  return jax.lax.while_loop(running, step, state)


def _emit(s: DecodeState, filters: Filters, values: SamplingValues, rules: StopRules
          ) -> tuple[DecodeState, jax.Array]:
  """Selects token s.step of every row from s.logits and records it (running rows) and finish reasons.

  Returns (the state, the selected tokens int32 [R]).
  """
  keys = jax.vmap(lambda key, drawn: jax.random.fold_in(key, drawn + s.step))(s.keys, s.drawn)
  token = select_tokens(s.logits, filters, values, keys)
  logprob = jnp.take_along_axis(jax.nn.log_softmax(s.logits, axis=-1), token[:, None], axis=-1)[:, 0]
  running = s.finish == RUNNING
  tokens = s.tokens.at[:, s.step].set(jnp.where(running, token, PAD))
  num_tokens = s.num_tokens + running
  is_eos = jnp.any(token[:, None] == rules.eos_ids[None, :], axis=-1)
  finish = jnp.where(is_eos, EOS, jnp.where(_ends_with_stop(tokens, s.step, rules.stop_ids), STOP,
                                            jnp.where(num_tokens >= rules.max_new, LENGTH, RUNNING)))
  return s.replace(tokens=tokens, logprobs=s.logprobs.at[:, s.step].set(jnp.where(running, logprob, 0)),
                   num_tokens=num_tokens, finish=jnp.where(running, finish, s.finish), step=s.step + 1), token


def _ends_with_stop(tokens: jax.Array, step: jax.Array, stop_ids: jax.Array) -> jax.Array:
  """bool [R]: whether tokens[:, :step + 1] [R, N] ends with one of the right-aligned stop_ids [S, L]."""
  width = stop_ids.shape[1]
  index = step - width + 1 + jnp.arange(width)
  window = jnp.where(index >= 0, tokens[:, jnp.maximum(index, 0)], -2)  # -2 matches no stop token
  used = stop_ids >= 0
  match = jnp.all((window[:, None, :] == stop_ids[None]) | ~used[None], axis=-1) & jnp.any(used, axis=-1)[None]
  return jnp.any(match, axis=-1)
