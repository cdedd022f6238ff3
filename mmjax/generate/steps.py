"""Step-delimited generation: continue many paths at once by one reasoning step each (up to a delimiter or EOS).

  gen = StepGenerator(model, params, delimiters=[ids_of('\\n\\n')], eos_token_id=eos, max_step_tokens=256)
  paths = gen.start(prompts)                        # one path per prompt (each prompt prefilled once)
  paths, steps = gen.step(paths, [0, 0, 0, 1, 1, 1])  # three children of each prompt, one new step each
  paths, steps = gen.step(paths, [2, 2, 5, 5])      # beam search: expand the survivors, two children each

A path is a token sequence (a prompt, then its steps) held in one row of a `Session`. `step(paths, parents)`
forks the parents' rows (`Session.select` gathers their cache rows: prefix sharing) and decodes one step per child,
so a path's history is never run through the model again (`reuse_cache=True`). `reuse_cache=False` instead
prefills every child's whole history from scratch each round, as huggingface/search-and-learn does through vLLM;
both modes give the same steps (up to float32 differences between XLA programs) and exist side by side for that
check and for the benchmark. `Paths` are immutable: stepping a `Paths` leaves it usable, so a lookahead can roll
out copies and come back to the candidates.

Sampling: child j of round-counter c draws with the key fold_in(key(seed), c + j) from its first token, whatever
its lineage and the mode, so both modes draw the same tokens and a search is reproducible from the seed; `step`
advances c by the number of children, so repeated children of one parent draw independently.

Cache room: a session holds `room` tokens per row beyond its longest prompt (rounded up to the engine's buckets).
When a child lacks room for max_step_tokens more, its round re-prefills the children into a session with twice the
room (counted as prefilled tokens); a path that would outgrow the model's context is a ValueError naming it.

Counters: `rounds` holds one `RoundCounts` per `start` and `step`: tokens prefilled (run through the model as
context), reused (read from the cache instead), and generated.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import numpy as np

from mmjax.generate.adapters import DecoderAdapter, as_adapter
from mmjax.generate.session import Session, TokenIds, prefill, request_keys


@dataclasses.dataclass(frozen=True)
class NewStep:
  """One generated step: tokens (ending with the delimiter or EOS that ended it), their log-probabilities float32
  [len(tokens)] under the unmodified model distribution, and why it ended: 'delimiter', 'eos' or 'length'
  (max_step_tokens reached)."""
  tokens: list[int]
  logprobs: np.ndarray
  reason: str

  @property
  def finished(self) -> bool:
    """EOS reached: the path's solution ends with this step."""
    return self.reason == 'eos'


@dataclasses.dataclass(frozen=True)
class Paths:
  """Token sequences int32 (prompt + steps) of the live paths; session holds them as rows (None when the
  generator re-prefills every round)."""
  sequences: tuple[np.ndarray, ...]
  session: Session | None

  def __len__(self) -> int:
    return len(self.sequences)


@dataclasses.dataclass(frozen=True)
class RoundCounts:
  """Tokens of one round: prefilled (computed as context), reused (read from the KV cache), generated (decoded)."""
  rows: int
  prefilled: int
  reused: int
  generated: int


_REASONS = {'stop': 'delimiter', 'eos': 'eos', 'length': 'length'}


