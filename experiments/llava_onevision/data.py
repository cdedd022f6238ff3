"""LLaVA examples -> fixed-shape training and multiple-choice evaluation arrays.

An example (from `mmjax.data.LlavaJsonSource`: conversations, decoded images, an optional video) becomes

  input_ids int32 [S]        ChatML tokens, each `<image>` / `<video>` expanded to its visual token count
  labels int32 [S]           next-token targets aligned with input_ids (-100: not trained; the loss shifts)
  attention_mask int32 [S]   1 for real tokens, 0 for right padding
  pixel_values float32 [K, C, C, 3]   the example's crops in placeholder order, zero-padded to K crops
  tap_index int32 [S, 4], tap_weight float32 [S, 4]   per visual token, its taps into the bank of crop features
                                                       (see visual_taps.py); zero for text tokens

with S = data.max_length and K = data.max_crops, so that one compilation covers every batch. Sequences longer than
S are cut at S as the original trainer does (visual tokens included); an example needing more than K crops is an
error naming it.
"""
from __future__ import annotations

import dataclasses
import re
import string
from collections.abc import Sequence
from typing import Any

import numpy as np

from mmjax.data.chat_masking import IGNORE_INDEX, ChatTokenIds, tokenize_conversation
from mmjax.models import anyres, visual_taps
from mmjax.models.llava_image_processing import preprocess_image, preprocess_video
from mmjax.models.llava_processor import LlavaOnevisionProcessor

LAYOUTS = ('flat', 'anyres')
_OPTION = re.compile(r'^([A-Z])\.\s(.*)$', re.MULTILINE)


@dataclasses.dataclass(frozen=True)
class VisualLayout:
  """How images become crops and tokens (static for a run).

  mode: 'flat' (one stretched crop of side^2 tokens per image) or 'anyres' (AnyRes-Max-N for a sample's only image,
  one square crop + newline for each image of a multi-image sample). grids: AnyRes (rows, cols) pinpoints in crops;
  anyres_max: N of anyres_max_N; max_crops: K, crops per example.
  """
  mode: str
  grids: tuple[tuple[int, int], ...]
  anyres_max: int
  max_crops: int

  def __post_init__(self):
    if self.mode not in LAYOUTS:
      raise ValueError(f'data.image_layout must be one of {LAYOUTS}, got {self.mode!r}')
    if self.mode == 'anyres' and (not self.grids or self.anyres_max < 1):
      raise ValueError(f"data.image_layout 'anyres' needs data.grids and data.anyres_max >= 1, got "
                       f'{self.grids} and {self.anyres_max}')
    if self.max_crops < 1:
      raise ValueError(f'data.max_crops must be >= 1, got {self.max_crops}')


def chat_token_ids(processor: LlavaOnevisionProcessor) -> ChatTokenIds:
  """The ChatML and placeholder ids of the processor's tokenizer; ValueError if one is missing."""
  tok = processor.tokenizer
  ids = {name: tok.token_to_id(token) for name, token in (('im_start', '<|im_start|>'), ('im_end', '<|im_end|>'))}
  newline = tok.encode('\n', add_special_tokens=False).ids
  missing = [name for name, value in ids.items() if value is None]
  if missing or len(newline) != 1:
    raise ValueError(f'the tokenizer needs <|im_start|>, <|im_end|> and a single newline token (ChatML); missing '
                     f'{missing}, newline encodes as {newline}')
  return ChatTokenIds(newline=newline[0], image=processor.image_token_id, video=processor.video_token_id, **ids)


