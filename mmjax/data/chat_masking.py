"""LLaVA conversations -> Qwen2 ChatML token ids and next-token labels with a loss mask.

Every message is rendered `<|im_start|>{role}\\n{content}<|im_end|>\\n` (role: system, user for
'human', assistant for 'gpt'), after a system message (the default, or the conversation's own
leading 'system' turn). Text between special tokens is tokenized by the caller's `tokenize`, with
the role header "{role}\\n" and the content tokenized separately (with Qwen2's pre-tokenizer this
equals tokenizing the rendered string unless the content starts with a newline). `<image>` and
`<video>` become one image / video token each; the processor expands them later.

Loss-masking modes (labels are -100 where masked; labels[i] is the target for token i, the model
shifts):
- 'assistant': only the tokens of each assistant reply and its closing `<|im_end|>` are targets.
  The `<|im_start|>assistant\\n` header, the newline after `<|im_end|>`, and all system and user
  tokens are masked.
- 'original': LLaVA-NeXT `preprocess_qwen` (llava/train/train.py). Every token of an assistant
  message is a target, including its `<|im_start|>assistant\\n` header and the newline after its
  `<|im_end|>`; system and user messages are masked, except that every token equal to
  `<|im_start|>`, `<|im_end|>` or the newline id (198 in Qwen2) is a target wherever it occurs,
  including inside user text when the tokenizer emits that newline id on its own (Qwen2 merges
  some newline runs, e.g. "\\n\\n" is 271, which stays masked).
In both modes image and video tokens are never targets (the original drops them when it splices
in the visual features).
"""
import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

IGNORE_INDEX = -100
DEFAULT_SYSTEM_MESSAGE = "You are a helpful assistant."
MASKING_MODES = ("assistant", "original")
ROLE_NAMES = {"system": "system", "human": "user", "gpt": "assistant"}
_PLACEHOLDER = re.compile(r"(<image>|<video>)")


@dataclass(frozen=True)
class ChatTokenIds:
  """Ids of the tokens the template inserts itself: `<|im_start|>`, `<|im_end|>`, the lone newline
  token, and the `<image>` / `<video>` placeholder tokens (video None: `<video>` is an error)."""
  im_start: int
  im_end: int
  newline: int
  image: int
  video: int | None = None


QWEN2_TOKEN_IDS = ChatTokenIds(im_start=151644, im_end=151645, newline=198, image=151646,
                               video=151647)


def _split_system(conversation: list[dict], system_message: str) -> tuple[str, list[dict]]:
  if not conversation:
    raise ValueError("conversation is empty")
  for t, turn in enumerate(conversation):
    if turn.get("from") not in ROLE_NAMES or not isinstance(turn.get("value"), str):
      raise ValueError(f"conversation turn {t} needs 'from' in {tuple(ROLE_NAMES)} and a string "
                       f"'value', got {turn!r}")
  if conversation[0]["from"] == "system":
    system_message, conversation = conversation[0]["value"], conversation[1:]
  if conversation and conversation[0]["from"] == "gpt":
    raise ValueError("conversation starts with a 'gpt' turn (after any system turn); the original "
                     "trainer silently drops such a turn, fix the data instead")
  return system_message, conversation


def render_chatml(conversation: list[dict], *, system_message: str = DEFAULT_SYSTEM_MESSAGE,
                  add_generation_prompt: bool = False) -> str:
  """The ChatML text of a conversation; with `add_generation_prompt`, ends with the assistant
  header so that a model continues with the reply."""
  system_message, conversation = _split_system(conversation, system_message)
  messages = [("system", system_message)] + [(ROLE_NAMES[t["from"]], t["value"])
                                             for t in conversation]
  text = "".join(f"<|im_start|>{role}\n{content}<|im_end|>\n" for role, content in messages)
  return text + ("<|im_start|>assistant\n" if add_generation_prompt else "")


def _content_ids(content: str, tokenize: Callable[[str], list[int]], ids: ChatTokenIds) -> list:
  out = []
  for piece in _PLACEHOLDER.split(content):
    if piece == "<image>":
      out.append(ids.image)
    elif piece == "<video>":
      if ids.video is None:
        raise ValueError("conversation has a '<video>' placeholder but no video token id was given")
      out.append(ids.video)
    elif piece:
      out.extend(tokenize(piece))
  return out


def tokenize_conversation(conversation: list[dict], tokenize: Callable[[str], list[int]],
                          ids: ChatTokenIds, *, mode: str = "assistant",
                          system_message: str = DEFAULT_SYSTEM_MESSAGE) -> dict[str, np.ndarray]:
  """Token ids and labels of a LLaVA conversation in the Qwen2 ChatML template.

  Args:
    conversation: [{'from': 'system'|'human'|'gpt', 'value': str}, ...]; a leading 'system' turn
      replaces `system_message`.
    tokenize: plain text -> token ids, without special tokens added.
    ids: the template's special token ids (QWEN2_TOKEN_IDS for Qwen2).
    mode: 'assistant' or 'original' (see the module docstring).

  Returns:
    {'input_ids': int32 [S], 'labels': int32 [S], IGNORE_INDEX (-100) where masked}.
  """
  if mode not in MASKING_MODES:
    raise ValueError(f"unknown loss-masking mode {mode!r}; expected one of {MASKING_MODES}")
  system_message, conversation = _split_system(conversation, system_message)
  input_ids, labels = [], []
  for role, content in [("system", system_message)] + [(ROLE_NAMES[t["from"]], t["value"])
                                                       for t in conversation]:
    header = [ids.im_start] + list(tokenize(f"{role}\n"))
    body = _content_ids(content, tokenize, ids) + [ids.im_end]
    tail = list(tokenize("\n"))
    input_ids += header + body + tail
    if role != "assistant":
      labels += [IGNORE_INDEX] * (len(header) + len(body) + len(tail))
    elif mode == "assistant":
      labels += [IGNORE_INDEX] * len(header) + body + [IGNORE_INDEX] * len(tail)
    else:
      labels += header + body + tail
  input_ids = np.asarray(input_ids, dtype=np.int32)
  labels = np.asarray(labels, dtype=np.int32)
  if mode == "original":
    unmasked = np.isin(input_ids, [ids.newline, ids.im_start, ids.im_end])
    labels = np.where(unmasked, input_ids, labels)
  visual = [ids.image] + ([ids.video] if ids.video is not None else [])
  labels = np.where(np.isin(input_ids, visual), IGNORE_INDEX, labels).astype(np.int32)
  return {"input_ids": input_ids, "labels": labels}
