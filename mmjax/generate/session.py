"""Sessions: the engine's decode state as an object, for search that forks and continues sequences.

  session = prefill(model, params, prompts, max_new_tokens=256, seed=0)   # room for 256 more tokens per row
  steps = session.decode(max_new_tokens=32, until=[newline_ids], temperature=0.8)  # one Completion per row
  session = session.select([0, 0, 0, 1])          # fork row 0 into three rows, keep row 1 (cache rows gathered)
  session.extend([[13], [13], [], [7, 8]])          # append tokens to rows (any number each)
  logprobs = session.score([[4], [9, 2], [], [3]])  # append tokens and get log p of each (a PRM, multiple choice)
  rewards = session.logits_at([[4, 9], [4], [], [2]])  # next-token logits at chosen positions of each row

A session holds R rows. Each row is a token sequence (its prompt, then everything extended and decoded) with its
own cache row and its pending next-token logits; `sequences` gives them. `extend` and `decode` advance the rows in
place; `select` returns a new session (the old one stays usable). The cache was sized by prefill's
max_new_tokens: adding more tokens to a row than that room is a ValueError. Rows are padded to a bucketed count
and token chunks to bucketed lengths, so a search compiles few programs (`compile_counts()`).

Sampling streams: prefill gives prompt i the key fold_in(key(seed), request_ids[i]) (request_ids default to
0, 1, ...; see `generate`); a row's k-th drawn token uses fold_in(row key, k), counting every token it drew in
earlier decode calls, so two decode calls draw what one longer call would. In `select`, the first copy of a row
keeps its key and copy c >= 1 gets fold_in(fold_in(row key, 2**31 + g), c), g = the number of earlier selects on
the row's lineage, so forks draw independently and a whole search is reproducible from the seed.
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from mmjax.generate import decode_loop as loop, sharding
from mmjax.generate.adapters import DecoderAdapter, as_adapter, take_rows
from mmjax.generate.batching import bucket, fit_prompts, prepare_model_inputs
from mmjax.generate.compiles import record
from mmjax.generate.sampling import sampling_setup

TokenIds = Sequence[int]
FORK_SALT = 2**31  # keeps fork keys apart from the per-token fold_in(key, k) stream


@dataclasses.dataclass(frozen=True)
class Completion:
  """One continuation of one row.

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


def prefill(model: nn.Module | DecoderAdapter, params: Any, prompts: Sequence[TokenIds], *, max_new_tokens: int,
            seed: int = 0, request_ids: Sequence[int] | None = None, truncate: str | None = None,
            mesh: Mesh | None = None, **model_inputs: Any) -> Session:
  """A session of one row per prompt, each prompt prefilled into a cache with room for max_new_tokens more tokens.

  Arguments as in `generate` (prompts, truncate and model_inputs are checked the same way; seed and request_ids
  name the rows' sampling streams, see the module docstring; mesh shards parameters and cache, see
  `mmjax.generate.sharding`).
  """
  adapter = as_adapter(model)
  if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
    raise ValueError(f'max_new_tokens must be an int >= 0, got {max_new_tokens!r}.')
  fitted = fit_prompts(prompts, vocab_size=adapter.vocab_size, max_context=adapter.max_context,
                       reserve=max_new_tokens, truncate=truncate)
  ids = check_request_ids(request_ids, len(fitted))
  model_inputs = prepare_model_inputs(adapter, fitted, model_inputs)
  return prefill_fitted(adapter, params, fitted, max_new_tokens, seed, ids, model_inputs, mesh)


