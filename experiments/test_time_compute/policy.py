"""The engine behind the search protocols: `EnginePolicy` (a decoder generating steps on the KV-cache engine) and
`EngineVerifier` (a `RewardModel` scoring them).

EnginePolicy keeps one session row per live path: a request (question, steps so far) that names a path it
returned in one of its last `history` calls continues that path's cache row (forked with `Session.select` when
requested several times); any other request is tokenized from its text and prefilled. So a beam search or DVTS
round reads every history from the cache, and a lookahead's greedy rollouts leave the candidates' rows usable.
Requests whose paths live in different sessions (a rollout's and its candidate's) are stepped per session.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import numpy as np

from experiments.test_time_compute.protocols import Step
from mmjax.generate.batching import bucket
from mmjax.generate.steps import Paths, StepGenerator
from mmjax.models.prm import RewardModel, step_scores

Request = tuple[int, tuple[str, ...]]


class EnginePolicy:
  """`Policy` over a decoder (Qwen2/Llama module or adapter) on the step generator (`mmjax.generate.steps`).

  encode: text -> token ids (no special tokens added); decode: token ids -> text. questions: the full prompt of
  each question (few-shot examples and template included); a path's tokens are encode(prompt + its steps' text)
  when prefilled from text. delimiter: the text ending a step; delimiter_ids: its token-id sequences (default
  [encode(delimiter)]). eos_token_id, max_step_tokens, temperature, top_p, seed, reuse_cache: as in
  `StepGenerator`. history: calls a path stays continuable without re-prefilling after it was last returned or
  continued; the sessions holding such paths stay in memory (a lookahead of k steps needs history >= k + 1).
  """

  def __init__(self, model: nn.Module, params: Any, *, encode: Callable[[str], Sequence[int]],
               decode: Callable[[Sequence[int]], str], questions: Sequence[str], eos_token_id: int | Sequence[int],
               delimiter: str = '\n\n', delimiter_ids: Sequence[Sequence[int]] | None = None,
               max_step_tokens: int = 256, temperature: float = 0.8, top_p: float | None = None, seed: int = 0,
               reuse_cache: bool = True, history: int = 4):
    self.encode, self.decode, self.questions = encode, decode, list(questions)
    self.eos = {int(eos_token_id)} if isinstance(eos_token_id, (int, np.integer)) else {int(e) for e in eos_token_id}
    self.generator = StepGenerator(model, params, delimiters=delimiter_ids or [list(encode(delimiter))],
                                   eos_token_id=sorted(self.eos), max_step_tokens=max_step_tokens,
                                   temperature=temperature, top_p=top_p, seed=seed, reuse_cache=reuse_cache)
    self.history = history
    self._calls = 0
    self._pool: dict[Request, tuple[int, Paths, int]] = {}  # path -> (last call that used it, its paths, row)

  def extend(self, requests: Sequence[Request], *, greedy: bool = False) -> list[Step]:
    """One new step per request (see `Policy`); greedy decodes this round at temperature 0."""
    self._calls += 1
    groups: dict[int, tuple[Paths, list[tuple[int, int]]]] = {}  # id(paths) -> (paths, [(request, row)])
    missing: dict[Request, list[int]] = {}
    for j, (question, steps) in enumerate(requests):
      if not 0 <= question < len(self.questions):
        raise ValueError(f'request {j} names question {question}; this policy holds {len(self.questions)}.')
      key = (question, tuple(steps))
      if key in self._pool:
        _, paths, row = self._pool[key]
        self._pool[key] = (self._calls, paths, row)
        groups.setdefault(id(paths), (paths, []))[1].append((j, row))
      else:
        missing.setdefault(key, []).append(j)
    if missing:
      paths = self.generator.start([self.encode(self.questions[q] + ''.join(s)) for q, s in missing])
      groups[id(paths)] = (paths, [(j, row) for row, js in enumerate(missing.values()) for j in js])
    out: list[Step | None] = [None] * len(requests)
    for paths, items in groups.values():
      children, steps = self.generator.step(paths, [row for _, row in items], temperature=0.0 if greedy else None)
      for row, ((j, _), step) in enumerate(zip(items, steps)):
        tokens = step.tokens[:-1] if step.finished and step.tokens[-1] in self.eos else step.tokens
        out[j] = Step(self.decode(tokens), step.finished)
        question, history = requests[j]
        self._pool[(question, (*history, out[j].text))] = (self._calls, children, row)
    self._pool = {k: v for k, v in self._pool.items() if v[0] > self._calls - self.history}
    return out


class EngineVerifier:
  """`Verifier` over a `RewardModel`: each request's prompt and steps are tokenized step by step (encode as in
  `EnginePolicy`) and scored in one forward pass per chunk of max_rows requests, at each step's last token (PRM),
  or with outcome=True once at the last token (ORM: one score per request)."""

  def __init__(self, model: RewardModel, params: Any, *, encode: Callable[[str], Sequence[int]],
               questions: Sequence[str], outcome: bool = False, max_rows: int = 64):
    self.model, self.params, self.encode = model, params, encode
    self.questions, self.outcome, self.max_rows = list(questions), outcome, max_rows

  def score(self, requests: Sequence[Request]) -> list[list[float]]:
    rows = [self._tokens(j, q, steps) for j, (q, steps) in enumerate(requests)]
    out: list[list[float]] = []
    for start in range(0, len(rows), self.max_rows):
      out += self._score(rows[start:start + self.max_rows])
    return out

  def _tokens(self, j: int, question: int, steps: Sequence[str]) -> tuple[list[int], list[int]]:
    """(token ids, the positions to read) of request j."""
    if not 0 <= question < len(self.questions):
      raise ValueError(f'request {j} names question {question}; this verifier holds {len(self.questions)}.')
    ids, ends = list(self.encode(self.questions[question])), []
    for step in steps:
      ids += self.encode(step)
      ends.append(len(ids) - 1)
    limit = self.model.config.max_position_embeddings
    if len(ids) > limit:
      raise ValueError(f'request {j} holds {len(ids)} tokens, more than the reward model context ({limit}).')
    return ids, [len(ids) - 1] if self.outcome and steps else ends

  def _score(self, rows: list[tuple[list[int], list[int]]]) -> list[list[float]]:
    """Scores of rows (token ids, positions) in one bucketed forward pass."""
    width = bucket(max(len(ids) for ids, _ in rows))
    reads = bucket(max(len(ends) for _, ends in rows), minimum=1)
    tokens = np.zeros((bucket(len(rows), minimum=1), width), np.int32)
    lengths, ends = np.ones(len(tokens), np.int32), np.zeros((len(tokens), reads), np.int32)
    for r, (ids, at) in enumerate(rows):
      tokens[r, :len(ids)], lengths[r], ends[r, :len(at)] = ids, len(ids), at
    scores = np.asarray(step_scores(self.model, self.params, tokens, lengths, ends))
    return [scores[r, :len(at)].tolist() for r, (_, at) in enumerate(rows)]
