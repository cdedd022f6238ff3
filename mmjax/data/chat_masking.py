"""LLaVA conversations -> chat-template token ids and next-token labels with a loss mask.

Two templates, chosen by name ('chatml' | 'llama3', `TEMPLATES`) or by the kind of token ids passed
(`ChatTokenIds` | `Llama3TokenIds`, built from a tokenizer by `chat_token_ids`). Roles: system, user
for 'human', assistant for 'gpt'.
- 'chatml' (Qwen2): every message is `<|im_start|>{role}\\n{content}<|im_end|>\\n`, after a system
  message (the default "You are a helpful assistant.", or the conversation's own leading 'system'
  turn). The role header "{role}\\n" and the content are tokenized separately (with Qwen2's
  pre-tokenizer this equals tokenizing the rendered string unless the content starts with a newline).
- 'llama3' (Meta-Llama-3-Instruct's tokenizer_config chat_template): `<|begin_of_text|>`, then every
  message as `<|start_header_id|>{role}<|end_header_id|>\\n\\n{content stripped}<|eot_id|>`; a system
  turn only when the conversation has one or `system_message` is given (the template adds none).
  The role, the "\\n\\n" and the content are tokenized separately (with Llama-3's pre-tokenizer, which
  splits a newline run from the stripped text after it, this equals tokenizing the rendered string).
A generation prompt is the assistant header. Text between special tokens is tokenized by the
caller's `tokenize`. `<image>` and `<video>` become one image / video token each; the processor
expands them later.

Loss-masking modes (labels are -100 where masked; labels[i] is the target for token i, the model
shifts):
- 'assistant': only the tokens of each assistant reply and its closing `<|im_end|>` (`<|eot_id|>`)
  are targets. The assistant header, the newline after `<|im_end|>`, `<|begin_of_text|>`, and all
  system and user tokens are masked.
- 'original': LLaVA-NeXT `preprocess_qwen` (llava/train/train.py). Every token of an assistant
  message is a target, including its `<|im_start|>assistant\\n` header and the newline after its
  `<|im_end|>`; system and user messages are masked, except that every token equal to
  `<|im_start|>`, `<|im_end|>` or the newline id (198 in Qwen2) is a target wherever it occurs,
  including inside user text when the tokenizer emits that newline id on its own (Qwen2 merges
  some newline runs, e.g. "\\n\\n" is 271, which stays masked). With 'llama3', LLaVA-NeXT
  `preprocess_llama3`: the same, with `<|begin_of_text|>`, `<|start_header_id|>`,
  `<|end_header_id|>`, `<|eot_id|>` and the "\\n\\n" token (271 in Llama-3) as the tokens that are
  targets wherever they occur (it always has a system turn: pass its `system_message`).
In both modes image and video tokens are never targets (the original drops them when it splices
in the visual features).
"""
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

IGNORE_INDEX = -100
DEFAULT_SYSTEM_MESSAGE = "You are a helpful assistant."
MASKING_MODES = ("assistant", "original")
TEMPLATES = ("chatml", "llama3")
ROLE_NAMES = {"system": "system", "human": "user", "gpt": "assistant"}
_PLACEHOLDER = re.compile(r"(<image>|<video>)")


@dataclass(frozen=True)
class ChatTokenIds:
  """Ids of the tokens the ChatML template inserts itself: `<|im_start|>`, `<|im_end|>`, the lone
  newline token, and the `<image>` / `<video>` placeholder tokens (video None: `<video>` is an
  error)."""
  template: ClassVar[str] = "chatml"
  im_start: int
  im_end: int
  newline: int
  image: int
  video: int | None = None


@dataclass(frozen=True)
class Llama3TokenIds:
  """Ids of the tokens the Llama-3 template inserts itself: `<|begin_of_text|>`,
  `<|start_header_id|>`, `<|end_header_id|>`, `<|eot_id|>`, the "\\n\\n" token after a header, and
  the `<image>` / `<video>` placeholder tokens (video None: `<video>` is an error)."""
  template: ClassVar[str] = "llama3"
  begin_of_text: int
  start_header: int
  end_header: int
  eot: int
  double_newline: int
  image: int
  video: int | None = None


QWEN2_TOKEN_IDS = ChatTokenIds(im_start=151644, im_end=151645, newline=198, image=151646,
                               video=151647)
# The special tokens each template inserts itself, and the token that ends a turn (a generation stop token).
TEMPLATE_TOKENS = {"chatml": ("<|im_start|>", "<|im_end|>"),
             "llama3": ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                        "<|eot_id|>")}
END_OF_TURN = {"chatml": "<|im_end|>", "llama3": "<|eot_id|>"}


def _check_template(template: str) -> None:
  if template not in TEMPLATES:
    raise ValueError(f"unknown chat template {template!r}; expected one of {TEMPLATES}")