def prefill_fitted(adapter: DecoderAdapter, params: Any, fitted: list[np.ndarray], max_new_tokens: int, seed: int,
                   request_ids: np.ndarray, model_inputs: dict[str, Any], mesh: Mesh | None = None) -> Session:
  """`prefill` for checked prompts, request ids and prepared model inputs."""
  if mesh is not None:
    params = sharding.place_params(adapter, params, mesh)
  batch, budget, logits, cache = loop.prefill_prompts(adapter, params, fitted, max_new_tokens, model_inputs)
  if mesh is not None:
    cache = sharding.place_cache(cache, mesh)
  ids = np.zeros(len(batch.lengths), np.uint32)  # batch-padding rows never draw
  ids[:batch.num_prompts] = request_ids
  return Session(adapter=adapter, params=params, cache=cache, logits=logits, keys=request_keys(seed, ids),
                 drawn=np.zeros(len(ids), np.int32), lengths=batch.lengths.astype(np.int64),
                 sequences=[p.copy() for p in fitted], capacity=loop.cache_len(batch.tokens.shape[1], budget),
                 text_only=not model_inputs)


def request_keys(seed: int, request_ids: np.ndarray) -> jax.Array:
  """PRNG keys [N]: fold_in(key(seed), request_ids[n]) (request ids uint32)."""
  base = jax.random.key(seed)
  return jax.vmap(lambda r: jax.random.fold_in(base, r))(jnp.asarray(request_ids, jnp.uint32))


def check_request_ids(request_ids: Sequence[int] | None, num_prompts: int) -> np.ndarray:
  """uint32 [num_prompts]: the validated request ids, or 0, 1, ... when None."""
  if request_ids is None:
    return np.arange(num_prompts, dtype=np.uint32)
  ids = np.asarray(request_ids)
  valid = ids.shape == (num_prompts,) and ids.dtype.kind in 'iu' and bool(np.all((ids >= 0) & (ids < 2**32)))
  if not valid:
    raise ValueError(f'request_ids must hold one int in [0, 2**32) per prompt ({num_prompts}), got '
                     f'{list(np.reshape(ids, -1))[:8]}.')
  return ids.astype(np.uint32)


