"""The SENSE smoke world: generated SQLite databases in the Spider layout, templated questions with gold SQL, and a
gold-SQL mutator standing in for the weak model.

`write_smoke_world(root, seed)` writes, deterministically from the seed, for 3-5 domains (each a parent table and a
child table holding a foreign key to it):
  root/database/<db>/<db>.sqlite, root/tables.json, root/train_spider.json, root/dev.json,
  root/train_gold.sql, root/dev_gold.sql, root/train_strong.json
with questions from templates at three levels (easy: one table, a filter or an aggregate; medium: a join, GROUP BY,
COUNT(DISTINCT) or ORDER BY + LIMIT; hard: nesting, GROUP BY + HAVING, join + group + order). VALUE_TEMPLATES take a
slot value (a name or category from the rows, or a round threshold), quoted in the question as in the SQL and one
word of the smoke tokenizer each; VALUE_FREE_TEMPLATES name columns only (with_values=False keeps only those). Every
gold query returns rows; ORDER BY keys are unique, so gold row orders are well defined.

The strong data (`SmokeWorld.strong`, the SFT data of the learning smoke) stands for SENSE's synthetic data, which
is only checked to execute: a share of the templates are the generator's blind spots, whose train SQL carries one
consistent executable fault (BLIND_SPOT_KINDS) at a stated rate. The gold files keep the true SQL, which the weak
samples are labelled against.

The weak model (`weak_candidates`) returns, per question, the gold or one of MUTATION_KINDS applied to it: the
realistic faults of the spec (wrong column, missing join condition, COUNT vs COUNT(DISTINCT), dropped ORDER BY,
swapped comparison, syntax error, wrong aggregate, off-by-one LIMIT) and an equivalent rewrite that must come out
chosen. `label_weak_samples` executes them (experiments/sense/synthesis.py: through the sandboxed executor) and
labels each chosen or rejected by its result; a mutation whose result happens to equal the gold's is chosen, and
`mutation_summary` counts those per kind.
"""
from __future__ import annotations

import dataclasses
import json
import os
import random
import re
import sqlite3
from collections import Counter
from collections.abc import Sequence

from experiments.sense import data, synthesis
from mmjax.evals import text2sql

LEVELS = ('easy', 'medium', 'hard')
MUTATION_KINDS = ('wrong_column', 'missing_join_condition', 'count_distinct', 'dropped_order_by',
                  'swapped_operator', 'syntax_error', 'wrong_aggregate', 'limit_off_by_one', 'equivalent_rewrite')
# Templates with a slot value from the rows (several instances each) and templates without one (one instance per
# database: the question names columns only, so answering it needs no copying of a value from the question).
VALUE_TEMPLATES = ('filter_category', 'count_above', 'category_of_name', 'quantity_below', 'with_kind',
                   'average_of_kind', 'top_k', 'count_parents_above', 'measures_of_name', 'more_than_n',
                   'total_per_parent')
VALUE_FREE_TEMPLATES = ('count_kinds', 'max_measure', 'count_per_category', 'without_children', 'most_children',
                        'above_average', 'count_children', 'count_parents', 'min_measure', 'average_measure',
                        'total_measure', 'max_quantity', 'highest_quantity', 'lowest_quantity', 'by_quantity',
                        'count_categories', 'count_per_kind', 'total_per_each', 'with_children')
TEMPLATES = VALUE_TEMPLATES + VALUE_FREE_TEMPLATES
# The strong generator's blind spots: faults that still execute and change the result in one consistent way (a
# random wrong column or a syntax error would not make a consistent misconception).
BLIND_SPOT_KINDS = ('missing_join_condition', 'count_distinct', 'dropped_order_by', 'swapped_operator',
                    'wrong_aggregate', 'limit_off_by_one')


@dataclasses.dataclass(frozen=True)
class Domain:
  """A two-table database: parent(pk, label, category, quantity) and child(child_pk, pk -> parent, kind, measure)."""
  name: str
  parent: str
  parent_noun: str
  pk: str
  label: str
  category: str
  categories: tuple[str, ...]
  quantity: str
  quantity_range: tuple[int, int]
  child: str
  child_noun: str
  child_pk: str
  kind: str
  kinds: tuple[str, ...]
  measure: str
  measure_range: tuple[int, int]

  @property
  def columns(self) -> dict[str, list[str]]:
    return {self.parent: [self.pk, self.label, self.category, self.quantity],
            self.child: [self.child_pk, self.pk, self.kind, self.measure]}