def chat_token_ids(template: str, token_to_id: Callable[[str], int | None],
                   tokenize: Callable[[str], list[int]], *, image: str = "<image>",
                   video: str = "<video>") -> ChatTokenIds | Llama3TokenIds:
  """The token ids of `template` ('chatml' | 'llama3') in a tokenizer.

  token_to_id: a token's id, None when the vocabulary lacks it (tokenizers' `token_to_id`).
  tokenize: plain text -> ids. image, video: the placeholder tokens (a missing video token gives
  video None). ValueError names what the tokenizer lacks.
  """
  _check_template(template)
  layout = "\n" if template == "chatml" else "\n\n"
  newline = tokenize(layout)
  specials = [token_to_id(t) for t in TEMPLATE_TOKENS[template]] + [token_to_id(image)]
  missing = [t for t, i in zip(TEMPLATE_TOKENS[template] + (image,), specials) if i is None]
  if len(newline) != 1:
    missing.append(f"a single token for {layout!r}")
  if missing:
    raise ValueError(f"the tokenizer lacks {missing}, which the {template} template needs")
  if template == "chatml":
    return ChatTokenIds(*specials[:2], newline[0], specials[2], token_to_id(video))
  return Llama3TokenIds(*specials[:4], newline[0], specials[4], token_to_id(video))


def _split_system(conversation: list[dict], system_message: str | None
                  ) -> tuple[str | None, list[dict]]:
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


def _messages(conversation: list[dict], template: str, system_message: str | None
              ) -> list[tuple[str, str]]:
  """(role, content) of every message, system first; system_message None is the template's
  default (ChatML's DEFAULT_SYSTEM_MESSAGE, no system turn for Llama-3)."""
  _check_template(template)
  if system_message is None and template == "chatml":
    system_message = DEFAULT_SYSTEM_MESSAGE
  system_message, conversation = _split_system(conversation, system_message)
  turns = [(ROLE_NAMES[t["from"]], t["value"]) for t in conversation]
  if template == "llama3":  # the official template strips every message (jinja `| trim`)
    turns = [(role, content.strip()) for role, content in turns]
    system_message = None if system_message is None else system_message.strip()
  return ([] if system_message is None else [("system", system_message)]) + turns


def render_chat(conversation: list[dict], *, template: str = "chatml",
                system_message: str | None = None, add_generation_prompt: bool = False) -> str:
  """The text of a conversation in `template` ('chatml' | 'llama3'; see the module docstring);
  with `add_generation_prompt`, ends with the assistant header so that a model continues with the
  reply. system_message: used unless the conversation starts with its own; None is the template's
  default."""
  messages = _messages(conversation, template, system_message)
  if template == "chatml":
    text = "".join(f"<|im_start|>{role}\n{content}<|im_end|>\n" for role, content in messages)
    return text + ("<|im_start|>assistant\n" if add_generation_prompt else "")
  header = "<|start_header_id|>{}<|end_header_id|>\n\n"
  text = "<|begin_of_text|>" + "".join(header.format(role) + f"{content}<|eot_id|>"
                                       for role, content in messages)
  return text + (header.format("assistant") if add_generation_prompt else "")


def render_chatml(conversation: list[dict], *, system_message: str = DEFAULT_SYSTEM_MESSAGE,
                  add_generation_prompt: bool = False) -> str:
  """`render_chat` with the ChatML template."""
  return render_chat(conversation, template="chatml", system_message=system_message,
                     add_generation_prompt=add_generation_prompt)


def _content_ids(content: str, tokenize: Callable[[str], list[int]],
                 ids: ChatTokenIds | Llama3TokenIds) -> list:
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
                          ids: ChatTokenIds | Llama3TokenIds, *, mode: str = "assistant",
                          system_message: str | None = None) -> dict[str, np.ndarray]:
  """Token ids and labels of a LLaVA conversation in the template of `ids`.

  Args:
    conversation: [{'from': 'system'|'human'|'gpt', 'value': str}, ...]; a leading 'system' turn
      replaces `system_message`.
    tokenize: plain text -> token ids, without special tokens added.
    ids: the template's special token ids: ChatTokenIds for ChatML (QWEN2_TOKEN_IDS for Qwen2),
      Llama3TokenIds for Llama-3 (`chat_token_ids` builds either from a tokenizer).
    mode: 'assistant' or 'original' (see the module docstring).
    system_message: None is the template's default (see `render_chat`).

  Returns:
    {'input_ids': int32 [S], 'labels': int32 [S], IGNORE_INDEX (-100) where masked}.
  """
  if mode not in MASKING_MODES:
    raise ValueError(f"unknown loss-masking mode {mode!r}; expected one of {MASKING_MODES}")
  chatml = ids.template == "chatml"
  input_ids = [] if chatml else [ids.begin_of_text]
  labels = [IGNORE_INDEX] * len(input_ids)
  for role, content in _messages(conversation, ids.template, system_message):
    if chatml:
      header = [ids.im_start] + list(tokenize(f"{role}\n"))
      body = _content_ids(content, tokenize, ids) + [ids.im_end]
      tail = list(tokenize("\n"))
    else:
      header = ([ids.start_header] + list(tokenize(role)) + [ids.end_header]
                + list(tokenize("\n\n")))
      body = _content_ids(content, tokenize, ids) + [ids.eot]
      tail = []
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
    always = ([ids.newline, ids.im_start, ids.im_end] if chatml else
              [ids.begin_of_text, ids.start_header, ids.end_header, ids.eot, ids.double_newline])
    labels = np.where(np.isin(input_ids, always), input_ids, labels)
  visual = [ids.image] + ([ids.video] if ids.video is not None else [])
  labels = np.where(np.isin(input_ids, visual), IGNORE_INDEX, labels).astype(np.int32)
  return {"input_ids": input_ids, "labels": labels}
