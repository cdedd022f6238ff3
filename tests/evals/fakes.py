"""A deterministic Responder for harness tests: a Python function answers, and calls are counted."""
from collections.abc import Callable, Sequence

from mmjax.evals import Prompt


class FakeResponder:
  """Answers with `answer(prompt)`; a prompt takes len(text + assistant_prefix) // 4 tokens plus
  `image_tokens` per image. `prompts` holds every prompt asked, `calls` the number of respond calls;
  with `fail_after_calls`, the call after that many raises (an interrupted run)."""

  def __init__(self, answer: Callable[[Prompt], str], *, max_context_tokens: int = 100_000,
               image_tokens: int = 10, fail_after_calls: int | None = None):
    self.answer = answer
    self.max_context_tokens = max_context_tokens
    self.image_tokens = image_tokens
    self.fail_after_calls = fail_after_calls
    self.calls = 0
    self.prompts: list[Prompt] = []

  def count_tokens(self, prompt: Prompt) -> int:
    return len(prompt.text + prompt.assistant_prefix) // 4 + self.image_tokens * len(prompt.images)

  def respond(self, prompts: Sequence[Prompt]) -> list[str]:
    if self.fail_after_calls is not None and self.calls >= self.fail_after_calls:
      raise KeyboardInterrupt('simulated interruption')
    self.calls += 1
    self.prompts += prompts
    return [self.answer(p) for p in prompts]