DOMAINS = (
    Domain('shop', 'customers', 'customer', 'customer_id', 'name', 'city', ('Lyon', 'Oslo', 'Porto', 'Graz'),
           'age', (18, 80), 'orders', 'order', 'order_id', 'status', ('open', 'paid', 'shipped'), 'amount',
           (5, 900)),
    Domain('library', 'authors', 'author', 'author_id', 'name', 'country', ('Chile', 'Kenya', 'Japan', 'Peru'),
           'birth_year', (1900, 1999), 'books', 'book', 'book_id', 'genre', ('poetry', 'drama', 'essay'), 'pages',
           (40, 1200)),
    Domain('sports', 'teams', 'team', 'team_id', 'name', 'league', ('north', 'south', 'east'), 'founded',
           (1850, 2010), 'players', 'player', 'player_id', 'position', ('keeper', 'defender', 'forward'), 'salary',
           (1000, 9000)),
    Domain('music', 'artists', 'artist', 'artist_id', 'name', 'label', ('Arc', 'Bolt', 'Crest', 'Dune'),
           'debut_year', (1960, 2020), 'albums', 'album', 'album_id', 'genre', ('jazz', 'folk', 'rock', 'soul'),
           'sales', (100, 50000)),
    Domain('farm', 'farms', 'farm', 'farm_id', 'name', 'region', ('coast', 'valley', 'hills'), 'area', (3, 400),
           'animals', 'animal', 'animal_id', 'species', ('goat', 'cow', 'sheep', 'hen'), 'weight', (1, 900)),
    # Appended later for more held-out (template, domain) pairs; worlds of n_domains <= 5 are unchanged.
    Domain('garage', 'owners', 'owner', 'owner_id', 'name', 'town', ('Bern', 'Riga', 'Oulu'), 'age', (18, 90),
           'cars', 'car', 'car_id', 'brand', ('Fiat', 'Audi', 'Kia'), 'mileage', (1000, 200000)),
    Domain('hotel', 'hotels', 'hotel', 'hotel_id', 'name', 'district', ('old', 'new', 'port'), 'floors', (1, 60),
           'rooms', 'room', 'room_id', 'type', ('single', 'double', 'suite'), 'price', (40, 900)),
    Domain('college', 'teachers', 'teacher', 'teacher_id', 'name', 'subject', ('math', 'art', 'law', 'chemistry'),
           'salary', (2000, 9000), 'courses', 'course', 'course_id', 'level', ('basic', 'advanced', 'expert'),
           'hours', (10, 300)),
    Domain('airline', 'pilots', 'pilot', 'pilot_id', 'name', 'base', ('Cork', 'Lima', 'Pune'), 'rank_points',
           (100, 999), 'flights', 'flight', 'flight_id', 'aircraft', ('jet', 'prop', 'glider'), 'distance',
           (50, 12000)),
)
# One word each, so that a name is one token of the smoke's word tokenizer, copied from the question in one step.
NAMES = ('Ada', 'Bo', 'Cleo', 'Dev', 'Eli', 'Fay', 'Gil', 'Hana', 'Ivo', 'Juno', 'Kai', 'Lea', 'Milo', 'Nia', 'Omar',
         'Pia', 'Quin', 'Rosa', 'Sol', 'Tess', 'Uma', 'Vic', 'Wren', 'Yara')


@dataclasses.dataclass(frozen=True)
class SmokeWorld:
  """A written smoke world: its root folder, the domains used (by db_id) and the examples of each split
  (Text2SqlExample with difficulty = the template's level)."""
  root: str
  domains: dict[str, Domain]
  train: list[data.Text2SqlExample]
  dev: list[data.Text2SqlExample]
  strong: list[data.Text2SqlExample] = dataclasses.field(default_factory=list)  # the SFT data, aligned with train
  templates: dict[tuple[str, str], str] = dataclasses.field(default_factory=dict)  # (db_id, gold SQL) -> template
  blind_spots: dict[str, str] = dataclasses.field(default_factory=dict)  # template -> the strong data's fault kind

  def db_path(self, db_id: str) -> str:
    return data.database_path(os.path.join(self.root, 'database'), db_id)


def _q(value: str) -> str:
  return "'" + value.replace("'", "''") + "'"


