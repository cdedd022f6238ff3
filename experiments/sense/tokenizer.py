"""Tokenizers of the SENSE programs: a small word-level one built for SQL text (the smoke) and an HF tokenizer.json.

`WordTokenizer`: a token is a word, a number or one punctuation character, each with the whitespace before it
(`\\s*(\\w+|[^\\w\\s])`), so decoding is concatenation and round-trips any text made of the vocabulary. The
vocabulary is built deterministically from training texts (words seen at least `min_count` times, most frequent
first, ties by text) plus every printable ASCII character with and without a leading space and newline, so a word
never seen in training (a value in a held-out question) is spelled out character by character instead of becoming
unknown. Ids: 0 <pad>, 1 <eos>, 2 <unk> (characters outside the vocabulary). Saved as JSON in the workdir.

`HFTokenizer`: an HF folder's tokenizer.json through `tokenizers`, with the folder's EOS id.
Both have encode(text) -> ids, decode(ids) -> text, vocab_size, pad_id, eos_id.
"""
from __future__ import annotations

import json
import os
import re
import string
from collections import Counter
from collections.abc import Iterable, Sequence

PAD, EOS, UNK = '<pad>', '<eos>', '<unk>'
_TOKEN = re.compile(r'\s*(?:\w+|[^\w\s])|\s+$')
_PRINTABLE = [c for c in string.printable if c not in string.whitespace]


class WordTokenizer:
  """Word-level tokenizer with a character fallback (see the module docstring)."""

  kind = 'sense-word'

  def __init__(self, vocab: Sequence[str]):
    if list(vocab[:3]) != [PAD, EOS, UNK]:
      raise ValueError(f'a WordTokenizer vocabulary starts with {PAD}, {EOS}, {UNK}; got {list(vocab[:3])}')
    self.vocab = list(vocab)
    self.ids = {t: i for i, t in enumerate(self.vocab)}
    if len(self.ids) != len(self.vocab):
      raise ValueError('a WordTokenizer vocabulary holds each token once')
    self.pad_id, self.eos_id, self.unk_id = 0, 1, 2

  @property
  def vocab_size(self) -> int:
    return len(self.vocab)

  @classmethod
  def build(cls, texts: Iterable[str], min_count: int = 2) -> WordTokenizer:
    """The vocabulary of `texts`: the specials, the characters, then the words seen >= min_count times."""
    counts = Counter(m.group(0) for text in texts for m in _TOKEN.finditer(text))
    base = [PAD, EOS, UNK] + [p + c for p in ('', ' ', '\n') for c in _PRINTABLE] + [' ', '\n', '\n\n', '  ']
    known = set(base)
    words = sorted((t for t, n in counts.items() if n >= min_count and t not in known), key=lambda t: (-counts[t], t))
    return cls(base + words)

  def encode(self, text: str) -> list[int]:
    out = []
    for m in _TOKEN.finditer(text):
      piece = m.group(0)
      if piece in self.ids:
        out.append(self.ids[piece])
        continue
      lead = piece[:len(piece) - len(piece.lstrip())]
      word = piece[len(lead):]
      if lead and lead + word[:1] in self.ids:  # the first character keeps the whitespace before it
        out.append(self.ids[lead + word[:1]])
        word = word[1:]
      elif lead:
        out += [self.ids.get(c, self.unk_id) for c in lead]
      out += [self.ids.get(c, self.unk_id) for c in word]
    return out

  def decode(self, ids: Sequence[int]) -> str:
    """The text of `ids`; <pad>, <eos> and ids outside the vocabulary give nothing, <unk> gives '?'."""
    return ''.join('?' if i == self.unk_id else self.vocab[i] for i in map(int, ids)
                   if 2 <= i < len(self.vocab))

  def save(self, path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, 'w', encoding='utf-8') as f:
      json.dump({'kind': self.kind, 'vocab': self.vocab}, f, indent=0)
    return path


class HFTokenizer:
  """An HF folder's tokenizer.json (`tokenizers`) with its EOS id (generation_config.json or config.json)."""

  def __init__(self, hf_dir: str):
    from mmjax.weights.load_model import eos_token_ids, load_tokenizer
    self.tokenizer = load_tokenizer(hf_dir)
    if self.tokenizer is None:
      raise FileNotFoundError(f'{hf_dir}: no tokenizer.json (config.model.hf_dir must be an HF model folder)')
    eos = eos_token_ids(hf_dir)
    if not eos:
      raise ValueError(f'{hf_dir}: neither generation_config.json nor config.json names an eos_token_id')
    self.eos_id = eos[0]
    pad = self.tokenizer.token_to_id('<|endoftext|>')
    self.pad_id = self.eos_id if pad is None else pad
    self.vocab_size = self.tokenizer.get_vocab_size()

  def encode(self, text: str) -> list[int]:
    return self.tokenizer.encode(text, add_special_tokens=False).ids

  def decode(self, ids: Sequence[int]) -> str:
    return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)


def load_word_tokenizer(path: str) -> WordTokenizer:
  """The WordTokenizer saved at `path`; a clear error when there is none."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f'no tokenizer {path}: the SFT run writes it into its workdir (config.sft_dir)')
  with open(path, encoding='utf-8') as f:
    saved = json.load(f)
  if saved.get('kind') != WordTokenizer.kind:
    raise ValueError(f'{path}: not a SENSE word tokenizer (kind {saved.get("kind")!r})')
  return WordTokenizer(saved['vocab'])
