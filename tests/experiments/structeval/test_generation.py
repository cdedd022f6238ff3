"""The generation pipeline end to end on a corpus written from the synthetic knowledge base with scripted LMs (the v1
format, ids, retries, the topic check, the RAG and difficulty filters, resuming), the option move, the parsers, and
one run with a tiny random mmjax model as the judge and reranker through MmjaxLM."""
import dataclasses
import json
import os
import re
from collections import Counter

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from experiments.structeval import generation as gen
from experiments.structeval.data import LETTERS, LEVEL_KEYS, LEVELS, Seed, load_struct
from experiments.structeval.retrieval import Page, Retriever, chunk
from experiments.structeval.synthetic import write_synthetic_struct
from mmjax.models.qwen2 import Qwen2Config, Qwen2ForCausalLM

MISMATCH = 1  # the seed whose page the scripted matcher rejects


@pytest.fixture(scope='module')
def world(tmp_path_factory):
  """(seeds, pages): 4 synthetic seeds and a page per creature and place of the knowledge base."""
  kb = write_synthetic_struct(str(tmp_path_factory.mktemp('kb')), seed=3, creatures=6, places=4)
  records = json.load(open(kb.path))[:4]
  seeds = [Seed(r['question'], tuple(r['choices']), r['answer'], r['subject']) for r in records]
  entities = sorted({e for e, _ in kb.facts})
  pages = [Page(str(100 + i), e, ' '.join(f'The {a} of {e} is {v}.' for (x, a), v in sorted(kb.facts.items())
                                           if x == e), f'https://example.org/{i}') for i, e in enumerate(entities)]
  return seeds, pages


def _mcq(question, k, tag=''):
  """A question whose right option (text 'right ...') sits at letter A."""
  return {'question': f'{question} {tag}'.strip(), 'A': f'right {k}', 'B': f'wrong {k}a', 'C': f'wrong {k}b',
          'D': f'wrong {k}c', 'answer': 'A', 'explanation': 'The document says so.'}


class Script:
  """A scripted LM for every prompt of the pipeline. Candidates k=1 are unanswerable and k=2 are answered wrong by
  the judge; the first objective and the first 'creating' replies do not parse."""

  def __init__(self):
    self.calls, self.first = Counter(), set()

  def once(self, key):
    fresh = key not in self.first
    self.first.add(key)
    return fresh

  def __call__(self, prompts):
    return [self.reply(p) for p in prompts]

  def reply(self, p):
    if p.startswith('Find the core topic'):
      self.calls['objective'] += 1
      creature = re.findall(r'does the (\w+) live', p)[-1]
      return 'I do not know.' if self.once(('objective', creature)) else f'Topic: {creature}\nDescription: a beast'
    if p.startswith('List the most important entities'):
      self.calls['concepts'] += 1
      creature = re.findall(r'does the (\w+) live', p)[-1]
      place = re.findall(r'Answer: [A-D]\. (\w+ Vale)', p)[-1]
      if getattr(self, 'no_concepts', False):
        return '- Qqqq: not in the corpus'
      return f'- {place}: where the {creature} lives\n- Qqqq: not in the corpus\n- {place}: again'
    if 'Is this page about the topic?' in p:
      self.calls['match'] += 1
      topic, title = re.search(r'Topic: (.+)\n', p).group(1), re.search(r'Page title: (.+)\n', p).group(1)
      return 'Yes.' if topic == title and not topic.startswith(self.reject) else 'No, it is not.'
    if "of Bloom's taxonomy" in p:
      level = re.search(r'at the "(\w+)" level', p).group(1)
      self.calls['bloom'] += 1
      if level == 'creating' and self.once(('creating', p)):
        return '{"level": "creating", "question": '  # cut off: asked again
      tags = ['According to the document,', 'unanswerable', 'ambiguous', '', '', 'extra']  # 6: one too many
      return json.dumps([_mcq(f'{level} question {k}?', k, t) if k else
                         _mcq(f'{t} what is {level} question {k}?', k) for k, t in enumerate(tags)])
    if 'a concept one needs to answer it' in p:
      self.calls['concept_questions'] += 1
      return '```json\n' + json.dumps({'questions': [_mcq('concept question 0?', 0), _mcq('c 1?', 1, 'unanswerable'),
                                                      _mcq('c 2?', 2, 'ambiguous')]}) + '\n```'
    if 'I cannot answer' in p:
      self.calls['judge'] += 1
      question = re.search(r'Question: (.+)\n', p).group(1)
      options = dict(re.findall(r'^([A-D])\. (.+)$', p, re.M))
      if 'unanswerable' in question:
        return 'I cannot answer.'
      want = 'wrong' if 'ambiguous' in question else 'right'
      return next(k for k, v in options.items() if v.startswith(want)) + '.'
    raise AssertionError(f'unexpected prompt {p[:60]!r}')


