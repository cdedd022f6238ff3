"""The processor of a run: from an HF directory, or built in code for the smoke run (no downloads).

The smoke tokenizer is word-level over the words of the given texts, plus Qwen2's special tokens, the `<image>` /
`<video>` placeholders and a lone newline token (which the 'original' loss masking needs).
"""
from __future__ import annotations

import re
from collections.abc import Iterable

from tokenizers import Regex, Tokenizer, models, pre_tokenizers

from mmjax.data.chat_masking import DEFAULT_SYSTEM_MESSAGE, ROLE_NAMES
from mmjax.models.llava_image_processing import ImageProcessingConfig
from mmjax.models.llava_processor import LlavaOnevisionProcessor

UNKNOWN = '[UNK]'
PAD, IM_START, IM_END, IMAGE, VIDEO = '<|endoftext|>', '<|im_start|>', '<|im_end|>', '<image>', '<video>'
_PIECES = r'\n|\w+|[^\w\s]'


def word_level_tokenizer(texts: Iterable[str]) -> Tokenizer:
  """Words, single punctuation marks and newlines of `texts`, then the special tokens (ids in that order)."""
  words = sorted({w for t in [DEFAULT_SYSTEM_MESSAGE, *ROLE_NAMES.values(), *texts] for w in re.findall(_PIECES, t)}
                 - {'\n'})
  vocab = {token: i for i, token in enumerate([UNKNOWN, '\n', *words])}
  tokenizer = Tokenizer(models.WordLevel(vocab, unk_token=UNKNOWN))
  tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(_PIECES), behavior='removed', invert=True)
  tokenizer.add_special_tokens([PAD, IM_START, IM_END, IMAGE, VIDEO])
  return tokenizer


def smoke_processor(texts: Iterable[str], crop_size: int, patch_size: int) -> LlavaOnevisionProcessor:
  """A processor with a word-level tokenizer over `texts` and crop_size px crops of patch_size px patches."""
  tokenizer = word_level_tokenizer(texts)
  return LlavaOnevisionProcessor(tokenizer, ImageProcessingConfig(crop_size=crop_size), side=crop_size // patch_size,
                                 max_crops=9, image_token_id=tokenizer.token_to_id(IMAGE),
                                 video_token_id=tokenizer.token_to_id(VIDEO), pad_token_id=tokenizer.token_to_id(PAD))
