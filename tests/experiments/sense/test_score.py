"""SENSE score-only mode end to end: generated Spider- and BIRD-layout trees scored through launch.py's program
(in-process), the summaries, the readers and the prompt, and bad input named in one line."""
import json
import os

import pytest

import launch
from configs.sense import get_config
from experiments.sense import data, experiment
from mmjax.evals import text2sql

SCHEMA = ['CREATE TABLE pet (id INTEGER PRIMARY KEY, name TEXT, kind TEXT, age INTEGER)',
          'CREATE TABLE owner (id INTEGER PRIMARY KEY, pet_id INTEGER REFERENCES pet(id), `full name` TEXT)']
ROWS = ["INSERT INTO pet VALUES (1, 'Rex', 'dog', 3)", "INSERT INTO pet VALUES (2, 'Tom', 'cat', 5)",
        "INSERT INTO pet VALUES (3, 'Kit', 'cat', 1)", "INSERT INTO owner VALUES (1, 2, 'Al Bo')"]
# (gold, prediction, correct for Spider, correct for BIRD, BIRD difficulty)
EXAMPLES = [
    ('SELECT count(*) FROM pet', 'SELECT count(id) FROM pet', True, True, 'simple'),
    ("SELECT name FROM pet WHERE kind = 'cat' ORDER BY age", "SELECT name FROM pet WHERE kind = 'cat' "
     'ORDER BY age DESC', False, True, 'moderate'),
    ('SELECT kind FROM pet', 'SELECT kind FROM pet GROUP BY kind', False, True, 'simple'),
    ('SELECT name FROM pet WHERE id NOT IN (SELECT pet_id FROM owner)', 'SELECT nme FROM pet', False, False,
     'challenging'),
]


def _tree(root, benchmark, examples=EXAMPLES):
  db_root = root / ('database' if benchmark == 'spider' else 'dev_databases')
  data.write_database(str(db_root / 'pets' / 'pets.sqlite'), SCHEMA + ROWS)
  data.write_gold_file(str(root / 'dev_gold.sql'), [(e[0], 'pets') for e in examples])
  if benchmark == 'spider':
    return data.write_spider_predictions(str(root / 'pred.sql'), [e[1] for e in examples])
  (root / 'dev.json').write_text(json.dumps([{'question_id': i, 'db_id': 'pets', 'question': 'q', 'evidence': '',
                                              'SQL': e[0], 'difficulty': e[4]} for i, e in enumerate(examples)]))
  return data.write_bird_predictions(str(root / 'predict_dev.json'), [(e[1], 'pets') for e in examples])


def _score(tmp_path, benchmark, **overrides):
  config = get_config(f'benchmark={benchmark}')
  config.update(dict(data_dir=str(tmp_path / 'data'), progress_bar=False, workers=2, **overrides))
  _, program = launch.pick_program(experiment, 'score')
  return program(config, str(tmp_path / 'run'))


@pytest.mark.parametrize('benchmark', ['spider', 'bird'])
def test_score_a_tree_end_to_end(tmp_path, benchmark):
  predictions = _tree(tmp_path / 'data', benchmark)
  summary = _score(tmp_path, benchmark, predictions=predictions)
  right = [e[2] if benchmark == 'spider' else e[3] for e in EXAMPLES]
  levels = ([text2sql.spider_hardness(e[0]) for e in EXAMPLES] if benchmark == 'spider'
            else [e[4] for e in EXAMPLES])
  assert summary['n'] == len(EXAMPLES) and summary['accuracy'] == sum(right) / len(right)
  assert summary['pred_errors'] == 1 and summary['pred_timeouts'] == summary['gold_errors'] == 0
  for level, row in summary['levels'].items():
    marks = [r for r, lvl in zip(right, levels) if lvl == level]
    assert row == {'n': len(marks), 'accuracy': sum(marks) / len(marks)}
  assert sum(row['n'] for row in summary['levels'].values()) == len(EXAMPLES)
  run = tmp_path / 'run'
  assert json.loads((run / 'summary.json').read_text()) == summary
  verdicts = [json.loads(line) for line in (run / 'verdicts.jsonl').read_text().splitlines()]
  assert [v['correct'] for v in verdicts] == right and verdicts[3]['reason'] == 'pred_error'
  assert 'accuracy (%)' in (run / 'summary.md').read_text()


