"""CLIP's byte-level BPE tokenizer (HF `CLIPTokenizer`, what Stable Diffusion's text encoder reads): texts -> ids
[B, max_length], built on the `tokenizers` library from a `tokenizer/` folder's vocab.json and merges.txt.

Text is NFC-normalised, each run of whitespace becomes one space, and it is lowercased; it is then cut into the
special tokens, contractions ('s 't 're 've 'm 'll 'd), letter runs, single digits and runs of other non-space
characters (whitespace dropped); each piece is mapped byte by byte to printable characters and BPE-merged, '</w>'
marking the end of a word. A row is <|startoftext|> ids <|endoftext|>, the ids truncated to max_length - 2, padded
with pad_token (SD1.5's folder: <|endoftext|>; SD2's: '!'). OpenAI's original tokenizer also repairs mojibake (ftfy)
and unescapes HTML entities first; HF's CLIPTokenizer does neither, nor does this one. HF's also cuts its pad token
out of the text as a special token, which differs from OpenAI's and open_clip's ids when the pad token is an ordinary
one (SD2's '!': "!!" becomes '!', '!' instead of '!!</w>'); this one keeps OpenAI's ids there.
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers

BOS, EOS = '<|startoftext|>', '<|endoftext|>'
END_OF_WORD = '</w>'
_PIECES = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}|[^\s\p{L}\p{N}]+"""
_TOKEN_FILES = ('vocab.json', 'merges.txt')


def _token_name(value: Any) -> str | None:
  """A special token as tokenizer_config.json / special_tokens_map.json store it: a string or {'content': ...}."""
  return value.get('content') if isinstance(value, Mapping) else value


class CLIPTokenizer:
  """`tokenizer(texts)` -> int32 ids [B, max_length] as HF `CLIPTokenizer(texts, padding='max_length',
  max_length=max_length, truncation=True)` gives them.

  vocab: token -> id (it must hold <|startoftext|>, <|endoftext|> and pad_token). merges: the BPE merges in rank
  order. Unknown characters become unk_token.
  """

  def __init__(self, vocab: Mapping[str, int], merges: Sequence[tuple[str, str]], *, max_length: int = 77,
               pad_token: str = EOS, unk_token: str = EOS):
    missing = [t for t in (BOS, EOS, pad_token, unk_token) if t not in vocab]
    if missing:
      raise ValueError(f'CLIP vocabulary lacks the special tokens {sorted(set(missing))}.')
    if max_length < 2:
      raise ValueError(f'CLIP tokenizer max_length {max_length} must leave room for the start and end tokens.')
    self.vocab, self.merges = dict(vocab), [tuple(m) for m in merges]
    self.max_length, self.pad_token, self.unk_token = max_length, pad_token, unk_token
    self.bos_id, self.eos_id, self.pad_id = vocab[BOS], vocab[EOS], vocab[pad_token]
    tokenizer = Tokenizer(models.BPE(self.vocab, self.merges, unk_token=unk_token, end_of_word_suffix=END_OF_WORD,
                                     continuing_subword_prefix='', fuse_unk=False))
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r'\s+'), ' '), normalizers.Lowercase()])
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_PIECES), behavior='removed', invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    # The markers typed in a prompt are the special tokens themselves, not their characters.
    tokenizer.add_special_tokens([BOS, EOS])
    self._tokenizer = tokenizer

  @classmethod
  def from_folder(cls, directory: str | Path) -> CLIPTokenizer:
    """Reads a `tokenizer/` folder: vocab.json, merges.txt and, when present, tokenizer_config.json's
    model_max_length and special_tokens_map.json / tokenizer_config.json's pad_token and unk_token.

    Raises ValueError naming the folder and the missing file, or the file that cannot be read.
    """
    directory = Path(directory)
    for name in _TOKEN_FILES:
      if not (directory / name).is_file():
        raise ValueError(f'{directory}: the CLIP tokenizer needs {name} (the BPE {name.split(".")[0]}).')
    vocab = _json(directory / 'vocab.json')
    merges = []
    for number, line in enumerate((directory / 'merges.txt').read_text(encoding='utf-8').splitlines(), 1):
      if (number == 1 and line.startswith('#version')) or not line.strip():
        continue
      pair = line.split()
      if len(pair) != 2:
        raise ValueError(f'{directory / "merges.txt"} line {number}: expected two tokens, got {line!r}.')
      merges.append(tuple(pair))
    settings = {}
    for name in ('tokenizer_config.json', 'special_tokens_map.json'):
      if (directory / name).is_file():
        settings.update(_json(directory / name))
    max_length = settings.get('model_max_length', 77)
    if not isinstance(max_length, int) or max_length > 10 ** 6:  # HF writes a huge float for "no limit"
      raise ValueError(f'{directory / "tokenizer_config.json"}: model_max_length {max_length!r} is not the text '
                       'encoder\'s length (77 for CLIP).')
    return cls(vocab, merges, max_length=max_length, pad_token=_token_name(settings.get('pad_token')) or EOS,
               unk_token=_token_name(settings.get('unk_token')) or EOS)

  def save(self, directory: str | Path) -> None:
    """Writes vocab.json, merges.txt, tokenizer_config.json and special_tokens_map.json, which `from_folder` and
    transformers' CLIPTokenizer read."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / 'vocab.json').write_text(json.dumps(self.vocab, ensure_ascii=False), encoding='utf-8')
    lines = ['#version: 0.2', *(f'{a} {b}' for a, b in self.merges)]
    (directory / 'merges.txt').write_text('\n'.join(lines) + '\n', encoding='utf-8')
    special = {'bos_token': BOS, 'eos_token': EOS, 'pad_token': self.pad_token, 'unk_token': self.unk_token}
    (directory / 'special_tokens_map.json').write_text(json.dumps(special, indent=2))
    config = {'tokenizer_class': 'CLIPTokenizer', 'model_max_length': self.max_length, 'do_lower_case': True,
              **special}
    (directory / 'tokenizer_config.json').write_text(json.dumps(config, indent=2))

  def __call__(self, texts: str | Sequence[str]) -> np.ndarray:
    """int32 ids [B, max_length] (a single string is a batch of one)."""
    texts = [texts] if isinstance(texts, str) else list(texts)
    ids = np.full((len(texts), self.max_length), self.pad_id, np.int32)
    for row, encoding in enumerate(self._tokenizer.encode_batch(texts, add_special_tokens=False)):
      body = encoding.ids[:self.max_length - 2]
      ids[row, :len(body) + 2] = [self.bos_id, *body, self.eos_id]
    return ids


def _json(path: Path) -> dict:
  try:
    value = json.loads(path.read_text(encoding='utf-8'))
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ValueError(f'{path}: cannot read the tokenizer file ({e}).') from None
  if not isinstance(value, dict):
    raise ValueError(f'{path}: expected a JSON object.')
  return value