def _overlap(contexts, continuations):
  return [len(set(c.lower().split()) & set(q.lower().split())) for c, q in zip(contexts, continuations)]


def _pipeline(pages, script, judge=None):
  return gen.Pipeline(script, judge or script, Retriever(pages, _overlap, chunk_tokens=16), seed=0)


def test_pipeline_end_to_end_and_resume(world, tmp_path):
  seeds, pages = world
  script = Script()
  script.reject = re.search(r'the (\w+) live', seeds[MISMATCH].question).group(1)
  out = str(tmp_path / 'struct_synth' / 'struct_test_scripted.json')
  os.makedirs(os.path.dirname(out))
  report = gen.generate_struct(_pipeline(pages, script), seeds, out)
  assert report['seeds'] == 4 and report['generated_this_run'] == 4 and report['seeds_kept'] == 3
  assert report['dropped_topic_mismatch'] == 1 and script.calls['objective'] == 8  # every first reply re-asked
  assert report['json_errors'] == 3  # the first 'creating' reply of each kept seed
  assert report['candidates'] == 3 * (6 * 5 + 3) and report['concepts_mismatched'] == 3
  assert report['kept_bloom'] == 3 * 6 * 3 and report['kept_concept'] == 3
  records = json.load(open(out))
  assert [r['idx'] for r in records] == [0, 2, 3]
  for r, seed in zip(records, [s for i, s in enumerate(seeds) if i != MISMATCH]):
    assert (r['question'], tuple(r['choices']), r['answer'], r['subject']) == (
        seed.question, seed.choices, seed.answer, seed.subject)
    creature = re.search(r'the (\w+) live', r['question']).group(1)
    assert {q['topic_wiki_name'] for q in r['bloom_questions']} == {creature}
    assert {q['concept_wiki_name'] for q in r['concept_questions']} == {seed.choices[seed.answer]}
    for q in r['bloom_questions'] + r['concept_questions']:
      assert q[q['answer']].startswith('right') and 'document' not in q['question'].lower()
  items = load_struct(out)  # the format the readers take; ids as the generator writes them
  assert len(items) == 57 and {i.level for i in items if i.kind == 'bloom'} == set(LEVELS)
  want = {f'struct_synth/{n}-bloom-{LEVEL_KEYS[lv]}-{k}' for n in (0, 2, 3) for lv in LEVELS for k in (0, 3, 4)}
  assert {i.id for i in items} == want | {f'struct_synth/{n}-concept-0-0' for n in (0, 2, 3)}
  assert next(i for i in items if i.id.endswith('0-bloom-apply-0')).question == 'What is applying question 0?'
  # resuming: nothing is asked again; a lost part is generated again alone
  before, calls = open(out).read(), sum(script.calls.values())
  again = gen.generate_struct(_pipeline(pages, script), seeds, out)
  assert again['generated_this_run'] == 0 and sum(script.calls.values()) == calls and open(out).read() == before
  os.remove(out + '.parts/2.part')
  assert gen.generate_struct(_pipeline(pages, script), seeds, out)['generated_this_run'] == 1
  assert json.load(open(out))[1]['idx'] == 2 and len(load_struct(out)) == 57
  with pytest.raises(ValueError, match='seed idx values repeat'):
    gen.generate_struct(_pipeline(pages, script), [Seed('q', ('a',) * 4, 0, idx=5)] * 2, str(tmp_path / 'x.json'))


def test_rag_filter_keeps_and_drops_with_a_scripted_judge():
  questions = [_mcq('q0?', 0), _mcq('q1?', 1, 'unanswerable'), _mcq('q2?', 2, 'ambiguous'), _mcq('q3?', 3)]
  judge = Script()
  kept = gen.rag_filter(questions, ['doc'] * 4, judge, np.random.default_rng(0))
  assert [q['question'] for q in kept] == ['q0?', 'q3?'] and judge.calls['judge'] == 4
  assert gen.rag_filter(questions, ['doc'] * 4, lambda ps: [None] * len(ps), np.random.default_rng(0)) == []
  assert gen.judged('I cannot answer: two options fit (B and C).', questions[0]) is None
  assert gen.judged('The answer is (C).', questions[0]) == 'C' and gen.judged(None, questions[0]) is None