@dataclasses.dataclass(eq=False)
class Session:
  """R rows of decode state (see the module docstring); build one with `prefill`.

  cache, logits float32 [B, V], keys PRNG [B], drawn int32 [B] (tokens drawn per row), lengths [B] (tokens per
  row, = cache slots once rewound): B >= R rows, the first R real, the rest padding a bucketed batch.
  sequences: the R real rows' token ids. capacity: cache slots per row. text_only: prefilled without model
  inputs (`logits_at` recomputes rows from their tokens). selects: selects that led to this session (fork keys).
  rewind_to: [B] cache lengths a decode left to restore.
  """
  adapter: DecoderAdapter
  params: Any
  cache: Any
  logits: jax.Array
  keys: jax.Array
  drawn: np.ndarray
  lengths: np.ndarray
  sequences: list[np.ndarray]
  capacity: int
  text_only: bool
  selects: int = 0
  rewind_to: np.ndarray | None = None

  @property
  def num_rows(self) -> int:
    return len(self.sequences)

  def extend(self, tokens: Sequence[TokenIds]) -> None:
    """Appends tokens[r] (any number, possibly none) to row r and computes each row's next-token logits."""
    self._append(tokens, scored=False)

  def score(self, tokens: Sequence[TokenIds]) -> list[np.ndarray]:
    """`extend`, returning float32 [len(tokens[r])] per row: log p(tokens[r][t] | row r before it), the log-softmax
    of the raw logits (as `Completion.logprobs`). The first token is scored by the row's pending logits."""
    return self._append(tokens, scored=True)

  def _append(self, tokens: Sequence[TokenIds], scored: bool) -> list[np.ndarray] | None:
    """`extend`; with `scored`, returns the appended tokens' log-probabilities (see `score`)."""
    what = 'score' if scored else 'extend'
    chunks = [np.asarray(t, np.int64).reshape(-1) for t in tokens]
    if len(chunks) != self.num_rows:
      raise ValueError(f'{what} takes one token list per row ({self.num_rows} rows), got {len(chunks)}.')
    for r, chunk in enumerate(chunks):
      if chunk.size and (chunk.min() < 0 or chunk.max() >= self.adapter.vocab_size):
        raise ValueError(f'{what}: row {r} has token ids outside [0, {self.adapter.vocab_size}).')
    longest = max(len(c) for c in chunks)
    if not longest:
      return [np.zeros(0, np.float32) for _ in chunks] if scored else None
    self._check_room(np.array([len(c) for c in chunks]), what)
    rows = len(self.lengths)
    # Every row receives the whole padded chunk; the cache drops what falls past its end (see `write_chunk`).
    width = min(bucket(longest, minimum=1), self.capacity)
    ids = np.zeros((rows, width), np.int32)
    counts = np.zeros(rows, np.int32)
    for r, chunk in enumerate(chunks):
      ids[r, :len(chunk)], counts[r] = chunk, len(chunk)
    cache = self._settled_cache(what)
    self.logits, self.cache, logprobs = _extend(self.adapter, self.params, ids, counts, cache, self.logits,
                                                scored=scored)
    self.lengths = self.lengths + counts
    self.sequences = [np.concatenate([s, c.astype(np.int32)]) for s, c in zip(self.sequences, chunks)]
    if scored:
      logprobs = np.asarray(logprobs)
      return [logprobs[r, :len(c)].copy() for r, c in enumerate(chunks)]
    return None

  def decode(self, *, max_new_tokens: int, until: Sequence[TokenIds] | None = None,
             eos_token_id: int | Sequence[int] | None = None, temperature: float = 0.0, top_k: int | None = None,
             top_p: float | None = None, min_p: float | None = None) -> list[Completion]:
    """Generates up to max_new_tokens tokens after every row, appends them to it, returns one Completion per row.

    until: stop sequences (token-id lists); a row stops after generating one (kept), or eos_token_id, or
    max_new_tokens. Selection as in `generate` (temperature 0 is greedy).
    """
    *_, completions = self.stream(max_new_tokens=max_new_tokens, until=until, eos_token_id=eos_token_id,
                                  temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, chunk=None)
    return completions

  def stream(self, *, max_new_tokens: int, until: Sequence[TokenIds] | None = None,
             eos_token_id: int | Sequence[int] | None = None, temperature: float = 0.0, top_k: int | None = None,
             top_p: float | None = None, min_p: float | None = None, chunk: int | None = 1
             ) -> Iterator[list[Completion]]:
    """`decode`, yielding the completions so far after every `chunk` tokens (None: only the result). The rows
    advance when the iterator is exhausted; arguments are checked when `stream` is called. The decode consumes
    the cache: a stream left before its end leaves the session unusable (select first to keep a copy)."""
    filters, values = sampling_setup(temperature, top_k, top_p, min_p)
    if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
      raise ValueError(f'max_new_tokens must be an int >= 0, got {max_new_tokens!r}.')
    if chunk is not None and chunk < 1:
      raise ValueError(f'chunk must be >= 1 or None, got {chunk}.')
    rules = stop_rules(max_new_tokens, eos_token_id, until, self.adapter.vocab_size)
    if max_new_tokens == 0:
      return iter([[Completion([], np.zeros(0, np.float32), 'length') for _ in range(self.num_rows)]])
    self._check_room(np.full(self.num_rows, max_new_tokens), 'decode')
    return self._stream(filters, values, rules, max_new_tokens, chunk)

  def _stream(self, filters: Any, values: Any, rules: loop.StopRules, max_new_tokens: int, chunk: int | None
              ) -> Iterator[list[Completion]]:
    real = np.arange(len(self.lengths)) < self.num_rows
    cache, self.cache = self._settled_cache('decode'), None  # the decode loop consumes the cache (donated)
    state = loop.begin(self.logits, cache, real, self.keys, self.drawn, budget=bucket(max_new_tokens, minimum=8))
    until = 0
    while True:
      until = min(until + (chunk or max_new_tokens), max_new_tokens)
      state = loop.decode_loop(self.adapter, self.params, state, values, rules, jnp.int32(until), filters=filters)
      completions = _completions(state, self.num_rows)
      done = until == max_new_tokens or all(c.finish_reason for c in completions)
      if done:
        self._advance(state, completions)
      yield completions
      if done:
        return

  def _advance(self, state: loop.DecodeState, completions: list[Completion]) -> None:
    """Takes a finished decode's rows: every row appended one slot per loop step; its own tokens stay."""
    counts = np.zeros(len(self.lengths), np.int64)
    counts[:self.num_rows] = [len(c.tokens) for c in completions]
    self.cache, self.logits = state.cache, state.logits
    self.lengths = self.lengths + counts
    self.rewind_to = self.lengths.copy()
    self.drawn = self.drawn + counts.astype(np.int32)
    self.sequences = [np.concatenate([s, np.asarray(c.tokens, np.int32)]) for s, c in zip(self.sequences,
                                                                                         completions)]

  def select(self, rows: Sequence[int]) -> Session:
    """A new session whose row j is a copy of row rows[j] (fork, reorder or drop rows); the cache rows are
    gathered, so copies continue independently. Sampling keys of copies: see the module docstring."""
    index = np.asarray(rows, np.int64).reshape(-1)
    if not index.size or index.min() < 0 or index.max() >= self.num_rows:
      raise ValueError(f'select takes a non-empty list of row indices in [0, {self.num_rows}), got '
                       f'{index.tolist()[:8]}.')
    gather = np.zeros(bucket(index.size, minimum=1), np.int32)
    gather[:index.size] = index
    copy = np.zeros(len(gather), np.uint32)
    for j, row in enumerate(index):
      copy[j] = np.sum(index[:j] == row)
    cache, logits, keys = _select(self._settled_cache('select'), self.logits, self.keys, gather, copy,
                                  np.uint32(FORK_SALT + self.selects))
    return dataclasses.replace(self, cache=cache, logits=logits, keys=keys, drawn=self.drawn[gather],
                               lengths=self.lengths[gather], sequences=[self.sequences[r].copy() for r in index],
                               selects=self.selects + 1, rewind_to=None)

  def logits_at(self, positions: Sequence[Sequence[int]]) -> list[np.ndarray]:
    """float32 [len(positions[r]), V] per row: the logits after token positions[r][k] of row r's sequence, i.e. the
    distribution of the token at positions[r][k] + 1 (the last position gives the pending next-token logits).

    Recomputed from the rows' tokens in one forward pass, so only for sessions prefilled without model inputs.
    """
    if not self.text_only:
      raise ValueError('logits_at recomputes rows from their tokens, so it needs a session prefilled without model '
                       'inputs (images, videos); for those use `score` or the decode logprobs.')
    wanted = [np.asarray(p, np.int64).reshape(-1) for p in positions]
    if len(wanted) != self.num_rows:
      raise ValueError(f'logits_at takes one position list per row ({self.num_rows} rows), got {len(wanted)}.')
    for r, (p, s) in enumerate(zip(wanted, self.sequences)):
      if p.size and (p.min() < 0 or p.max() >= len(s)):
        raise ValueError(f'logits_at: row {r} holds {len(s)} tokens; positions must be in [0, {len(s)}).')
    rows, width = len(self.lengths), bucket(max(len(s) for s in self.sequences))
    tokens = np.zeros((rows, width), np.int32)
    lengths = np.ones(rows, np.int32)
    for r, s in enumerate(self.sequences):
      tokens[r, :len(s)], lengths[r] = s, len(s)
    logits = np.asarray(_all_logits(self.adapter, self.params, tokens, lengths))
    return [logits[r, p] for r, p in enumerate(wanted)]

  def _check_room(self, new: np.ndarray, what: str) -> None:
    """ValueError when some row would outgrow the cache or the model's context with `new` [R] more tokens."""
    after = self.lengths[:self.num_rows] + new
    limit = min(self.capacity, self.adapter.max_context)
    if after.max() > limit:
      r = int(np.argmax(after))
      raise ValueError(f'{what}: row {r} would hold {int(after[r])} tokens, more than the {limit} this session has '
                       'room for; prefill with a larger max_new_tokens.')

  def _settled_cache(self, what: str) -> Any:
    """The cache with every row rewound to its own tokens after a decode (adapters without `rewind` cannot)."""
    if self.cache is None:
      raise ValueError(f'cannot {what}: a decode of this session is running or its stream was left before its end, '
                       'which consumed the cache.')
    if self.rewind_to is None:
      return self.cache
    rewind = getattr(self.adapter, 'rewind', None)
    if rewind is None:
      raise ValueError(f'{type(self.adapter).__name__} defines no rewind(cache, lengths), so a session over it '
                       f'cannot {what} after decode (see mmjax.generate.adapters).')
    self.cache, self.rewind_to = _rewind(self.adapter, self.cache, self.rewind_to), None
    return self.cache