def test_smoke_variant_scores_its_generated_tree(tmp_path):
  config = get_config('variant=smoke')
  config.progress_bar = False
  summary = experiment.run_score(config, str(tmp_path))
  assert summary['n'] == len(experiment.SMOKE_EXAMPLES) and 0 < summary['accuracy'] < 1
  assert sum(summary['reasons'].values()) == summary['n']
  assert os.path.isfile(tmp_path / 'smoke_data' / 'spider' / 'database' / 'shop' / 'shop_1.sqlite')


def test_fewer_predictions_than_gold_names_both_files(tmp_path):
  predictions = _tree(tmp_path / 'data', 'spider')
  data.write_spider_predictions(predictions, ['SELECT 1'] * 3)
  with pytest.raises(ValueError, match=rf'predictions {predictions} has 3 entries, fewer than the 4 gold queries '
                                       rf'of {tmp_path}/data/dev_gold.sql'):
    _score(tmp_path, 'spider', predictions=predictions)


def test_a_db_id_without_database_is_named(tmp_path):
  predictions = _tree(tmp_path / 'data', 'spider')
  data.write_gold_file(str(tmp_path / 'data' / 'dev_gold.sql'), [(e[0], 'pets') for e in EXAMPLES[:3]]
                       + [('SELECT 1', 'zoo')])
  with pytest.raises(FileNotFoundError, match="no database for db_id 'zoo': .*database/zoo/zoo.sqlite"):
    _score(tmp_path, 'spider', predictions=predictions)


def test_bad_input_is_named(tmp_path):
  predictions = _tree(tmp_path / 'data', 'bird')
  with pytest.raises(ValueError, match='set --config.predictions'):
    _score(tmp_path, 'bird', predictions='')
  data.write_bird_predictions(predictions, [(e[1], 'other') for e in EXAMPLES])
  with pytest.raises(ValueError, match="prediction 0 names db_id 'other'.*not in gold order"):
    _score(tmp_path, 'bird', predictions=predictions)
  (tmp_path / 'data' / 'dev_gold.sql').write_text('SELECT 1 no tab\n')
  with pytest.raises(ValueError, match='dev_gold.sql:1: a gold line must be SQL<TAB>db_id'):
    _score(tmp_path, 'bird', predictions=predictions)
  with pytest.raises(ValueError, match='benchmark must be one of spider, bird'):
    get_config('benchmark=wikisql')


def test_readers_and_prompt(tmp_path):
  _tree(tmp_path, 'bird')
  [example, *_] = data.read_bird_examples(str(tmp_path / 'dev.json'))
  assert (example.db_id, example.sql, example.difficulty) == ('pets', EXAMPLES[0][0], 'simple')
  (tmp_path / 'train_spider.json').write_text(json.dumps([{'db_id': 'pets', 'question': 'q?', 'query': 'SELECT 1'},
                                                          {'db_id': 'pets'}]))
  with pytest.raises(ValueError, match=r"train_spider.json: record 1: missing field\(s\) \['question', 'query'\]"):
    data.read_spider_examples(str(tmp_path / 'train_spider.json'))
  schema = data.schema_prompt(data.database_path(str(tmp_path / 'dev_databases'), 'pets'), example_rows=2)
  assert schema.startswith('CREATE TABLE pet (\n  id INTEGER PRIMARY KEY,\n  name TEXT,')
  assert '`full name` TEXT,\n  FOREIGN KEY (pet_id) REFERENCES pet(id)\n);' in schema
  assert '/* 2 example rows of pet:\n1\tRex\tdog\t3\n2\tTom\tcat\t5\n*/' in schema
  prompt = data.render_prompt(schema, 'Which cats?', evidence='cat means kind = cat')
  assert prompt == schema + '\n\n-- Evidence: cat means kind = cat\n-- Question: Which cats?\n-- ' \
      + data.INSTRUCTION + '\n'
  assert '-- Evidence' not in data.render_prompt(schema, 'Which cats?')
