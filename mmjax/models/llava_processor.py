"""LLaVA-OneVision processor: ChatML prompts, `<image>` / `<video>` expansion, tokenization and pixel preprocessing.

Reads a local HF directory (tokenizer.json with the `tokenizers` library, preprocessor_config.json, config.json).
Each placeholder becomes exactly as many placeholder tokens as the model produces features for it (see
mmjax.models.anyres): AnyRes for the image of a single-image sample, one crop + newline (side^2 + 1) for each
image of a multi-image sample, F * ceil(side / 2)^2 + 1 for a video of F frames.
"""
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from mmjax.data.chat_masking import render_chat
from mmjax.models import anyres
from mmjax.models.llava_image_processing import ImageInput, ImageProcessingConfig, preprocess_image, preprocess_video

IMAGE_TOKEN, VIDEO_TOKEN = '<image>', '<video>'
_PLACEHOLDER = re.compile(f'({re.escape(IMAGE_TOKEN)}|{re.escape(VIDEO_TOKEN)})')
_SPEAKERS = {'user': 'human', 'assistant': 'gpt'}  # HF roles -> the LLaVA conversation speakers of chat_masking


def _read_json(path: Path) -> dict[str, Any]:
  if not path.is_file():
    raise FileNotFoundError(f'{path} does not exist.')
  try:
    return json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise ValueError(f'{path} is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}.') from None


