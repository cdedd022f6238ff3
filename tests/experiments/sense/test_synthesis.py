"""SENSE synthesis: strong data through a local OpenAI-compatible test server (scripted completions, malformed ones,
a failing SQL, a duplicate, a hostile schema, server errors), and weak sampling labelled by execution."""
import http.server
import json
import os
import threading

import pytest

from experiments.sense import data, synthesis
from mmjax.evals.sql import SqlPool

SEEDS = [
    synthesis.SeedExample('CREATE TABLE ship (id INTEGER PRIMARY KEY, name TEXT, tons INTEGER);',
                          'How many ships are there?', 'SELECT count(*) FROM ship', 'shipping'),
    synthesis.SeedExample('CREATE TABLE tree (id INTEGER PRIMARY KEY, species TEXT, height REAL);',
                          'What is the tallest tree species?', 'SELECT species FROM tree ORDER BY height DESC LIMIT 1',
                          'forestry'),
    synthesis.SeedExample('CREATE TABLE lamp (id INTEGER PRIMARY KEY, watts INTEGER);', 'List all watts.',
                          'SELECT watts FROM lamp', 'lighting'),
]
BAKERY = ('CREATE TABLE bread (id INTEGER PRIMARY KEY, name TEXT, price REAL);\n'
          "INSERT INTO bread VALUES (1, 'rye', 2.5), (2, 'spelt', 3.0);")
BEES = ('CREATE TABLE hive (id INTEGER PRIMARY KEY, site TEXT);\n'
        'CREATE TABLE honey (id INTEGER PRIMARY KEY, hive_id INTEGER REFERENCES hive(id), kg REAL);')


def _item(domain, schema, question, sql, bold=False):
  if bold:
    return (f'**Domain:** {domain}\n**Schema:**\n```sql\n{schema}\n```\n**Question:** {question}\n'
            f'**Answer:**\n```sql\n{sql};\n```')
  return f'Domain: {domain}\nSchema:\n{schema}\nQuestion: {question}\nAnswer: {sql}'


def _chat(content):
  return 200, {'id': 'x', 'choices': [{'index': 0, 'message': {'role': 'assistant', 'content': content}}]}


