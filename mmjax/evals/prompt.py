"""What a benchmark hands a model: `Prompt`, and the `Responder` protocol a model plugs in through."""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Protocol, runtime_checkable


@dataclasses.dataclass(frozen=True)
class Prompt:
  """One request to a model.

  text: the user turn. images: image file paths, shown before the text in this order (multi-image
  benchmarks put all images first). assistant_prefix: the start of the model's own reply, which the
  model continues (a re-prompt appends an instruction to the model's earlier output this way); a chat
  model renders it as the opening of the assistant turn, a base model as text after the prompt.
  """
  text: str
  images: tuple[str, ...] = ()
  assistant_prefix: str = ''


@runtime_checkable
class Responder(Protocol):
  """A model behind a benchmark: greedy answers to a batch of prompts.

  max_context_tokens: the most tokens a prompt may take (the model's window less what it keeps for
  the answer). count_tokens: the tokens one prompt takes once rendered, images and chat template
  included. respond: one answer per prompt, in order.
  """
  max_context_tokens: int

  def count_tokens(self, prompt: Prompt) -> int:
    ...

  def respond(self, prompts: Sequence[Prompt]) -> list[str]:
    ...


def fits(responder: Responder, prompt: Prompt) -> bool:
  """Whether `prompt` fits the responder's context window."""
  return responder.count_tokens(prompt) <= responder.max_context_tokens
