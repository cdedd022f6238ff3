"""A random-guess Responder, for smoke runs and plumbing checks: it never reads the question."""
from __future__ import annotations

import math
import zlib
from collections.abc import Sequence

from mmjax.evals.prompt import Prompt


class GuessResponder:
  """Answers each prompt with one of `answers`, picked by a CRC of the prompt and `seed`, so that a
  rerun gives the same answers. Counts ceil(characters / 4) text tokens plus `image_tokens` per image.
  """

  def __init__(self, answers: Sequence[str], *, seed: int = 0, max_context_tokens: int = 4096,
               image_tokens: int = 64):
    if not answers:
      raise ValueError('GuessResponder needs at least one answer')
    self.answers = tuple(answers)
    self.seed = seed
    self.max_context_tokens = max_context_tokens
    self.image_tokens = image_tokens

  def count_tokens(self, prompt: Prompt) -> int:
    chars = len(prompt.text) + len(prompt.assistant_prefix)
    return math.ceil(chars / 4) + self.image_tokens * len(prompt.images)

  def respond(self, prompts: Sequence[Prompt]) -> list[str]:
    def pick(p: Prompt) -> str:
      key = f'{self.seed}\0{p.text}\0{p.assistant_prefix}\0' + '\0'.join(p.images)
      return self.answers[zlib.crc32(key.encode()) % len(self.answers)]
    return [pick(p) for p in prompts]
