"""Perplexity scoring of the four options, as OpenCompass's PPLInferencer scores a base model (`*_v1_ppl`).

For a prompt text T (prompts.ppl_context) the candidates are T + '\\nAnswer: X', X in A-D. OpenCompass tokenizes each
whole string (special tokens as the tokenizer's post-processor adds them) and takes the one with the lowest mean
negative log-likelihood: the summed NLL of tokens 2..L divided by L, the token count. Here the four token lists split
into their longest common prefix P and the option tails c_X; `mmjax.generate.score` prefills P once per prompt, forks
it four times and scores the tails, so NLL(c_X | P) costs a few tokens. The whole string's NLL adds NLL(P), the same
for the four; it moves the argmin only when the tails differ in length, so by default (exact=False) NLL(P) is scored
(P[1:] after P[0]) only for those prompts, and `losses` then is exact for them and shifted by a per-prompt constant
for the others.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from experiments.structeval.data import LETTERS
from experiments.structeval.prompts import PPL_SUFFIX
from mmjax.evals.prompt import Prompt
from mmjax.generate import as_adapter, score


def _common_prefix(rows: Sequence[Sequence[int]]) -> int:
  n = min(len(r) for r in rows)
  for i in range(n):
    if len({r[i] for r in rows}) > 1:
      return i
  return n


class PPLScorer:
  """A Responder-like scorer: `respond` answers each prompt with the letter of lowest perplexity.

  module, params: an mmjax decoder; tokenizer: a `tokenizers.Tokenizer`; letters: the options; batch_size: prompts
  per `score` call (each takes len(letters) rows); context_tokens: the window (0 = the model's).
  """

  def __init__(self, module: Any, params: Any, tokenizer: Any, *, letters: str = LETTERS, batch_size: int = 8,
               context_tokens: int = 0):
    if batch_size < 1:
      raise ValueError(f'batch_size must be >= 1, got {batch_size}')
    self.module, self.params, self.tokenizer = module, params, tokenizer
    self.letters = letters
    self.batch_size = batch_size
    window = as_adapter(module).max_context
    self.max_context_tokens = min(window, context_tokens) if context_tokens > 0 else window

  @classmethod
  def load(cls, checkpoint: str, *, base: str | None = None, dtype: str = 'float32', **kwargs) -> PPLScorer:
    """The scorer of an HF directory or an mmjax trainer workdir (with the HF directory `base`)."""
    from mmjax.weights.load_model import hf_directory, load_model
    if not checkpoint:
      raise ValueError('no checkpoint: set --config.checkpoint to an HF directory (config.json, safetensors, '
                       'tokenizer.json) or an mmjax trainer workdir (with --config.base=HF_DIR)')
    model = load_model(checkpoint, base or None, dtype)
    if model.tokenizer is None:
      raise FileNotFoundError(f'{hf_directory(checkpoint, base or None)}: no tokenizer.json; PPL scoring needs one')
    model.tokenizer.no_truncation()
    model.tokenizer.no_padding()
    return cls(model.module, model.params, model.tokenizer, **kwargs)

  def encode(self, prompt: Prompt) -> list[list[int]]:
    """The token ids of the candidate strings, one list per letter."""
    if prompt.images or prompt.assistant_prefix:
      raise ValueError('PPL scoring takes text prompts without an assistant prefix')
    return [self.tokenizer.encode(prompt.text + PPL_SUFFIX.format(x)).ids for x in self.letters]

  def count_tokens(self, prompt: Prompt) -> int:
    return max(len(ids) for ids in self.encode(prompt))

  def losses(self, prompts: Sequence[Prompt], *, exact: bool = False) -> np.ndarray:
    """float64 [len(prompts), len(letters)]: OpenCompass's loss of each candidate (mean NLL per token), exactly with
    exact=True; by default shifted by a constant per prompt where that cannot change the argmin (module docstring)."""
    out = []
    for first in range(0, len(prompts), self.batch_size):
      out.append(self.losses_of_ids([self.encode(p) for p in prompts[first:first + self.batch_size]], exact))
    return np.concatenate(out) if out else np.zeros((0, len(self.letters)))

  def losses_of_ids(self, encoded: Sequence[Sequence[Sequence[int]]], exact: bool = False) -> np.ndarray:
    """`losses` of prompts given as token ids: one list per letter each."""
    k = len(self.letters)
    heads, tails = [], []
    for rows in encoded:
      n = _common_prefix(rows)
      if n == 0 or any(len(r) == n for r in rows):
        raise ValueError('PPL scoring: the candidates share no first token or one is a prefix of another')
      heads.append(rows[0][:n])
      tails += [r[n:] for r in rows]
    logprobs = score(self.module, self.params, [h for h in heads for _ in range(k)], tails)
    tail_nll = -np.asarray([float(np.sum(lp, dtype=np.float64)) for lp in logprobs]).reshape(-1, k)
    tail_len = np.asarray([len(t) for t in tails]).reshape(-1, k)
    head_nll = np.zeros(len(heads))
    need = [i for i, lens in enumerate(tail_len) if exact or len(set(lens)) > 1]
    if need:
      got = score(self.module, self.params, [heads[i][:1] for i in need], [heads[i][1:] for i in need])
      head_nll[need] = [-float(np.sum(lp, dtype=np.float64)) for lp in got]
    head_len = np.asarray([len(h) for h in heads])[:, None]
    return (head_nll[:, None] + tail_nll) / (head_len + tail_len)

  def respond(self, prompts: Sequence[Prompt]) -> list[str]:
    """The letter of lowest loss per prompt (the first on a tie, as numpy's argmin)."""
    return [self.letters[int(i)] for i in np.argmin(self.losses(prompts), axis=1)]