def test_option_move_keeps_the_key_and_the_letters_are_uniform():
  rng = np.random.default_rng(11)
  question = _mcq('q?', 0)
  for letter in LETTERS:
    moved = gen.move_answer(question, letter)
    assert moved['answer'] == letter and moved[letter] == 'right 0'
    assert sorted(moved[k] for k in LETTERS) == sorted(question[k] for k in LETTERS)
    assert [moved[k] for k in LETTERS if k not in (letter, 'A')] == [question[k] for k in LETTERS
                                                                     if k not in (letter, 'A')]
  n = 4000
  kept = gen.rag_filter([question] * n, ['d'] * n, Script(), rng)  # the judge answers every item right
  counts = Counter(q['answer'] for q in kept)
  chi2 = sum((counts[k] - n / 4) ** 2 / (n / 4) for k in LETTERS)
  assert len(kept) == n and chi2 < 16.27  # p = 0.001 at 3 degrees of freedom


def test_parsers_and_phrase_stripping():
  assert gen.parse_objective('**Topic:** Lava\nDescription: molten rock\n') == ('Lava', 'molten rock')
  assert gen.parse_objective('Topic: Lava') is None and gen.parse_objective(None) is None
  many = '\n'.join(f'{i}. Thing{i}: why' for i in range(8))
  assert [n for n, _ in gen.parse_concepts(many)] == [f'Thing{i}' for i in range(5)]
  assert gen.parse_questions('no json here') is None and gen.parse_questions('[1, {"question": "q"}]') == []
  got = gen.parse_questions('Here: {"question": "Q?", "A": "a", "B": "b", "C": "c", "D": "d", "answer": " (c)"}')
  assert got == [{'question': 'Q?', 'A': 'a', 'B': 'b', 'C': 'c', 'D': 'd', 'answer': 'C', 'explanation': ''}]
  assert gen.strip_phrases('According to the passage, why did it fall?') == 'Why did it fall?'
  assert gen.strip_phrases('Which gas, as described in the document, is inert?') == 'Which gas is inert?'
  assert gen.strip_phrases('What does the text in the given article say?') == 'What does the text say?'
  assert gen.strip_phrases('What sets the context length?') == 'What sets the context length?'
  assert gen.strip_phrases('iron, from the text') == 'Iron' and gen.strip_phrases(' iron ') == ' iron '
  for level in LEVELS:
    assert gen.LEVEL_RULES[level] in gen.bloom_prompt(level, 'T', 'D', 'doc')


def test_difficulty_filter_drops_what_too_many_pool_models_answer(world):
  records = [{'question': 'q', 'choices': ['a'] * 4, 'answer': 0, 'subject': 'high_school_biology',
              'bloom_questions': [{**_mcq(f'b{k}?', k), 'level': 'remembering'} for k in range(3)],
              'concept_questions': [_mcq('c0?', 0)]}]

  def model(knows):  # answers A (the key) on the questions it knows, else B
    return lambda prompts: ['A' if re.search(r'Question: (\S+)', p).group(1) in knows else 'B. wrong' for p in prompts]

  pool = [model({'b0?', 'b1?', 'c0?'}), model({'b0?', 'c0?'}), model({'b0?'})]
  out, report = gen.difficulty_filter(records, pool, max_correct=1)
  assert [q['question'] for q in out[0]['bloom_questions']] == ['b1?', 'b2?'] and out[0]['concept_questions'] == []
  assert report['dropped'] == 2 and report['correct_histogram'] == [1, 1, 1, 1]
  assert records[0]['concept_questions']  # the input is left as it was


@pytest.fixture(scope='module')
def tiny_lm(world):
  """A random one-layer Qwen2 (weights x4: spread logits) with a byte-level BPE tokenizer trained on the corpus."""
  pages = world[1]
  tokenizer = Tokenizer(models.BPE())
  tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tokenizer.decoder = decoders.ByteLevel()
  tokenizer.train_from_iterator([p.text for p in pages] * 2, trainers.BpeTrainer(
      vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
  config = Qwen2Config(vocab_size=tokenizer.get_vocab_size(), hidden_size=32, intermediate_size=48,
                       num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048)
  module = Qwen2ForCausalLM(config)
  shapes = nn.unbox(jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 4), jnp.int32)))['params']
  rng = np.random.default_rng(0)  # numpy draws: no compilation; norms at 1, the rest wide (spread logits)
  params = jax.tree_util.tree_map_with_path(
      lambda path, x: np.ones(x.shape, np.float32) if 'scale' in jax.tree_util.keystr(path)
      else rng.normal(0, 0.3, x.shape).astype(np.float32), shapes)
  return gen.MmjaxLM(module, params, tokenizer, max_new_tokens=3, batch_size=8)