def _rows(d: Domain, rng: random.Random, n_parents: int) -> tuple[list[tuple], list[tuple]]:
  """Parent rows (unique labels and quantities) and child rows (unique measures); two parents have no children and
  one has strictly the most."""
  if n_parents > len(NAMES):
    raise ValueError(f'n_parents must be at most {len(NAMES)} (the names), got {n_parents}')
  labels = rng.sample(NAMES, n_parents)
  quantities = rng.sample(range(*d.quantity_range), n_parents)
  parents = [(i + 1, labels[i], d.categories[i % len(d.categories)] if i < len(d.categories)
              else rng.choice(d.categories), quantities[i]) for i in range(n_parents)]
  counts = [rng.randint(1, 4) for _ in range(n_parents)]
  order = rng.sample(range(n_parents), n_parents)
  counts[order[0]] = counts[order[1]] = 0
  counts[order[2]] = max(counts) + 1
  owners = [p for p in range(n_parents) for _ in range(counts[p])]
  rng.shuffle(owners)
  measures = rng.sample(range(*d.measure_range), len(owners))
  children = [(k + 1, owners[k] + 1, d.kinds[k % len(d.kinds)] if k < len(d.kinds) else rng.choice(d.kinds),
               measures[k]) for k in range(len(owners))]
  return parents, children


def _schema(d: Domain) -> list[str]:
  return [f'CREATE TABLE {d.parent} ({d.pk} INTEGER PRIMARY KEY, {d.label} TEXT, {d.category} TEXT, '
          f'{d.quantity} INTEGER)',
          f'CREATE TABLE {d.child} ({d.child_pk} INTEGER PRIMARY KEY, {d.pk} INTEGER REFERENCES {d.parent}({d.pk}), '
          f'{d.kind} TEXT, {d.measure} INTEGER)']


def _inserts(d: Domain, parents: list[tuple], children: list[tuple]) -> list[str]:
  return ([f'INSERT INTO {d.parent} VALUES ({p[0]}, {_q(p[1])}, {_q(p[2])}, {p[3]})' for p in parents]
          + [f'INSERT INTO {d.child} VALUES ({c[0]}, {c[1]}, {_q(c[2])}, {c[3]})' for c in children])