@functools.partial(jax.jit, static_argnames=('adapter',))
def _rewind(adapter: DecoderAdapter, cache: Any, lengths: jax.Array) -> Any:
  record('rewind', rows=lengths.shape[0])
  return adapter.rewind(cache, lengths)


@functools.partial(jax.jit, static_argnames=('adapter', 'scored'))
def _extend(adapter: DecoderAdapter, params: Any, tokens: jax.Array, lengths: jax.Array, cache: Any,
            logits: jax.Array, *, scored: bool) -> tuple[jax.Array, Any, jax.Array | None]:
  """(logits [B, V], cache, log-probabilities float32 [B, T] of the tokens when scored, else None) after appending
  right-padded tokens [B, T] (lengths [B] >= 0) to every row whose pending logits are logits [B, V]."""
  record('extend', rows=tokens.shape[0], chunk=tokens.shape[1], scored=scored)
  extend = getattr(adapter, 'extend', None)
  if extend is None:
    raise ValueError(f'{type(adapter).__name__} defines no extend(params, tokens, lengths, cache), so a session '
                     'over it cannot append tokens (see mmjax.generate.adapters).')
  if not scored:
    new_logits, cache = extend(params, tokens, lengths, cache)
    return jnp.where((lengths > 0)[:, None], new_logits, logits), cache, None
  every, cache = extend(params, tokens, lengths, cache, every_token=True)  # [B, T, V]: after each new token
  first = jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), tokens[:, :1], axis=-1)
  rest = jnp.take_along_axis(jax.nn.log_softmax(every[:, :-1], axis=-1), tokens[:, 1:, None], axis=-1)[..., 0]
  last = jnp.take_along_axis(every, jnp.maximum(lengths - 1, 0)[:, None, None], axis=1)[:, 0]
  return (jnp.where((lengths > 0)[:, None], last, logits), cache,
          jnp.concatenate([first, rest], axis=1).astype(jnp.float32))


