"""SENSE text-to-SQL (arXiv 2408.03256): `launch.py --config configs/sense.py:... --mode score|train|generate`.

score (the default): scores a prediction file in the official format against Spider (test-suite accuracy by
hardness) or BIRD (EX by difficulty); see evaluate.py. variant=smoke: a small generated tree in the official layout
(two databases, each with a neighbour database for the test suite) and predictions that are right (rewrites of the
gold), wrong or failing, written into workdir/smoke_data and scored.
train (configs/sense.py:stage=sft|dpo): SFT on prompt-masked SQL targets (train.py), then DPO / cDPO from the SFT
workdir on execution-labelled pairs (dpo.py), both through the shared trainer.
generate: greedy SQL for a Spider or BIRD split from a training workdir's checkpoint, scored as score mode
(generate.py).
"""
from __future__ import annotations

import json
import os
import random

import ml_collections

from experiments.sense import data, evaluate
from experiments.sense.generate import run_generate

SMOKE_SCHEMAS = {
    'shop': ['CREATE TABLE customer (id INTEGER PRIMARY KEY, name TEXT, city TEXT)',
             'CREATE TABLE orders (id INTEGER PRIMARY KEY, customer_id INTEGER REFERENCES customer(id), '
             'amount REAL, item TEXT)'],
    'school': ['CREATE TABLE student (id INTEGER PRIMARY KEY, name TEXT, age INTEGER, major TEXT)',
               'CREATE TABLE course (id INTEGER PRIMARY KEY, student_id INTEGER REFERENCES student(id), '
               'title TEXT, grade INTEGER)'],
}
# (db_id, question, evidence, difficulty, gold SQL, prediction)
SMOKE_EXAMPLES = [
    ('shop', 'How many customers are there?', '', 'simple',
     'SELECT count(*) FROM customer', 'SELECT count(id) FROM customer'),
    ('shop', 'Names of customers in Paris.', 'Paris is a city.', 'simple',
     "SELECT name FROM customer WHERE city = 'Paris'", "SELECT name FROM customer WHERE city = 'Rome'"),
    ('shop', 'Total amount per customer name, largest first.', '', 'moderate',
     'SELECT T1.name, sum(T2.amount) FROM customer AS T1 JOIN orders AS T2 ON T1.id = T2.customer_id '
     'GROUP BY T1.id ORDER BY sum(T2.amount) DESC',
     'SELECT sum(T2.amount), T1.name FROM customer AS T1 JOIN orders AS T2 ON T1.id = T2.customer_id '
     'GROUP BY T1.id ORDER BY sum(T2.amount) DESC'),
    ('shop', 'Customers with no orders.', '', 'challenging',
     'SELECT name FROM customer WHERE id NOT IN (SELECT customer_id FROM orders)',
     'SELECT name FROM customer WHERE id NOT IN (SELECT id FROM orders)'),
    ('school', 'Names of students older than 20.', 'older means age > 20', 'simple',
     'SELECT name FROM student WHERE age > 20', 'SELECT name FROM student WHERE age >= 21'),
    ('school', 'The oldest student.', '', 'moderate',
     'SELECT name FROM student ORDER BY age DESC LIMIT 1', 'SELECT name FROM student ORDER BY age LIMIT 1'),
    ('school', 'Majors with more than one student.', '', 'moderate',
     'SELECT major FROM student GROUP BY major HAVING count(*) > 1', 'SELECT major FROM students'),
    ('school', 'Students who took a course with grade above 80 and are older than 19.', '', 'challenging',
     'SELECT name FROM student WHERE age > 19 INTERSECT SELECT T1.name FROM student AS T1 JOIN course AS T2 '
     'ON T1.id = T2.student_id WHERE T2.grade > 80',
     'SELECT DISTINCT T1.name FROM student AS T1 JOIN course AS T2 ON T1.id = T2.student_id '
     'WHERE T2.grade > 80 AND T1.age > 19'),
]
_NAMES = ['Ann', 'Bo', 'Cy', 'Di', 'Ed', 'Flo', 'Gus', 'Hal']