def _grid(lo: int, hi: int, n: int = 9) -> list[int]:
  """Up to n round thresholds inside (lo, hi): the multiples of a step of 1, 2 or 5 times a power of ten."""
  raw = (hi - lo) / (n + 1)
  step = min(m * 10 ** e for e in range(6) for m in (1, 2, 5) if m * 10 ** e >= raw)
  values = list(range((lo // step + 1) * step, hi, step))
  trim = (len(values) - n) // 2 if len(values) > n else 0
  return values[trim:trim + n]


def _questions(d: Domain, parents: list[tuple], children: list[tuple], rng: random.Random,
               per_template: int, with_values: bool = True) -> list[tuple[str, str, str, str]]:
  """(template, level, question, gold SQL) from every template; slot values come from the rows. String values are
  quoted in the question as in the SQL ('Lyon'), so the SQL copies them token for token."""
  P, C, pk, J = d.parent, d.child, d.pk, f'{d.parent} AS T1 JOIN {d.child} AS T2 ON T1.{d.pk} = T2.{d.pk}'
  pn, cn = d.parent_noun, d.child_noun
  cats = sorted({p[2] for p in parents})
  kinds = sorted({c[2] for c in children})
  names = [p[1] for p in parents]
  with_children = sorted({c[1] for c in children})
  measures = _grid(*d.measure_range)  # thresholds: round numbers, each one word of the tokenizer
  quantities = _grid(*d.quantity_range)

  def some(values, k=per_template):
    return rng.sample(list(values), min(k, len(values)))

  out = []
  for v in some(cats):
    out.append(('filter_category', 'easy', f'List the {d.label}s of all {pn}s whose {d.category} is {_q(v)}.',
                f'SELECT {d.label} FROM {P} WHERE {d.category} = {_q(v)}'))
  for v in some(measures):
    out.append(('count_above', 'easy', f'How many {cn}s have a {d.measure} above {v}?',
                f'SELECT COUNT(*) FROM {C} WHERE {d.measure} > {v}'))
  for v in some(names):
    out.append(('category_of_name', 'easy', f'What is the {d.category} of the {pn} named {_q(v)}?',
                f'SELECT {d.category} FROM {P} WHERE {d.label} = {_q(v)}'))
  for v in some(quantities):
    out.append(('quantity_below', 'easy', f'Show the {d.label}s of {pn}s with {d.quantity} below {v}.',
                f'SELECT {d.label} FROM {P} WHERE {d.quantity} < {v}'))
  out.append(('count_kinds', 'easy', f'How many different {d.kind}s do the {cn}s have?',
              f'SELECT COUNT(DISTINCT {d.kind}) FROM {C}'))
  out.append(('max_measure', 'easy', f'What is the largest {d.measure} of any {cn}?',
              f'SELECT MAX({d.measure}) FROM {C}'))
  for v in some(kinds):
    out.append(('with_kind', 'medium', f'List the {d.label}s of {pn}s with at least one {cn} whose {d.kind} is '
                f'{_q(v)}.', f'SELECT DISTINCT T1.{d.label} FROM {J} WHERE T2.{d.kind} = {_q(v)}'))
    out.append(('average_of_kind', 'medium', f'What is the average {d.measure} of {cn}s whose {d.kind} is {_q(v)}?',
                f'SELECT AVG({d.measure}) FROM {C} WHERE {d.kind} = {_q(v)}'))
  out.append(('count_per_category', 'medium', f'How many {cn}s are there for each {pn} {d.category}?',
              f'SELECT T1.{d.category}, COUNT(*) FROM {J} GROUP BY T1.{d.category}'))
  for k in some(range(2, 5)):
    out.append(('top_k', 'medium', f'List the {d.label}s of the {k} {pn}s with the highest {d.quantity}.',
                f'SELECT {d.label} FROM {P} ORDER BY {d.quantity} DESC LIMIT {k}'))
  for v in some(measures):
    out.append(('count_parents_above', 'medium', f'How many different {pn}s have a {cn} with {d.measure} above {v}?',
                f'SELECT COUNT(DISTINCT {pk}) FROM {C} WHERE {d.measure} > {v}'))
  for v in some([p[1] for p in parents if p[0] in with_children]):
    out.append(('measures_of_name', 'medium', f'List the {d.measure}s of the {cn}s of {_q(v)}, from smallest to '
                'largest.', f'SELECT T2.{d.measure} FROM {J} WHERE T1.{d.label} = {_q(v)} ORDER BY T2.{d.measure} ASC'))
  out.append(('count_children', 'easy', f'How many {cn}s are there?', f'SELECT COUNT(*) FROM {C}'))
  out.append(('count_parents', 'easy', f'How many {pn}s are there?', f'SELECT COUNT(*) FROM {P}'))
  out.append(('min_measure', 'easy', f'What is the smallest {d.measure} of any {cn}?',
              f'SELECT MIN({d.measure}) FROM {C}'))
  out.append(('average_measure', 'easy', f'What is the average {d.measure} of all {cn}s?',
              f'SELECT AVG({d.measure}) FROM {C}'))
  out.append(('total_measure', 'easy', f'What is the total {d.measure} of all {cn}s?',
              f'SELECT SUM({d.measure}) FROM {C}'))
  out.append(('max_quantity', 'easy', f'What is the largest {d.quantity} of any {pn}?',
              f'SELECT MAX({d.quantity}) FROM {P}'))
  out.append(('count_categories', 'easy', f'How many different {d.category}s do the {pn}s have?',
              f'SELECT COUNT(DISTINCT {d.category}) FROM {P}'))
  out.append(('highest_quantity', 'medium', f'Which {pn} has the highest {d.quantity}?',
              f'SELECT {d.label} FROM {P} ORDER BY {d.quantity} DESC LIMIT 1'))
  out.append(('lowest_quantity', 'medium', f'Which {pn} has the lowest {d.quantity}?',
              f'SELECT {d.label} FROM {P} ORDER BY {d.quantity} ASC LIMIT 1'))
  out.append(('by_quantity', 'medium', f'List the {d.label}s of all {pn}s from the smallest {d.quantity} to the '
              'largest.', f'SELECT {d.label} FROM {P} ORDER BY {d.quantity} ASC'))
  out.append(('count_per_kind', 'medium', f'How many {cn}s are there of each {d.kind}?',
              f'SELECT {d.kind}, COUNT(*) FROM {C} GROUP BY {d.kind}'))
  out.append(('total_per_each', 'medium', f'For each {pn} with {cn}s, give its {d.label} and the total {d.measure} '
              f'of its {cn}s.', f'SELECT T1.{d.label}, SUM(T2.{d.measure}) FROM {J} GROUP BY T1.{pk}'))
  out.append(('with_children', 'medium', f'List the {d.label}s of {pn}s with at least one {cn}.',
              f'SELECT DISTINCT T1.{d.label} FROM {J}'))
  out.append(('without_children', 'hard', f'Which {pn}s have no {cn}s?',
              f'SELECT {d.label} FROM {P} WHERE {pk} NOT IN (SELECT {pk} FROM {C})'))
  out.append(('most_children', 'hard', f'Which {pn} has the most {cn}s?',
              f'SELECT T1.{d.label} FROM {J} GROUP BY T1.{pk} ORDER BY COUNT(*) DESC LIMIT 1'))
  out.append(('above_average', 'hard', f'List the {d.label}s of {pn}s whose {d.quantity} is above the average.',
              f'SELECT {d.label} FROM {P} WHERE {d.quantity} > (SELECT AVG({d.quantity}) FROM {P})'))
  for n in some(range(1, 4)):
    out.append(('more_than_n', 'hard', f'Which {pn}s have more than {n} {cn}s?',
                f'SELECT T1.{d.label} FROM {J} GROUP BY T1.{pk} HAVING COUNT(*) > {n}'))
  for v in some(cats):
    out.append(('total_per_parent', 'hard', f'For each {pn} whose {d.category} is {_q(v)}, give the total '
                f'{d.measure} of its {cn}s, largest first.',
                f'SELECT T1.{d.label}, SUM(T2.{d.measure}) FROM {J} WHERE T1.{d.category} = {_q(v)} '
                f'GROUP BY T1.{pk} ORDER BY SUM(T2.{d.measure}) DESC, T1.{d.label}'))
  return out if with_values else [item for item in out if item[0] not in VALUE_TEMPLATES]


def _tables_entry(d: Domain) -> dict:
  """Spider's tables.json record of a domain's database."""
  tables = [d.parent, d.child]
  columns = [(-1, '*')] + [(t, c) for t, table in enumerate(tables) for c in d.columns[table]]
  integer = {d.pk, d.child_pk, d.quantity, d.measure}
  index = {(tables[t], c): i for i, (t, c) in enumerate(columns) if t >= 0}
  return {
      'db_id': d.name, 'table_names_original': tables, 'table_names': [t.replace('_', ' ') for t in tables],
      'column_names_original': [list(c) for c in columns],
      'column_names': [[t, c.replace('_', ' ')] for t, c in columns],
      'column_types': ['text'] + ['number' if c in integer else 'text' for _, c in columns[1:]],
      'primary_keys': [index[(d.parent, d.pk)], index[(d.child, d.child_pk)]],
      'foreign_keys': [[index[(d.child, d.pk)], index[(d.parent, d.pk)]]],
  }


def write_smoke_world(root: str, seed: int = 0, *, n_domains: int = 4, n_parents: int = 10, per_template: int = 2,
                      dev_fraction: float = 0.25, neighbours: int = 0, strong_error_templates: float = 0.0,
                      strong_error_rate: float = 0.75, with_values: bool = True) -> SmokeWorld:
  """Writes the smoke world into `root` (see the module docstring) and returns it; the same seed writes the same
  databases and questions. per_template: instances (slot values) per template and database; dev_fraction: the
  share of each database's questions held out for dev.json; neighbours: extra databases <db>_<k>.sqlite beside each
  one, the same schema with other rows, for test-suite accuracy. A template instance whose gold returns no rows
  on the main database (a HAVING threshold above every count) is left out.

  The strong data (`SmokeWorld.strong`, also written as train_strong.json): the train questions with the SQL of a
  synthetic generator whose output is only execution-checked, as SENSE's strong data is. It has blind spots: a
  share strong_error_templates of the templates (drawn from the seed) each get one fault kind of BLIND_SPOT_KINDS,
  and each train instance of such a template carries that fault with probability strong_error_rate when the
  faulty SQL still executes and returns a result other than the gold's (otherwise it keeps the gold). The
  questions, train_spider.json and every gold file keep the true gold SQL."""
  if not 3 <= n_domains <= len(DOMAINS):
    raise ValueError(f'n_domains must lie in [3, {len(DOMAINS)}], got {n_domains}')
  if not 0.0 <= strong_error_templates <= 1.0 or not 0.0 <= strong_error_rate <= 1.0:
    raise ValueError(f'strong_error_templates and strong_error_rate must lie in [0, 1], got '
                     f'{strong_error_templates} and {strong_error_rate}')
  rng = random.Random(seed)
  strong_rng = random.Random(f'{seed}/strong')  # the blind spots leave the questions of the seed unchanged
  used = TEMPLATES if with_values else VALUE_FREE_TEMPLATES
  blind = sorted(strong_rng.sample(used, round(strong_error_templates * len(used))))
  domains = DOMAINS[:n_domains]
  train, dev, templates = [], [], {}
  for d in domains:
    parents, children = _rows(d, rng, n_parents)
    path = os.path.join(root, 'database', d.name, f'{d.name}.sqlite')
    data.write_database(path, _schema(d) + _inserts(d, parents, children))
    for k in range(1, neighbours + 1):
      other_parents, other_children = _rows(d, random.Random(f'{seed}/{d.name}/{k}'), n_parents)
      data.write_database(os.path.join(root, 'database', d.name, f'{d.name}_{k}.sqlite'), _schema(d) + _inserts(
          d, other_parents, other_children))
    conn = sqlite3.connect(f'file:{path}?mode=ro', uri=True)
    try:
      items = [item for item in _questions(d, parents, children, rng, per_template, with_values)
               if conn.execute(item[3]).fetchall()]
      items = list({item[3]: item for item in items}.values())
      rng.shuffle(items)
      n_dev = max(1, round(dev_fraction * len(items)))
      for i, (template, level, question, sql) in enumerate(items):
        example = data.Text2SqlExample(d.name, question, sql, '', level)
        templates[(d.name, sql)] = template
        if i < n_dev:
          dev.append(example)
          continue
        train.append(example)
    finally:
      conn.close()
  strong, blind_spots = _strong_data(root, domains, train, templates, blind, strong_error_rate, strong_rng)
  with open(os.path.join(root, 'tables.json'), 'w', encoding='utf-8') as f:
    json.dump([_tables_entry(d) for d in domains], f, indent=1)
  for name, split in (('train_spider.json', train), ('dev.json', dev), ('train_strong.json', strong)):
    with open(os.path.join(root, name), 'w', encoding='utf-8') as f:
      json.dump([{'db_id': e.db_id, 'question': e.question, 'query': e.sql, 'question_toks': e.question.split(),
                  'query_toks': e.sql.split(), 'difficulty': e.difficulty} for e in split], f, indent=1)
  for gold, split in (('train_gold.sql', train), ('dev_gold.sql', dev)):
    data.write_gold_file(os.path.join(root, gold), [(e.sql, e.db_id) for e in split])
  return SmokeWorld(root, {d.name: d for d in domains}, train, dev, strong, templates, blind_spots)


def _strong_data(root: str, domains: Sequence[Domain], train: list[data.Text2SqlExample],
                 templates: dict[tuple[str, str], str], blind: Sequence[str], rate: float,
                 rng: random.Random) -> tuple[list[data.Text2SqlExample], dict[str, str]]:
  """(strong data, template -> fault kind) of write_smoke_world for the blind-spot templates `blind`: of each one's
  train instances, round(rate * n) drawn at random carry its fault (when it executes and changes the result)."""
  by_name = {d.name: d for d in domains}
  kinds = {}
  for template in blind:  # its fault kind: one of those that apply to its first train instance
    first = next((e for e in train if templates[(e.db_id, e.sql)] == template), None)
    usable = [k for k in BLIND_SPOT_KINDS if first and mutate(first.sql, k, by_name[first.db_id], rng)]
    if usable:
      kinds[template] = rng.choice(usable)
  faulty = set()
  for template in kinds:
    members = [i for i, e in enumerate(train) if templates[(e.db_id, e.sql)] == template]
    faulty.update(rng.sample(members, round(rate * len(members))))
  conns = {d.name: sqlite3.connect(f'file:{os.path.join(root, "database", d.name, d.name)}.sqlite?mode=ro', uri=True)
           for d in domains}
  try:
    strong = []
    for i, e in enumerate(train):
      sql = mutate(e.sql, kinds[templates[(e.db_id, e.sql)]], by_name[e.db_id], rng) if i in faulty else None
      strong.append(e if sql is None or _same_result(conns[e.db_id], e.sql, sql) else
                    dataclasses.replace(e, sql=sql))
  finally:
    for conn in conns.values():
      conn.close()
  return strong, kinds


def _same_result(conn: sqlite3.Connection, gold: str, sql: str) -> bool:
  """Whether `sql` returns the gold's result (the test-suite comparison); an error counts as a different result
  for the caller, which then keeps the gold (the strong data's execution check drops failing SQL)."""
  try:
    rows = conn.execute(sql).fetchall()
  except sqlite3.Error:
    return True
  return synthesis.results_match(gold, conn.execute(gold).fetchall(), rows)


# ---------------------------------------------------------------------------------------------------------------
# The weak model: faults injected into the gold SQL.

_LITERAL = re.compile(r"'(?:[^']|'')*'")
_SWAP = {'>': '<', '<': '>', '>=': '<=', '<=': '>=', '=': '!=', '!=': '='}
_FLIP = {'>': '<', '<': '>', '>=': '<=', '<=': '>=', '=': '='}
_AGGREGATES = {'MAX': 'MIN', 'MIN': 'MAX', 'AVG': 'SUM', 'SUM': 'AVG'}


def _code_matches(sql: str, pattern: str) -> list[re.Match]:
  """Matches of `pattern` in `sql` outside string literals."""
  literals = [m.span() for m in _LITERAL.finditer(sql)]
  return [m for m in re.finditer(pattern, sql) if not any(a <= m.start() < b for a, b in literals)]


def _replace(sql: str, m: re.Match, text: str, group: int = 0) -> str:
  return sql[:m.start(group)] + text + sql[m.end(group):]


def mutate(sql: str, kind: str, domain: Domain, rng: random.Random) -> str | None:
  """`sql` with one fault of `kind` (one of MUTATION_KINDS), or None where the kind does not apply to it."""
  if kind == 'wrong_column':
    owner = {c: t for t, cols in domain.columns.items() for c in cols if c != domain.pk}
    found = _code_matches(sql, r'\b(' + '|'.join(owner) + r')\b')
    if not found:
      return None
    m = rng.choice(found)
    others = [c for c in domain.columns[owner[m.group(1)]] if c not in (m.group(1), domain.pk)]
    return _replace(sql, m, rng.choice(others))
  if kind == 'missing_join_condition':
    found = _code_matches(sql, r' ON \S+ = \S+')
    return _replace(sql, found[0], '') if found else None
  if kind == 'count_distinct':
    found = _code_matches(sql, r'COUNT\((DISTINCT )?([^)]*)\)')
    if not found:
      return None
    m = rng.choice(found)
    if m.group(1):
      return _replace(sql, m, f'COUNT({m.group(2)})')
    column = m.group(2) if m.group(2) != '*' else ('T1.' if 'T1.' in sql else '') + domain.pk
    return _replace(sql, m, f'COUNT(DISTINCT {column})')
  if kind == 'dropped_order_by':
    found = _code_matches(sql, r' ORDER BY .*?(?= LIMIT|$)')
    return _replace(sql, found[0], '') if found else None
  if kind == 'swapped_operator':
    found = [m for m in _code_matches(sql, r' (>=|<=|!=|>|<|=) ') if not re.search(r' ON \S+$', sql[:m.start()])]
    if not found:
      return None
    m = rng.choice(found)
    return _replace(sql, m, _SWAP[m.group(1)], 1)
  if kind == 'syntax_error':
    return rng.choice([sql.replace('SELECT', 'SELEC', 1), sql + ')', sql.replace(' FROM ', ' FROM FROM ', 1)])
  if kind == 'wrong_aggregate':
    found = _code_matches(sql, r'\b(MAX|MIN|AVG|SUM)\(')
    if not found:
      return None
    m = rng.choice(found)
    return _replace(sql, m, _AGGREGATES[m.group(1)], 1)
  if kind == 'limit_off_by_one':
    found = _code_matches(sql, r'LIMIT (\d+)')
    return _replace(sql, found[0], str(int(found[0].group(1)) + 1), 1) if found else None
  if kind == 'equivalent_rewrite':
    return _equivalent(sql, rng)
  raise ValueError(f'unknown mutation kind {kind!r}; expected one of {MUTATION_KINDS}')


def _equivalent(sql: str, rng: random.Random) -> str:
  """A rewrite with the same result: the join condition's sides swapped, a comparison with a number written the
  other way round (x > 3 -> 3 < x), or the keywords in lower case."""
  options = []
  for m in _code_matches(sql, r' ON (\S+) = (\S+)'):
    options.append(_replace(sql, m, f' ON {m.group(2)} = {m.group(1)}'))
  for m in _code_matches(sql, r'([\w.]+) (>=|<=|>|<|=) (\d+)\b'):
    options.append(_replace(sql, m, f'{m.group(3)} {_FLIP[m.group(2)]} {m.group(1)}'))
  if options:
    return rng.choice(options)
  keywords = r'\b(SELECT|FROM|WHERE|GROUP BY|ORDER BY|LIMIT|COUNT|DISTINCT|AND|NOT IN|DESC|ASC)\b'
  for m in reversed(_code_matches(sql, keywords)):
    sql = _replace(sql, m, m.group(1).lower())
  return sql


def weak_candidates(example: data.Text2SqlExample, domain: Domain, n: int, rng: random.Random,
                    p_gold: float = 0.3) -> list[tuple[str, str]]:
  """n (kind, sql) samples of the weak model for one question: the gold itself ('gold') with probability p_gold,
  else a mutation of a kind drawn uniformly among those that apply."""
  out = []
  for _ in range(n):
    if rng.random() < p_gold:
      out.append(('gold', example.sql))
      continue
    kinds = list(MUTATION_KINDS)
    rng.shuffle(kinds)
    out.append(next((k, s) for k in kinds if (s := mutate(example.sql, k, domain, rng)) is not None))
  return out


@dataclasses.dataclass(frozen=True)
class WeakSample:
  """One labelled weak-model sample: its question (index into the examples), kind, SQL and verdict."""
  question: int
  kind: str
  sql: str
  chosen: bool
  error_kind: str


def label_weak_samples(world: SmokeWorld, examples: Sequence[data.Text2SqlExample], execute: text2sql.Execute, *,
                       n_samples: int = 4, seed: int = 0, p_gold: float = 0.3) -> list[WeakSample]:
  """n_samples weak-model samples per example, executed with `execute` (e.g. `SqlPool.map`) and labelled by
  `synthesis.label_candidates` against the gold result. Deterministic from the seed."""
  rng = random.Random(seed)
  drawn = [weak_candidates(e, world.domains[e.db_id], n_samples, rng, p_gold) for e in examples]
  jobs = [(world.db_path(e.db_id), e.sql, [sql for _, sql in samples]) for e, samples in zip(examples, drawn)]
  out = []
  for q, (samples, labels) in enumerate(zip(drawn, synthesis.label_candidates(jobs, execute))):
    if not labels.gold_ok:
      raise RuntimeError(f'smoke world: the gold SQL of {examples[q].db_id} question {q} failed: {labels.gold_error}')
    out += [WeakSample(q, kind, c.sql, c.chosen, c.error_kind) for (kind, _), c in zip(samples, labels.candidates)]
  return out


def mutation_summary(samples: Sequence[WeakSample]) -> dict[str, dict[str, int]]:
  """Per kind: how many samples, how many came out chosen (for a mutation: a fault that happens to give the gold's
  result) and how many failed to execute."""
  total, chosen, failed = Counter(), Counter(), Counter()
  for s in samples:
    total[s.kind] += 1
    chosen[s.kind] += s.chosen
    failed[s.kind] += bool(s.error_kind)
  return {k: {'samples': total[k], 'chosen': chosen[k], 'errors': failed[k]} for k in sorted(total)}


def weak_sampler(world: SmokeWorld, seed: int = 0, p_gold: float = 0.3) -> synthesis.WeakSampler:
  """The mutator as a `synthesis.WeakSampler` (examples, prompts, n) -> n SQLs per example, for `weak_sample`;
  it reads the gold SQL, which a real weak model never sees."""
  rng = random.Random(seed)

  def sample(examples: Sequence[data.Text2SqlExample], prompts: Sequence[str], n: int) -> list[list[str]]:
    del prompts
    return [[sql for _, sql in weak_candidates(e, world.domains[e.db_id], n, rng, p_gold)] for e in examples]
  return sample