def test_tiny_mmjax_model_as_judge_and_reranker(world, tmp_path, tiny_lm):
  """Few shapes (one score and one generate call) keep the compilations, hence the time, down."""
  seeds, pages = world
  script, seen = Script(), []
  script.reject = '-'  # no seed rejected
  script.no_concepts = True

  def judge(prompts):
    replies = tiny_lm(prompts)
    seen.extend(zip(prompts, replies))
    return replies

  pipeline = gen.Pipeline(script, judge, Retriever(pages, tiny_lm.logprob, chunk_tokens=8), seed=1, per_level=3,
                          levels=('remembering',))
  out = str(tmp_path / 'struct_tiny' / 'struct_test_tiny.json')
  os.makedirs(os.path.dirname(out))
  report = gen.generate_struct(pipeline, seeds[:1], out)
  assert report['seeds_kept'] == 1 and report['candidates'] == 3 and len(seen) == 3
  record = json.load(open(out))[0]
  kept = [q['question'] for q in record['bloom_questions']]
  want = []  # the questions whose judge reply picks the option the question's key moved to
  for prompt, reply in seen:
    options = dict(re.findall(r'^([A-D])\. (.+)$', prompt, re.M))
    key = next(k for k, v in options.items() if v.startswith('right'))
    if gen.judged(reply, options) == key:
      want.append(re.search(r'Question: (.+)\n', prompt).group(1))
  assert kept == want and report['kept_bloom'] == len(kept) and all(isinstance(r, str) for _, r in seen)
  # the document: the page's three chunks of highest log p(seed question | chunk), best first
  page = next(p for p in pages if seeds[0].question.split()[-2] == p.title)
  chunks = chunk(page.text, 8)
  scores = tiny_lm.logprob(chunks, [seeds[0].question] * len(chunks))
  best = sorted(range(len(chunks)), key=lambda i: -scores[i])[:3]
  assert all(np.isfinite(scores)) and len(set(scores)) == len(chunks)
  assert seen[0][0].startswith('Document:\n' + '\n\n'.join(chunks[i] for i in best) + '\n\n')



def test_generate_struct_program_through_an_openai_server(world, tmp_path, tiny_lm):
  """launch.py --mode generate_struct: the scripted LM behind a local OpenAI-compatible server writes and judges,
  the tiny model (saved as an HF folder) reranks. (The difficulty filter's pool is tested with scripted models
  above: a local pool here would cost compilations.)"""
  import http.server
  import threading

  from configs.structeval import get_config
  from experiments.structeval.experiment import PROGRAMS
  from mmjax.weights import save_pretrained
  seeds, pages = world
  hf = tmp_path / 'tiny'
  save_pretrained(hf, tiny_lm.module, tiny_lm.params)
  tiny_lm.tokenizer.save(str(hf / 'tokenizer.json'))
  (tmp_path / 'seeds.json').write_text(json.dumps(
      [{'question': s.question, 'choices': list(s.choices), 'answer': s.answer, 'subject': s.subject, 'idx': 10 + i}
       for i, s in enumerate(seeds[:2])]))
  (tmp_path / 'pages.jsonl').write_text(''.join(json.dumps(dataclasses.asdict(p)) + '\n' for p in pages))
  script = Script()
  script.reject, script.no_concepts = '-', True

  class Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
      body = json.loads(self.rfile.read(int(self.headers['Content-Length'])))
      data = json.dumps({'choices': [{'message': {'content': script.reply(body['messages'][0]['content'])}}]})
      self.send_response(200)
      self.send_header('Content-Length', str(len(data.encode())))
      self.end_headers()
      self.wfile.write(data.encode())

    def log_message(self, *args):
      del args

  server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
  threading.Thread(target=server.serve_forever, daemon=True).start()
  config = get_config()
  config.checkpoint, config.chat_template = str(hf), ''
  config.generation = {'seeds': str(tmp_path / 'seeds.json'), 'corpus': str(tmp_path / 'pages.jsonl'),
                       'api_url': f'http://127.0.0.1:{server.server_port}/v1', 'api_model': 'scripted/v0',
                       'concurrency': 2}
  try:
    report = PROGRAMS['generate_struct'](config, str(tmp_path / 'run'))
  finally:
    server.shutdown()
  assert report['seeds_kept'] == 2 and report['kept_bloom'] == 2 * 6 * 3 and report['kept_concept'] == 0
  out = tmp_path / 'run' / 'struct_test_scripted-v0.json'
  assert [r['idx'] for r in json.load(open(out))] == [10, 11] and len(load_struct(str(out))) == 36
  assert 'difficulty_filter' not in report and not (tmp_path / 'run' / 'v1').exists()
  config.generation = {'corpus': 'x'}
  with pytest.raises(ValueError, match='set --config.generation.seeds'):
    PROGRAMS['generate_struct'](config, str(tmp_path / 'bad'))
