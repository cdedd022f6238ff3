"""Retrieval for the generation pipeline: BM25 against the Lucene formula by hand, ranking on a hand corpus,
256-token chunks, reranking by a scorer, the corpus reader's errors."""
import json
import math

import numpy as np
import pytest

from experiments.structeval.retrieval import BM25Index, Page, Retriever, chunk, read_corpus, rerank, words

PAGES = [
    Page('1', 'Volcano', 'A volcano is a rupture in the crust where lava and ash escape. Lava cools into rock.'),
    Page('2', 'Glacier', 'A glacier is a persistent body of dense ice that moves under its own weight.'),
    Page('3', 'Lava', 'Lava is molten rock expelled by a volcano during an eruption; lava flows can be fast.'),
    Page('4', 'Desert', 'A desert is a barren area of landscape with little precipitation.'),
]


def test_bm25_scores_equal_the_lucene_formula_by_hand():
  index = BM25Index(PAGES)
  docs = [words(f'{p.title}\n{p.text}') for p in PAGES]
  avgdl = sum(map(len, docs)) / len(docs)
  k1, b, n = 1.5, 0.75, len(docs)

  def by_hand(query):
    total = np.zeros(n)
    for term in set(words(query)):
      df = sum(term in d for d in docs)
      idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
      for i, d in enumerate(docs):
        tf = d.count(term)
        total[i] += idf * tf / (tf + k1 * (1 - b + b * len(d) / avgdl)) if tf else 0.0
    return total

  for query in ('lava volcano', 'ice glacier weight', 'the barren desert rock'):
    np.testing.assert_allclose(index.scores(query), by_hand(query), rtol=1e-5)


def test_bm25_ranking_on_a_hand_corpus():
  index = BM25Index(PAGES)
  assert [p.id for p, _ in index.search('lava', 2)] == ['3', '1']  # three mentions beat two
  assert [p.id for p, _ in index.search('moving ice', 4)] == ['2']  # pages without a query term are left out
  assert index.search('the of a', 3) == []  # stopwords only
  assert words('The Lava, of a VOLCANO') == ['lava', 'volcano']


def test_chunks_hold_256_tokens():
  text = ' '.join(f'w{i}' for i in range(600))
  chunks = chunk(text)
  assert [len(c.split()) for c in chunks] == [256, 256, 88]
  assert ' '.join(chunks) == text and chunks[1].split()[0] == 'w256'
  assert chunk('a b c d e', 2) == ['a b', 'c d', 'e'] and chunk('') == []
  with pytest.raises(ValueError, match='chunk size'):
    chunk(text, 0)


def test_rerank_keeps_the_top_chunks_best_first():
  def scorer(contexts, continuations):  # shared words with the question
    return [len(set(c.split()) & set(q.split())) for c, q in zip(contexts, continuations)]

  chunks = ['red fish', 'blue red fish swim', 'green', 'red']
  assert rerank('red fish swim', chunks, scorer, top=3) == ['blue red fish swim', 'red fish', 'red']
  retriever = Retriever(PAGES, scorer, chunk_tokens=5, top_chunks=2)
  got = retriever.retrieve('lava', 'lava flows can be fast')  # page 3 in 5-word chunks; ties keep page order
  assert got.page.id == '3' and got.document == 'eruption; lava flows can be\n\nLava is molten rock expelled'
  assert retriever.retrieve('zebra', 'q') is None


def test_read_corpus(tmp_path):
  path = tmp_path / 'pages.jsonl'
  path.write_text(json.dumps({'id': 7, 'title': 'T', 'text': 'x', 'url': 'u'}) + '\n\n' + json.dumps(
      {'id': '8', 'title': 'S', 'text': 'y'}) + '\n')
  assert read_corpus(str(path)) == [Page('7', 'T', 'x', 'u'), Page('8', 'S', 'y', '')]
  path.write_text(json.dumps({'id': 1, 'text': 'x'}) + '\n')
  with pytest.raises(ValueError, match=r"pages.jsonl: line 1: missing field 'title'"):
    read_corpus(str(path))
  path.write_text('{oops\n')
  with pytest.raises(ValueError, match='line 1: not valid JSON'):
    read_corpus(str(path))
