"""Document retrieval for the generation pipeline: BM25 over a local page corpus, 256-token chunks, reranking.

The released pipeline searches an Elasticsearch index of English Wikipedia (not shipped) for a topic, cuts the page
into 256-token chunks, reranks them against the seed question with BAAI/bge-reranker-large and keeps the top 3 as
the document. Here the corpus is a local JSONL file of pages {id, title, text, url} (a Wikipedia dump converted, or
any other), searched with BM25 (bm25s, over lowercased word tokens without English stopwords, the title counted
with the text), and the chunks are reranked by a `Scorer`: the local model's log-probability of the question given
a chunk (`generation.MmjaxLM.logprob`), so no second model is needed.
"""
from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable, Sequence
from typing import Any

import bm25s
import numpy as np
from bm25s.stopwords import STOPWORDS_EN

CHUNK_TOKENS = 256
TOP_CHUNKS = 3
# (contexts, continuations) -> a score per pair, higher = the continuation fits the context better.
Scorer = Callable[[Sequence[str], Sequence[str]], Sequence[float]]
_WORD = re.compile(r'\w+')
_STOP = frozenset(STOPWORDS_EN)


@dataclasses.dataclass(frozen=True)
class Page:
  """One corpus page: id (as a string, e.g. a Wikipedia page id), title, text, url."""
  id: str
  title: str
  text: str
  url: str = ''


def read_corpus(path: str) -> list[Page]:
  """The pages of a JSONL corpus (one {id, title, text[, url]} object a line; blank lines skipped)."""
  pages = []
  with open(path, encoding='utf-8') as f:
    for n, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f'{path}: line {n}: not valid JSON ({e})') from None
      missing = [k for k in ('id', 'title', 'text') if not isinstance(record, dict) or k not in record]
      if missing:
        raise ValueError(f'{path}: line {n}: missing field {missing[0]!r}; a page is {{id, title, text, url}}')
      pages.append(Page(str(record['id']), str(record['title']), str(record['text']), str(record.get('url', ''))))
  if not pages:
    raise ValueError(f'{path}: no pages')
  return pages


def words(text: str) -> list[str]:
  """BM25 terms: lowercased word tokens without English stopwords."""
  return [w for w in _WORD.findall(text.lower()) if w not in _STOP]


class BM25Index:
  """BM25 (bm25s, its default Lucene variant: idf log(1 + (N - df + .5) / (df + .5)), tf / (tf + k1 (1 - b + b dl /
  avgdl)), k1=1.5, b=0.75) over pages' titles and texts."""

  def __init__(self, pages: Sequence[Page]):
    if not pages:
      raise ValueError('BM25Index needs at least one page')
    self.pages = list(pages)
    self._bm25 = bm25s.BM25()
    self._bm25.index([words(f'{p.title}\n{p.text}') or ['\0'] for p in self.pages], show_progress=False)

  def scores(self, query: str) -> np.ndarray:
    """float32 [pages]: the BM25 score of every page for `query`."""
    terms = words(query)
    if not terms:  # stopwords only: no page matches
      return np.zeros(len(self.pages), np.float32)
    return np.asarray(self._bm25.get_scores(terms), np.float32)

  def search(self, query: str, k: int = 1) -> list[tuple[Page, float]]:
    """The k best pages with their scores, best first (ties in corpus order); pages scoring 0 are left out."""
    s = self.scores(query)
    order = sorted(range(len(s)), key=lambda i: (-s[i], i))[:k]
    return [(self.pages[i], float(s[i])) for i in order if s[i] > 0]


def token_spans(text: str, tokenizer: Any = None) -> list[tuple[int, int]]:
  """(start, end) character spans of the text's tokens: a `tokenizers.Tokenizer`'s offsets, else words
  (whitespace-separated runs)."""
  if tokenizer is None:
    return [m.span() for m in re.finditer(r'\S+', text)]
  return [(a, b) for a, b in tokenizer.encode(text, add_special_tokens=False).offsets if b > a]


def chunk(text: str, size: int = CHUNK_TOKENS, tokenizer: Any = None) -> list[str]:
  """The text cut into consecutive chunks of `size` tokens (the last may be shorter), each the original text from
  its first token's start to the next chunk's start, stripped."""
  if size < 1:
    raise ValueError(f'chunk size must be >= 1 token, got {size}')
  spans = token_spans(text, tokenizer)
  starts = [spans[i][0] for i in range(0, len(spans), size)]
  return [text[a:b].strip() for a, b in zip(starts, starts[1:] + [len(text)])]


def rerank(question: str, chunks: Sequence[str], scorer: Scorer, top: int = TOP_CHUNKS) -> list[str]:
  """The `top` chunks that score best for the question (scorer(chunks, [question] * n)), best first; ties keep the
  page order."""
  if not chunks:
    return []
  s = [float(x) for x in scorer(list(chunks), [question] * len(chunks))]
  order = sorted(range(len(chunks)), key=lambda i: (-s[i], i))
  return [chunks[i] for i in order[:top]]


@dataclasses.dataclass(frozen=True)
class Retrieved:
  """A page found for a query and its document: the top chunks reranked against the seed question, joined."""
  page: Page
  document: str


class Retriever:
  """Search a topic, chunk the best page, rerank its chunks against a question and keep the top ones."""

  def __init__(self, pages: Sequence[Page], scorer: Scorer, *, chunk_tokens: int = CHUNK_TOKENS,
               top_chunks: int = TOP_CHUNKS, tokenizer: Any = None):
    self.index = BM25Index(pages)
    self.scorer, self.chunk_tokens, self.top_chunks, self.tokenizer = scorer, chunk_tokens, top_chunks, tokenizer

  def retrieve(self, query: str, question: str) -> Retrieved | None:
    """The best page for `query` with its document for `question`, or None when no page matches a query term."""
    found = self.index.search(query, 1)
    if not found:
      return None
    page = found[0][0]
    chunks = chunk(page.text, self.chunk_tokens, self.tokenizer)
    return Retrieved(page, '\n\n'.join(rerank(question, chunks, self.scorer, self.top_chunks)))