@jax.jit
def _select(cache: Any, logits: jax.Array, keys: jax.Array, rows: jax.Array, copy: jax.Array, salt: jax.Array
            ) -> tuple[Any, jax.Array, jax.Array]:
  """Rows `rows` [B'] of the cache and logits; keys of copy c >= 1 folded with (salt, c)."""
  record('select', rows=rows.shape[0], cache_rows=logits.shape[0])
  take = functools.partial(jnp.take, indices=rows, axis=0)
  forked = jax.vmap(lambda k, c: jax.random.fold_in(jax.random.fold_in(k, salt), c))(keys[rows], copy)
  parent = keys[rows]
  new_keys = jax.random.wrap_key_data(jnp.where((copy > 0)[:, None], jax.random.key_data(forked),
                                                jax.random.key_data(parent)), impl=jax.random.key_impl(parent))
  return take_rows(cache, rows), take(logits), new_keys


@functools.partial(jax.jit, static_argnames=('adapter',))
def _all_logits(adapter: DecoderAdapter, params: Any, tokens: jax.Array, lengths: jax.Array) -> jax.Array:
  record('logits_at', rows=tokens.shape[0], length=tokens.shape[1])
  return adapter.logits(params, tokens, lengths).astype(jnp.float32)


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


def _completions(state: loop.DecodeState, num_rows: int) -> list[Completion]:
  tokens, logprobs, counts, finish = jax.device_get((state.tokens, state.logprobs, state.num_tokens,
                                                     state.finish))
  return [Completion([int(t) for t in tokens[r, :int(counts[r])]], logprobs[r, :int(counts[r])].copy(),
                     loop.FINISH_REASONS.get(int(finish[r]))) for r in range(num_rows)]