def _server(script):
  """An OpenAI-compatible server answering POST /v1/chat/completions with the scripted (status, body) replies in
  order; it records each request's path, headers and JSON body."""
  seen = []

  class Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802  (http.server's name)
      body = json.loads(self.rfile.read(int(self.headers['Content-Length'])))
      seen.append((self.path, dict(self.headers), body))
      status, reply = script.pop(0) if self.path == '/v1/chat/completions' else (404, {'error': 'no such path'})
      raw = reply.encode() if isinstance(reply, str) else json.dumps(reply).encode()
      self.send_response(status)
      self.send_header('Content-Type', 'application/json')
      self.send_header('Content-Length', str(len(raw)))
      self.end_headers()
      self.wfile.write(raw)

    def log_message(self, *args):
      del args

  server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
  threading.Thread(target=server.serve_forever, daemon=True).start()
  return server, seen


@pytest.fixture(scope='module')
def pool():
  with SqlPool(2, timeout_s=5.0, progress=False) as p:
    yield p


def test_strong_synthesis_against_a_local_server(tmp_path, pool):
  escape = tmp_path / 'escaped.db'
  script = [
      _chat(_item('Bakery', BAKERY, 'Which breads cost more than 2?', 'SELECT name FROM bread WHERE price > 2',
                  bold=True)),
      _chat('Domain: Bakery\nSchema:\nCREATE TABLE t (a INT);\nQuestion: where is the answer?'),  # no Answer
      (500, {'error': 'overloaded'}),  # retried: the next reply answers the same prompt
      _chat(_item('Beekeeping', BEES, 'Total honey per site?', 'SELECT T1.site, SUM(T2.kg) FROM hive AS T1 '
                  'JOIN honey AS T2 ON T1.id = T2.hive_id GROUP BY T1.site')),
      _chat(_item('Bakery', BAKERY, 'What is the average rye weight?', 'SELECT AVG(weight) FROM bread')),  # no column
      _chat(_item('bakery', BAKERY, 'which breads cost more than 2? ', 'SELECT name  FROM bread WHERE price > 2')),
      _chat(_item('Spies', f"ATTACH DATABASE '{escape}' AS x;\nCREATE TABLE x.t (a INT);", 'Q?', 'SELECT 1')),
      (200, {'choices': []}),  # a reply without a completion: retried
      _chat(_item('Weather', 'CREATE TABLE obs (day TEXT, rain REAL);', 'Days with rain?',
                  'SELECT day FROM obs WHERE rain > 0')),
  ]
  server, seen = _server(script)
  try:
    generator = synthesis.OpenAIChatGenerator(f'http://127.0.0.1:{server.server_port}/v1', 'tiny', api_key='k',
                                              backoff_s=0.0, retries=1)
    report = synthesis.synthesize_strong(generator, SEEDS, 3, str(tmp_path / 'out'), seed=0, execute=pool.map,
                                         timeout_s=5.0)
    with pytest.raises(RuntimeError, match='HTTP 404'):
      synthesis.OpenAIChatGenerator(f'http://127.0.0.1:{server.server_port}/nope', 'tiny').complete('hi')
  finally:
    server.shutdown()
  assert not script and not escape.exists()
  assert report['kept'] == 3 and report['requests'] == 7
  assert report['dropped'] == {'parse': 1, 'sql_syntax': 1, 'duplicate': 1, 'schema': 1}
  assert report['domains'] == {'bakery': 1, 'beekeeping': 1, 'weather': 1} and report['largest_domain_share'] == 1 / 3
  assert sum(report['difficulty'].values()) == 3 and report['over_represented'] == 0
  for path, headers, body in seen[:-1]:
    assert path == '/v1/chat/completions' and headers['Authorization'] == 'Bearer k' and body['model'] == 'tiny'
    prompt = body['messages'][0]['content']
    assert prompt.count('Example ') == 2 and sum(s.question in prompt for s in SEEDS) == 2
    assert any(f'of {d} difficulty' in prompt for d in synthesis.DIFFICULTIES)
  out = tmp_path / 'out'
  written = json.loads((out / 'train_synth.json').read_text())
  assert [w['question'] for w in written] == ['Which breads cost more than 2?', 'Total honey per site?',
                                              'Days with rain?']
  assert json.loads((out / 'synthesis_report.json').read_text()) == report
  examples = data.read_spider_examples(str(out / 'train_synth.json'))
  assert [g for g, _ in data.read_gold_file(str(out / 'synth_gold.sql'))] == [e.sql for e in examples]
  db = data.database_path(str(out / 'database'), examples[0].db_id)
  assert 'CREATE TABLE bread' in data.schema_prompt(db)
  assert pool.map([(db, examples[0].sql)])[0].rows == [('rye',), ('spelt',)]
  assert sorted(os.listdir(out / 'database')) == ['synth_00000', 'synth_00001', 'synth_00002']


def test_parse_and_prompt():
  text = _item('Bakery', BAKERY, 'Q?', 'SELECT 1', bold=True)
  assert synthesis.parse_strong(text) == {'domain': 'Bakery', 'schema': BAKERY, 'question': 'Q?', 'sql': 'SELECT 1'}
  assert synthesis.parse_strong('Domain: a\nSchema:\nCREATE TABLE t (a);\nQuestion: q\nSQL: SELECT a FROM t;')['sql'] \
      == 'SELECT a FROM t'
  assert synthesis.parse_strong('Domain: a\nSchema:\nQuestion: q\nAnswer: SELECT 1') is None  # empty schema
  assert synthesis.parse_strong('') is None
  assert synthesis.parse_strong('Domain: a\nSchema:\nCREATE TABLE t (a);\nQuestion: q\nAnswer: -- none;') is None
  prompt = synthesis.strong_prompt(SEEDS[:2], 'hard')
  assert 'healthcare' in prompt and SEEDS[1].sql in prompt and 'of hard difficulty' in prompt
  with pytest.raises(ValueError, match='difficulty'):
    synthesis.strong_prompt(SEEDS[:2], 'extra')


def test_schema_builder_denies_what_is_not_ddl(tmp_path):
  ok = synthesis.build_schema_db(str(tmp_path / 'a.sqlite'), BEES)
  assert ok == '' and (tmp_path / 'a.sqlite').exists()
  for hostile in ('PRAGMA writable_schema = ON; CREATE TABLE t (a);',
                  'CREATE TABLE t (a); CREATE TRIGGER g AFTER INSERT ON t BEGIN DELETE FROM t; END;',
                  "SELECT load_extension('x'); CREATE TABLE t (a);",
                  'CREATE TABLE t (a); WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) '
                  'INSERT INTO t SELECT x FROM c;'):
    path = tmp_path / 'b.sqlite'
    assert synthesis.build_schema_db(str(path), hostile, timeout_s=1.0) != '' and not path.exists(), hostile


def _weak_db(root):
  data.write_database(os.path.join(root, 'zoo', 'zoo.sqlite'), [
      'CREATE TABLE animal (id INTEGER PRIMARY KEY, name TEXT, legs INTEGER)',
      "INSERT INTO animal VALUES (1, 'ant', 6), (2, 'bat', 2), (3, 'cat', 4), (4, 'dog', 4)"])


def test_weak_sampling_labels_and_limits_pairs(tmp_path, pool):
  _weak_db(str(tmp_path))
  examples = [data.Text2SqlExample('zoo', 'Names of four-legged animals.', 'SELECT name FROM animal WHERE legs = 4'),
              data.Text2SqlExample('zoo', 'Animals by legs.', 'SELECT name FROM animal ORDER BY legs, name'),
              data.Text2SqlExample('zoo', 'How many animals?', 'SELECT count(*) FROM animal')]
  scripted = {
      examples[0].question: ['SELECT name FROM animal WHERE 4 = legs', 'SELECT name FROM animal WHERE legs > 4',
                             'SELECT nam FROM animal', 'SELECT name FROM animal WHERE legs >= 4 AND legs < 5'],
      examples[1].question: ['SELECT name FROM animal ORDER BY name', 'SELECT name FROM animal ORDER BY legs, name'],
      examples[2].question: ['SELECT count(*) FROM animal', 'SELECT count(id) FROM animal'],
  }
  seen_prompts = []

  def sampler(batch, prompts, n):
    seen_prompts.extend(prompts)
    return [scripted[e.question][:n] for e in batch]

  pairs, stats = synthesis.weak_sample(examples, str(tmp_path), sampler, execute=pool.map, n_samples=4, seed=0)
  schema = data.schema_prompt(os.path.join(tmp_path, 'zoo', 'zoo.sqlite'))
  assert seen_prompts == [data.render_prompt(schema, e.question) for e in examples]
  assert stats == {'questions': 3, 'samples': 8, 'chosen': 5, 'gold_failed': 0, 'all_chosen': 1, 'all_rejected': 0,
                   'error_syntax': 1, 'pairs': 2}
  assert [p['question'] for p in pairs] == [examples[0].question, examples[1].question]
  first, second = pairs
  assert first['chosen'] in scripted[examples[0].question][::3] and first['rejected'] in scripted[
      examples[0].question][1:3]
  assert (second['chosen'], second['rejected']) == (scripted[examples[1].question][1],
                                                    scripted[examples[1].question][0])
  assert first['prompt'] == seen_prompts[0]
  every, _ = synthesis.weak_sample(examples, str(tmp_path), sampler, execute=pool.map, n_samples=4,
                                   pairs_per_question=None)
  assert len(every) == 2 * 2 + 1
  labels = synthesis.label_candidates([(os.path.join(tmp_path, 'zoo', 'zoo.sqlite'), 'SELECT nope FROM animal',
                                        ['SELECT nope FROM animal'])], pool.map)
  assert not labels[0].gold_ok and not labels[0].candidates[0].chosen  # an erroring gold never matches


def test_sampler_from_generator_extracts_sql(tmp_path, pool):
  _weak_db(str(tmp_path))
  example = data.Text2SqlExample('zoo', 'How many animals?', 'SELECT count(*) FROM animal')
  replies = iter(['```sql\nSELECT count(*)\nFROM animal;\n```\nThis counts rows.', 'SELECT count(*) FROM animal WHERE '
                  'legs = 4; -- four legs', None])
  asked = []

  def generator(prompts):
    asked.extend(prompts)
    return [next(replies) for _ in prompts]

  sampler = synthesis.sampler_from_generator(generator)
  pairs, stats = synthesis.weak_sample([example], str(tmp_path), sampler, execute=pool.map, n_samples=3)
  assert len(asked) == 3 and len(set(asked)) == 1 and example.question in asked[0]
  assert stats['chosen'] == 1 and stats['samples'] == 3 and stats['error_empty'] == 1  # the failed request
  assert pairs == [{'db_id': 'zoo', 'question': example.question, 'evidence': '', 'prompt': asked[0],
                    'chosen': 'SELECT count(*) FROM animal', 'rejected': pairs[0]['rejected']}]
  assert pairs[0]['rejected'] in ('SELECT count(*) FROM animal WHERE legs = 4', '')
  # A blank answer never matches, not even an empty gold result.
  empty_gold = 'SELECT name FROM animal WHERE legs > 8'
  labels = synthesis.label_candidates([(os.path.join(tmp_path, 'zoo', 'zoo.sqlite'), empty_gold,
                                        ['', ' -- nothing ;', 'SELECT name FROM animal WHERE legs = 0'])], pool.map)
  assert [(c.chosen, c.error_kind) for c in labels[0].candidates] == [(False, 'empty'), (False, 'empty'), (True, '')]