class StepGenerator:
  """Generates one step per child path per round (see the module docstring).

  delimiters: token-id sequences that end a step (kept as its last tokens), e.g. the ids of "\\n\\n"; a sequence
    of several ids matches across token boundaries. eos_token_id: id(s) that end a path.
  max_step_tokens: most tokens per step. temperature, top_p: the default sampling of `step` (temperature 0:
    greedy). room: initial cache slots per row beyond the prompt. reuse_cache: False re-prefills every round.
  """

  def __init__(self, model: nn.Module | DecoderAdapter, params: Any, *, delimiters: Sequence[TokenIds],
               eos_token_id: int | Sequence[int] | None, max_step_tokens: int = 256, temperature: float = 0.8,
               top_p: float | None = None, seed: int = 0, room: int = 512, reuse_cache: bool = True):
    if not isinstance(max_step_tokens, int) or max_step_tokens < 1:
      raise ValueError(f'max_step_tokens must be an int >= 1, got {max_step_tokens!r}.')
    if not delimiters or any(not len(d) for d in delimiters):
      raise ValueError(f'delimiters must be non-empty token-id sequences, got {delimiters!r}.')
    self.adapter = as_adapter(model)
    self.params = params
    self.delimiters = [list(d) for d in delimiters]
    self.eos_token_id = eos_token_id
    self.max_step_tokens = max_step_tokens
    self.temperature, self.top_p, self.seed = temperature, top_p, seed
    self.room = max(room, max_step_tokens)
    self.reuse_cache = reuse_cache
    self.drawn = 0  # the round counter c: children drawn so far
    self.rounds: list[RoundCounts] = []

  def start(self, prompts: Sequence[TokenIds]) -> Paths:
    """One path per prompt (>= 1 token each); with cache reuse, each distinct prompt is prefilled once."""
    sequences = tuple(np.asarray(p, np.int32).reshape(-1) for p in prompts)
    if not sequences or any(not s.size for s in sequences):
      raise ValueError('start takes a non-empty list of prompts of >= 1 token each.')
    if not self.reuse_cache:
      self.rounds.append(RoundCounts(len(sequences), 0, 0, 0))
      return Paths(sequences, None)
    first: dict[tuple[int, ...], int] = {}
    rows = [first.setdefault(tuple(s.tolist()), len(first)) for s in sequences]
    distinct = [sequences[rows.index(r)] for r in range(len(first))]
    session = self._prefill(distinct, self.room)
    if len(distinct) < len(sequences):
      session = session.select(rows)
    self.rounds.append(RoundCounts(len(sequences), sum(len(s) for s in distinct), 0, 0))
    return Paths(sequences, session)

  def step(self, paths: Paths, parents: Sequence[int], *, temperature: float | None = None,
           top_p: float | None = None) -> tuple[Paths, list[NewStep]]:
    """Child j continues paths[parents[j]] by one step; returns (the children's paths, their new steps).

    temperature, top_p: this round's sampling (None: the generator's defaults; temperature 0 is greedy).
    """
    index = np.asarray(parents, np.int64).reshape(-1)
    if not index.size or index.min() < 0 or index.max() >= len(paths):
      raise ValueError(f'step takes a non-empty list of parent indices in [0, {len(paths)}), got '
                       f'{index.tolist()[:8]}.')
    histories = [paths.sequences[p] for p in index]
    longest = max(len(h) for h in histories)
    if longest + self.max_step_tokens > self.adapter.max_context:
      j = int(np.argmax([len(h) for h in histories]))
      raise ValueError(f'path {int(index[j])} holds {longest} tokens: a step of up to {self.max_step_tokens} more '
                       f'exceeds the model context ({self.adapter.max_context}); finish it or lower max_step_tokens.')
    context = sum(len(h) for h in histories)
    if paths.session is None:  # search-and-learn: the whole history again, every round
      session, prefilled = self._prefill(histories, self.max_step_tokens), context
    elif longest + self.max_step_tokens > paths.session.capacity:  # out of room: a larger cache, once
      self.room = 2 * max(self.room, longest)
      session, prefilled = self._prefill(histories, self.room), context
    else:
      session, prefilled = paths.session.select(index), 0
    ids = np.zeros(len(session.lengths), np.uint32)  # rows past the children only pad the batch
    ids[:len(index)] = (self.drawn + np.arange(len(index))) % 2**32
    session.keys, session.drawn = request_keys(self.seed, ids), np.zeros(len(ids), np.int32)
    self.drawn += len(index)
    completions = session.decode(max_new_tokens=self.max_step_tokens, until=self.delimiters,
                                 eos_token_id=self.eos_token_id,
                                 temperature=self.temperature if temperature is None else temperature,
                                 top_p=self.top_p if top_p is None else top_p)
    steps = [NewStep(c.tokens, c.logprobs, _REASONS[c.finish_reason]) for c in completions]
    self.rounds.append(RoundCounts(len(index), prefilled, context - prefilled, sum(len(s.tokens) for s in steps)))
    sequences = tuple(np.concatenate([h, np.asarray(s.tokens, np.int32)]) for h, s in zip(histories, steps))
    return Paths(sequences, session if self.reuse_cache else None), steps

  def _prefill(self, sequences: Sequence[np.ndarray], room: int) -> Session:
    """A session of the sequences with room for `room` more tokens per row, within the model's context."""
    room = max(0, min(room, self.adapter.max_context - max(len(s) for s in sequences)))
    return prefill(self.adapter, self.params, sequences, max_new_tokens=room, seed=self.seed)