class LlavaOnevisionProcessor:
  """Text with placeholders + images + videos -> model inputs (NumPy).

  side: feature cells per crop side (vision image_size / patch_size); max_crops: N of anyres_max_N.
  pad_token_id pads batches of unequal length (None: such batches are an error).
  """

  def __init__(self, tokenizer: Tokenizer, image_config: ImageProcessingConfig, *, side: int, max_crops: int,
               image_token_id: int, video_token_id: int, pad_token_id: int | None = None):
    for token, token_id in ((IMAGE_TOKEN, image_token_id), (VIDEO_TOKEN, video_token_id)):
      if tokenizer.token_to_id(token) != token_id:
        raise ValueError(f'the tokenizer maps {token} to {tokenizer.token_to_id(token)}, the model expects '
                         f'{token_id}.')
    self.tokenizer, self.image_config = tokenizer, image_config
    self.side, self.max_crops = side, max_crops
    self.image_token_id, self.video_token_id, self.pad_token_id = image_token_id, video_token_id, pad_token_id

  @classmethod
  def from_pretrained(cls, path: str | os.PathLike) -> 'LlavaOnevisionProcessor':
    """Reads config.json, preprocessor_config.json, tokenizer.json and (for the pad token) tokenizer_config.json."""
    directory = Path(path)
    config = _read_json(directory / 'config.json')
    if config.get('model_type') != 'llava_onevision':
      raise ValueError(f'{directory / "config.json"}: model_type {config.get("model_type")!r} is not '
                       "'llava_onevision'.")
    if config.get('vision_feature_select_strategy', 'full') != 'full':
      raise ValueError(f'{directory / "config.json"}: only vision_feature_select_strategy "full" is supported.')
    image_config = ImageProcessingConfig.from_hf_dict(_read_json(directory / 'preprocessor_config.json'),
                                                      str(directory / 'preprocessor_config.json'))
    vision = config['vision_config']
    if vision['image_size'] != image_config.crop_size:
      raise ValueError(f'{directory}: preprocessor crops of {image_config.crop_size} px, but the vision tower '
                       f'takes {vision["image_size"]} px.')
    if not (directory / 'tokenizer.json').is_file():
      raise FileNotFoundError(f'{directory / "tokenizer.json"} does not exist.')
    tokenizer = Tokenizer.from_file(str(directory / 'tokenizer.json'))
    tokenizer.no_padding()  # this class pads, and never truncates (that would cut placeholder runs)
    tokenizer.no_truncation()
    pad_token = None
    if (directory / 'tokenizer_config.json').is_file():
      pad_token = _read_json(directory / 'tokenizer_config.json').get('pad_token')
      pad_token = pad_token.get('content') if isinstance(pad_token, dict) else pad_token
    return cls(tokenizer, image_config, side=vision['image_size'] // vision['patch_size'],
               max_crops=anyres.parse_max_crops(config.get('vision_aspect_ratio', 'anyres_max_9')),
               image_token_id=config.get('image_token_index', config.get('image_token_id', 151646)),
               video_token_id=config.get('video_token_index', config.get('video_token_id', 151647)),
               pad_token_id=None if pad_token is None else tokenizer.token_to_id(pad_token))

  def num_image_tokens(self, image_size: anyres.Size, *, single_crop: bool = False) -> int:
    """Placeholder tokens of an image of original (height, width); single_crop for multi-image samples."""
    if single_crop:
      return anyres.single_crop_tokens(self.side)
    cfg = self.image_config
    return anyres.anyres_layout(image_size, cfg.grid_pinpoints, cfg.crop_size, self.side, self.max_crops).num_tokens

  def num_video_tokens(self, num_frames: int) -> int:
    return anyres.video_tokens(num_frames, self.side)

  def __call__(self, text: str | Sequence[str], images: Sequence[ImageInput | Sequence[ImageInput]] | None = None,
               videos: Sequence[np.ndarray | Sequence[ImageInput]] | None = None, *, padding_side: str = 'left'
               ) -> dict[str, np.ndarray]:
    """Model inputs for a batch of prompts.

    Args:
      text: one prompt or B prompts with `<image>` / `<video>` placeholders.
      images: the images of all placeholders in order (PIL images, uint8 [H, W, 3] arrays or file paths), flat or
        one list per prompt. A prompt with several images uses the single-crop path for each.
      videos: one video per `<video>` placeholder in order, each uint8 [F, H, W, 3] or a sequence of frames; all
        videos need the same number of frames.
      padding_side: 'left' (for generation) or 'right' when prompts differ in length.

    Returns:
      input_ids int32 [B, S], attention_mask int32 [B, S]; with images: pixel_values float32 [N, crops, H, W, 3]
      (zero-padded crops), image_sizes int64 [N, 2] (height, width), batch_num_images int64 [B] (0 for a prompt
      without images, which transformers leaves out); with videos: pixel_values_videos float32 [V, F, H, W, 3].
    """
    texts = [text] if isinstance(text, str) else list(text)
    images_per_text = self._assign(texts, images, IMAGE_TOKEN, 'image')
    videos_per_text = self._assign(texts, videos, VIDEO_TOKEN, 'video')
    out: dict[str, np.ndarray] = {}
    image_tokens, crops, sizes = [], [], []
    for sample in images_per_text:
      for image in sample:
        pixels, size = preprocess_image(image, self.image_config, single_crop=len(sample) > 1)
        crops.append(pixels)
        sizes.append(size)
        image_tokens.append(self.num_image_tokens(size, single_crop=len(sample) > 1))
    if crops:
      most = max(len(c) for c in crops)
      out['pixel_values'] = np.stack([np.pad(c, ((0, most - len(c)), (0, 0), (0, 0), (0, 0))) for c in crops])
      out['image_sizes'] = np.asarray(sizes, np.int64)
      out['batch_num_images'] = np.asarray([len(s) for s in images_per_text], np.int64)
    video_tokens = []
    frames = [preprocess_video(v, self.image_config) for sample in videos_per_text for v in sample]
    if frames:
      if len({len(f) for f in frames}) > 1:
        raise ValueError(f'videos of one batch need the same number of frames, got {[len(f) for f in frames]}.')
      out['pixel_values_videos'] = np.stack(frames)
      video_tokens = [self.num_video_tokens(len(f)) for f in frames]
    expanded = self._expand(texts, image_tokens, video_tokens)
    ids = [encoding.ids for encoding in self.tokenizer.encode_batch(expanded)]
    for kind, token_id, counts in (('image', self.image_token_id, image_tokens),
                                   ('video', self.video_token_id, video_tokens)):
      found = sum(row.count(token_id) for row in ids)
      if found != sum(counts):
        raise ValueError(f'the tokenized prompts hold {found} {kind} tokens, the {kind}s need {sum(counts)}; '
                         f'the tokenizer does not keep {kind} placeholders as single tokens.')
    out['input_ids'], out['attention_mask'] = self._pad(ids, padding_side)
    return out

  def apply_chat_template(self, messages: Sequence[dict[str, Any]], *, add_generation_prompt: bool = False,
                          system_message: str | None = None, template: str = 'chatml') -> str:
    """The chat text of HF-style messages in `template`: 'chatml' as OneVision was trained (`qwen_1_5`), or
    'llama3' (LLaVA over a Llama-3 decoder); mmjax.data.chat_masking.render_chat, which the training data uses.

    Each message is {'role': 'system' | 'user' | 'assistant', 'content': str or a list of {'type': 'image'},
    {'type': 'video'}, {'type': 'text', 'text': ...}}. A message renders its images as `<image>\\n`, then its
    videos as `<video>\\n`, then its texts joined by newlines; a leading system message replaces system_message
    (None: the template's default, ChatML's 'You are a helpful assistant.', no system turn for Llama-3).
    """
    first = 0
    if messages and messages[0].get('role') == 'system':
      system_message, first = self._content(messages[0], 0), 1
    turns = []
    for i, message in enumerate(messages[first:], start=first):
      if message.get('role') not in _SPEAKERS:
        raise ValueError(f'message {i} needs role user or assistant (system only first), got '
                         f'{message.get("role")!r}.')
      turns.append({'from': _SPEAKERS[message['role']], 'value': self._content(message, i)})
    return render_chat(turns or [{'from': 'system', 'value': system_message or ''}], template=template,
                       system_message=system_message, add_generation_prompt=add_generation_prompt)

  @staticmethod
  def _content(message: dict[str, Any], index: int) -> str:
    """A message's content as text with placeholders: images, then videos, then texts joined by newlines."""
    content = message.get('content', '')
    if isinstance(content, str):
      return content
    kinds = [part.get('type') for part in content]
    unknown = sorted(set(kinds) - {'image', 'video', 'text'}, key=str)
    if unknown:
      raise ValueError(f'message {index}: unknown content types {unknown}.')
    return (f'{IMAGE_TOKEN}\n' * kinds.count('image') + f'{VIDEO_TOKEN}\n' * kinds.count('video')
            + '\n'.join(part['text'] for part in content if part['type'] == 'text'))

  def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
    """Token ids -> text."""
    return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

  @staticmethod
  def _assign(texts: list[str], items: Sequence[Any] | None, token: str, kind: str) -> list[list[Any]]:
    """The items of each prompt, matched to its placeholders in order; ValueError when the counts differ."""
    counts = [t.count(token) for t in texts]
    items = [] if items is None else list(items)
    nested = kind == 'image' and bool(items) and all(isinstance(x, (list, tuple)) for x in items)
    if nested:
      if [len(x) for x in items] != counts:
        raise ValueError(f'the prompts hold {counts} {token} placeholders, the per-prompt {kind} lists hold '
                         f'{[len(x) for x in items]} {kind}s.')
      return [list(x) for x in items]
    if len(items) != sum(counts):
      raise ValueError(f'the text holds {sum(counts)} {token} placeholders but {len(items)} {kind}s were given; '
                       f'each placeholder needs exactly one {kind}.')
    starts = np.cumsum([0] + counts)
    return [items[a:b] for a, b in zip(starts[:-1], starts[1:])]

  @staticmethod
  def _expand(texts: list[str], image_tokens: list[int], video_tokens: list[int]) -> list[str]:
    """Each placeholder repeated as many times as its features, in order of appearance over the batch."""
    counts = {IMAGE_TOKEN: iter(image_tokens), VIDEO_TOKEN: iter(video_tokens)}
    return [_PLACEHOLDER.sub(lambda m: m.group(0) * next(counts[m.group(0)]), t) for t in texts]

  def _pad(self, ids: list[list[int]], side: str) -> tuple[np.ndarray, np.ndarray]:
    """int32 [B, S] ids and attention mask, padded with pad_token_id on `side`."""
    if side not in ('left', 'right'):
      raise ValueError(f"padding_side must be 'left' or 'right', got {side!r}.")
    length = max(len(row) for row in ids)
    if any(len(row) != length for row in ids) and self.pad_token_id is None:
      raise ValueError('prompts differ in length and the tokenizer has no pad token (tokenizer_config.json).')
    input_ids = np.full((len(ids), length), self.pad_token_id or 0, np.int32)
    mask = np.zeros((len(ids), length), np.int32)
    for i, row in enumerate(ids):
      span = slice(length - len(row), length) if side == 'left' else slice(0, len(row))
      input_ids[i, span], mask[i, span] = row, 1
    return input_ids, mask