class ExampleEncoder:
  """Turns LLaVA examples into the fixed-shape arrays of the module docstring (a grain transform).

  masking: 'original' or 'assistant' (mmjax.data.chat_masking). mc=True adds, for multiple-choice examples whose
  reply is an option letter: answer_pos int32 (index of the reply's letter token), answer int32 (option index) and
  num_options int32; the letter is predicted by the logits at answer_pos - 1.
  """

  def __init__(self, processor: LlavaOnevisionProcessor, layout: VisualLayout, *, max_length: int, masking: str,
               mc: bool = False):
    self.processor, self.layout, self.max_length, self.masking, self.mc = processor, layout, max_length, masking, mc
    self.ids = chat_token_ids(processor)
    base = processor.image_config
    self.crop = base.crop_size
    self.side = processor.side
    self.image_config = dataclasses.replace(base, grid_pinpoints=tuple((r * self.crop, c * self.crop)
                                                                       for r, c in layout.grids) or ((self.crop,) * 2,))
    self.flat_config = dataclasses.replace(base, grid_pinpoints=((self.crop, self.crop),))
    self.newline = layout.max_crops * self.side ** 2  # the bank row of image_newline
    self.letter_ids = np.asarray([self._letter_id(letter) for letter in string.ascii_uppercase], np.int32)

  def _tokenize(self, text: str) -> list[int]:
    return self.processor.tokenizer.encode(text, add_special_tokens=False).ids

  def _letter_id(self, letter: str) -> int:
    """The id of the letter's own token, -1 when the tokenizer has none."""
    ids = self._tokenize(letter)
    return ids[0] if len(ids) == 1 and self.processor.tokenizer.id_to_token(ids[0]) == letter else -1

  def __call__(self, example: dict[str, Any]) -> dict[str, np.ndarray]:
    where = f'example {example.get("id")!r}'
    tokens = tokenize_conversation(example['conversations'], self._tokenize, self.ids,
                                   mode='assistant' if self.mc else self.masking)
    crops, taps = self._visual(example, where)
    input_ids, labels, tap_index, tap_weight = self._expand(tokens['input_ids'], tokens['labels'], taps, where)
    out = self._pad(input_ids, labels, tap_index, tap_weight, crops)
    if self.mc:
      out.update(self._choice(example, input_ids, labels, where))
    return out

  def _visual(self, example: dict[str, Any], where: str) -> tuple[list[np.ndarray], list[visual_taps.Taps]]:
    """Crops float32 [n, C, C, 3] and taps, per placeholder in order."""
    crops, taps, used = [], [], 0
    images = list(example.get('images') or ())
    if example.get('video') is not None:
      frames = preprocess_video(example['video'], self.image_config)
      crops.append(frames)
      taps.append(visual_taps.video_taps(used, len(frames), self.side, self.newline))
      used += len(frames)
    for image in images:
      if self.layout.mode == 'flat':
        pixels = preprocess_image(image, self.flat_config, single_crop=False)[0][:1]
        image_taps = visual_taps.flat_taps(used, self.side)
      elif len(images) == 1:
        pixels, size = preprocess_image(image, self.image_config, single_crop=False)
        layout = anyres.anyres_layout(size, self.image_config.grid_pinpoints, self.crop, self.side,
                                      self.layout.anyres_max)
        image_taps = visual_taps.anyres_taps(layout, used, self.newline)
      else:
        pixels = preprocess_image(image, self.image_config, single_crop=True)[0]
        image_taps = visual_taps.single_taps(used, self.side, self.newline)
      crops.append(pixels)
      taps.append(image_taps)
      used += len(pixels)
    if used > self.layout.max_crops:
      raise ValueError(f'{where} needs {used} crops ({len(images)} image(s), video: '
                       f'{example.get("video") is not None}); data.max_crops is {self.layout.max_crops}. Raise '
                       'data.max_crops or restrict data.grids.')
    return crops, taps

  def _expand(self, ids: np.ndarray, labels: np.ndarray, taps: Sequence[visual_taps.Taps], where: str):
    """Each placeholder token repeated once per visual token, with its taps; labels -100 there."""
    visual = np.flatnonzero(np.isin(ids, [self.ids.image, self.ids.video]))
    if len(visual) != len(taps):
      raise ValueError(f'{where}: the conversation holds {len(visual)} <image>/<video> tokens for {len(taps)} '
                       'images/videos')
    pieces = []
    for start, stop, tap in zip([0, *(visual + 1)], [*visual, len(ids)], [*taps, None]):
      n = stop - start
      pieces.append((ids[start:stop], labels[start:stop], np.zeros((n, visual_taps.TAPS), np.int32),
                     np.zeros((n, visual_taps.TAPS), np.float32)))
      if tap is not None:
        count = len(tap[0])
        pieces.append((np.full(count, ids[stop], np.int32), np.full(count, IGNORE_INDEX, np.int32), *tap))
    return tuple(np.concatenate([p[k] for p in pieces]) for k in range(4))

  def _pad(self, input_ids, labels, tap_index, tap_weight, crops) -> dict[str, np.ndarray]:
    s, k = self.max_length, self.layout.max_crops
    n = min(len(input_ids), s)
    out = {'input_ids': np.full(s, self.processor.pad_token_id or 0, np.int32),
           'labels': np.full(s, IGNORE_INDEX, np.int32), 'attention_mask': np.zeros(s, np.int32),
           'tap_index': np.zeros((s, visual_taps.TAPS), np.int32),
           'tap_weight': np.zeros((s, visual_taps.TAPS), np.float32),
           'pixel_values': np.zeros((k, self.crop, self.crop, 3), np.float32)}
    out['input_ids'][:n], out['labels'][:n], out['attention_mask'][:n] = input_ids[:n], labels[:n], 1
    out['tap_index'][:n], out['tap_weight'][:n] = tap_index[:n], tap_weight[:n]
    if crops:
      stacked = np.concatenate(crops)
      out['pixel_values'][:len(stacked)] = stacked
    return out

  def _choice(self, example: dict[str, Any], input_ids: np.ndarray, labels: np.ndarray, where: str
              ) -> dict[str, np.ndarray]:
    """The answer's position and option index of a multiple-choice example."""
    num_options, answer = multiple_choice(example['conversations'], where)
    supervised = np.flatnonzero(labels != IGNORE_INDEX)
    if not len(supervised) or supervised[0] >= self.max_length:
      raise ValueError(f'{where}: the answer does not fit data.max_length={self.max_length} '
                       f'({len(input_ids)} tokens)')
    pos = int(supervised[0])
    if (self.letter_ids[:num_options] < 0).any():
      raise ValueError(f'{where}: the tokenizer has no single token for some of the option letters '
                       f'{string.ascii_uppercase[:num_options]}')
    if input_ids[pos] != self.letter_ids[answer]:
      raise ValueError(f'{where}: the reply does not start with the option letter token of '
                       f'{string.ascii_uppercase[answer]!r}')
    return {'answer_pos': np.int32(pos), 'answer': np.int32(answer), 'num_options': np.int32(num_options)}