def _rows(db_id: str, rng: random.Random) -> list[str]:
  """INSERT statements of one random instance of the smoke database `db_id`."""
  if db_id == 'shop':
    out = [f"INSERT INTO customer VALUES ({i}, '{n}', '{rng.choice(['Paris', 'Rome', 'Oslo'])}')"
           for i, n in enumerate(_NAMES[:6])]
    return out + [f"INSERT INTO orders VALUES ({k}, {rng.randrange(4)}, {rng.randrange(1, 50)}.5, 'item{k}')"
                  for k in range(8)]
  out = [f"INSERT INTO student VALUES ({i}, '{n}', {rng.randrange(17, 25)}, '{rng.choice(['math', 'art'])}')"
         for i, n in enumerate(_NAMES)]
  return out + [f"INSERT INTO course VALUES ({k}, {rng.randrange(8)}, 'c{k}', {rng.randrange(60, 100)})"
                for k in range(10)]


def write_smoke_tree(folder: str, benchmark: str, seed: int = 0) -> tuple[str, str]:
  """A generated dataset in the official layout of `benchmark` and its predictions: (data_dir, predictions)."""
  rng = random.Random(seed)
  root = os.path.join(folder, benchmark)
  db_root = os.path.join(root, 'database' if benchmark == 'spider' else 'dev_databases')
  for db_id, schema in SMOKE_SCHEMAS.items():
    data.write_database(os.path.join(db_root, db_id, f'{db_id}.sqlite'), schema + _rows(db_id, rng))
    if benchmark == 'spider':  # a neighbour database: the test suite must match there too
      data.write_database(os.path.join(db_root, db_id, f'{db_id}_1.sqlite'), schema + _rows(db_id, rng))
  data.write_gold_file(os.path.join(root, 'dev_gold.sql'), [(e[4], e[0]) for e in SMOKE_EXAMPLES])
  if benchmark == 'spider':
    with open(os.path.join(root, 'dev.json'), 'w', encoding='utf-8') as f:
      json.dump([{'db_id': e[0], 'question': e[1], 'query': e[4]} for e in SMOKE_EXAMPLES], f, indent=1)
    return root, data.write_spider_predictions(os.path.join(root, 'pred.sql'), [e[5] for e in SMOKE_EXAMPLES])
  with open(os.path.join(root, 'dev.json'), 'w', encoding='utf-8') as f:
    json.dump([{'question_id': i, 'db_id': e[0], 'question': e[1], 'evidence': e[2], 'SQL': e[4],
                'difficulty': e[3]} for i, e in enumerate(SMOKE_EXAMPLES)], f, indent=1)
  return root, data.write_bird_predictions(os.path.join(root, 'predict_dev.json'),
                                           [(e[5], e[0]) for e in SMOKE_EXAMPLES])


def run_score(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Scores config.predictions (smoke: a generated tree's) and writes verdicts.jsonl, summary.json and summary.md."""
  if config.variant == 'smoke':
    data_dir, predictions = write_smoke_tree(os.path.join(workdir, 'smoke_data'), config.benchmark, config.seed)
  else:
    if not config.predictions:
      raise ValueError(f'set --config.predictions to the prediction file ({config.benchmark}: '
                       + ('one SQL per line' if config.benchmark == 'spider' else 'predict_dev.json') + ')')
    data_dir, predictions = config.data_dir, config.predictions
  return evaluate.score(config, workdir, data_dir, predictions)


def _launch_flag(name: str, default):
  """launch.py's value of the trainer flag `name` (--stop_after_step, --restore_step, --allow_config_change), or
  `default` where that flag is not defined (a program called from Python)."""
  from absl import flags
  return flags.FLAGS[name].value if name in flags.FLAGS and flags.FLAGS.is_parsed() else default


def run_train(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains config.stage (sft or dpo) in workdir with the shared trainer. The stage prepares its inputs in the
  workdir first (the smoke world, the tokenizer, DPO's pairs with their reference log-probs), which is why this
  module runs the trainer itself rather than exposing make_experiment(config), which has no workdir."""
  from experiments.sense import dpo, train
  from mmjax.train import train_and_evaluate
  stage = config.get('stage')
  if stage not in ('sft', 'dpo'):
    raise ValueError('--mode train needs a training stage: configs/sense.py:stage=sft (then stage=dpo with '
                     '--config.init_from=the SFT workdir)')
  experiment = (train.sft_experiment if stage == 'sft' else dpo.dpo_experiment)(config, workdir)
  out = train_and_evaluate(config, workdir, experiment, stop_after_step=_launch_flag('stop_after_step', None),
                           restore_step=_launch_flag('restore_step', None),
                           allow_config_change=_launch_flag('allow_config_change', []))
  return {'step': out['step'], 'eval': out['eval'], 'preempted': out['preempted']}


PROGRAMS = {'score': run_score, 'train': run_train, 'generate': run_generate}