def multiple_choice(conversations: Sequence[dict[str, str]], where: str) -> tuple[int, int]:
  """(number of options, index of the answer) of a conversation whose last human turn lists options 'A. ...' on
  their own lines and whose last reply is one option letter."""
  letters = [letter for letter, _ in _options(conversations, where)]
  replies = [t['value'] for t in conversations if t['from'] == 'gpt']
  answer = replies[-1].strip() if replies else ''
  if answer not in letters:
    raise ValueError(f'{where}: the reply {answer!r} is not one of the option letters {letters}')
  return len(letters), letters.index(answer)


def _options(conversations: Sequence[dict[str, str]], where: str) -> list[tuple[str, str]]:
  human = [t['value'] for t in conversations if t['from'] == 'human']
  options = _OPTION.findall(human[-1]) if human else []
  letters = [letter for letter, _ in options]
  if not letters or letters != list(string.ascii_uppercase[:len(letters)]):
    raise ValueError(f'{where}: a multiple-choice question needs options "A. ...", "B. ...", ... on their own lines '
                     f'in its last human turn; found letters {letters}')
  return options


def option_replies(conversations: Sequence[dict[str, str]], where: str) -> list[list[dict[str, str]]]:
  """One conversation per option for ranking the options by likelihood: the last human turn cut before its first
  option line, answered with that option's text (in place of the letter reply)."""
  last = max(i for i, t in enumerate(conversations) if t['from'] == 'human')
  human = conversations[last]['value']
  stem = human[:_OPTION.search(human).start()].rstrip('\n')
  return [[*conversations[:last], {'from': 'human', 'value': stem}, {'from': 'gpt', 'value': text.strip()}]
          for _, text in _options(conversations, where)]
