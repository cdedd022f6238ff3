"""The SENSE smoke world: generated Spider-layout databases, templated gold SQL and the mutating weak model."""
import random
import sqlite3
from collections import Counter

import pytest

from experiments.sense import data, smoke, synthesis
from mmjax.evals import text2sql
from mmjax.evals.sql import SqlPool


@pytest.fixture(scope='module')
def world(tmp_path_factory):
  return smoke.write_smoke_world(str(tmp_path_factory.mktemp('smoke')), seed=3, neighbours=1)


@pytest.fixture(scope='module')
def pool():
  with SqlPool(2, timeout_s=5.0, progress=False) as p:
    yield p


@pytest.fixture(scope='module')
def samples(world, pool):
  return smoke.label_weak_samples(world, world.train, pool.map, n_samples=4, seed=1)


def test_layout_is_spider_and_every_gold_returns_rows(world, pool):
  root = world.root
  assert set(data.read_tables(f'{root}/tables.json')) == set(world.domains) and 3 <= len(world.domains) <= 5
  train = data.read_spider_examples(f'{root}/train_spider.json')
  dev = data.read_spider_examples(f'{root}/dev.json')
  assert [(e.db_id, e.question, e.sql) for e in train] == [(e.db_id, e.question, e.sql) for e in world.train]
  assert data.read_gold_file(f'{root}/dev_gold.sql') == [(e.sql, e.db_id) for e in dev]
  assert not {e.sql for e in train} & {e.sql for e in dev}
  levels = Counter(e.difficulty for e in world.train + world.dev)
  assert set(levels) == set(smoke.LEVELS) and min(levels.values()) >= 10
  results = pool.map([(world.db_path(e.db_id), e.sql) for e in train + dev])
  failed = [(e.sql, r.error) for e, r in zip(train + dev, results) if not r.ok or not r.rows]
  assert not failed
  neighbours = [text2sql.test_suite_databases(world.db_path(e.db_id))[1] for e in dev]
  assert all(n.endswith('_1.sqlite') for n in neighbours)
  assert all(r.ok for r in pool.map([(n, e.sql) for n, e in zip(neighbours, dev)]))


def test_same_seed_same_world(world, tmp_path):
  again = smoke.write_smoke_world(str(tmp_path / 'a'), seed=3)
  other = smoke.write_smoke_world(str(tmp_path / 'b'), seed=4)
  assert again.train == world.train and again.dev == world.dev
  assert other.train != world.train


def test_every_mutation_kind_appears_and_applies(world, samples):
  kinds = Counter(s.kind for s in samples)
  assert set(kinds) == set(smoke.MUTATION_KINDS) | {'gold'}
  rng = random.Random(0)
  for s in samples:
    if s.kind != 'gold':
      assert s.sql != world.train[s.question].sql
  for kind in smoke.MUTATION_KINDS:  # each kind changes the SQL of some gold it applies to
    changed = [smoke.mutate(e.sql, kind, world.domains[e.db_id], rng) for e in world.train]
    assert any(c is not None and c != e.sql for c, e in zip(changed, world.train)), kind


def _run(path, sql):
  conn = sqlite3.connect(f'file:{path}?mode=ro', uri=True)
  try:
    return conn.execute(sql).fetchall()
  except sqlite3.Error:
    return None
  finally:
    conn.close()


def test_labels_agree_with_executing_both_queries(world, samples):
  for s in samples:
    example = world.train[s.question]
    gold, rows = _run(world.db_path(example.db_id), example.sql), _run(world.db_path(example.db_id), s.sql)
    if rows is None:
      same = False
    elif 'ORDER BY' in example.sql:
      same = rows == gold
    else:
      same = Counter(rows) == Counter(gold)
    assert s.chosen == same, (s.kind, s.sql, example.sql)
    assert (rows is None) == bool(s.error_kind)
  summary = smoke.mutation_summary(samples)
  assert summary['gold']['chosen'] == summary['gold']['samples'] > 0
  assert summary['equivalent_rewrite']['chosen'] == summary['equivalent_rewrite']['samples'] > 0
  syntax = summary['syntax_error']
  assert syntax['errors'] == syntax['samples'] and not syntax['chosen']
  faults = [k for k in smoke.MUTATION_KINDS if k != 'equivalent_rewrite']
  assert sum(summary[k]['samples'] - summary[k]['chosen'] for k in faults) > 0.8 * sum(summary[k]['samples']
                                                                                      for k in faults)


def test_weak_sampler_feeds_grouped_pairs(world, pool):
  examples = world.train[:12]
  pairs, stats = synthesis.weak_sample(examples, f'{world.root}/database', smoke.weak_sampler(world, seed=2),
                                       execute=pool.map, n_samples=4)
  assert stats['questions'] == 12 and stats['samples'] == 48 and stats['pairs'] == len(pairs) > 0
  assert len({p['question'] for p in pairs}) == len(pairs)  # grouped, at most one pair per question
  gold = {e.question: e.sql for e in examples}
  for p in pairs:
    path = world.db_path(p['db_id'])
    assert p['prompt'] == data.render_prompt(data.schema_prompt(path), p['question'])
    want = _run(path, gold[p['question']])
    assert Counter(_run(path, p['chosen'])) == Counter(want) and _run(path, p['rejected']) != want


def test_seed_examples_from_the_world_make_a_strong_prompt(world):
  seeds = synthesis.seed_examples(world.train[:2], f'{world.root}/database')
  prompt = synthesis.strong_prompt(seeds, 'medium')
  assert all(f'Question: {e.question}\nAnswer: {e.sql}' in prompt for e in world.train[:2])
  assert all(s.schema in prompt and s.schema.count('CREATE TABLE') == 2 for s in seeds)


def test_strong_data_blind_spots_are_executable_faults(tmp_path):
  """The strong (SFT) data: only blind-spot templates differ from the gold, each by its one fault kind, at the
  stated rate; every faulty SQL executes and returns another result than the gold's; the gold files keep the true
  SQL; the value-free world has no literal values."""
  rate = 0.75
  world = smoke.write_smoke_world(str(tmp_path / 'w'), seed=0, n_domains=5, n_parents=14, dev_fraction=0.3,
                                  with_values=False, strong_error_templates=0.35, strong_error_rate=rate)
  assert len(world.strong) == len(world.train) and world.blind_spots
  assert set(world.blind_spots) <= set(smoke.VALUE_FREE_TEMPLATES)
  assert set(world.blind_spots.values()) <= set(smoke.BLIND_SPOT_KINDS)
  assert {world.templates[(e.db_id, e.sql)] for e in world.train + world.dev} <= set(smoke.VALUE_FREE_TEMPLATES)
  assert not any("'" in e.sql for e in world.train + world.dev)
  faulty = Counter()
  for gold, strong in zip(world.train, world.strong):
    assert (gold.db_id, gold.question) == (strong.db_id, strong.question)
    if gold.sql == strong.sql:
      continue
    template = world.templates[(gold.db_id, gold.sql)]
    assert template in world.blind_spots, (gold.sql, strong.sql)
    faulty[template] += 1
    path = world.db_path(gold.db_id)
    got, want = _run(path, strong.sql), _run(path, gold.sql)
    assert got is not None and not synthesis.results_match(gold.sql, want, got), (gold.sql, strong.sql)
  members = Counter(world.templates[(e.db_id, e.sql)] for e in world.train)
  for template in world.blind_spots:  # at most round(rate * n): a fault that returns the gold's result is not used
    assert faulty[template] <= round(rate * members[template])
  assert sum(faulty.values()) >= 0.6 * sum(round(rate * members[t]) for t in world.blind_spots)
  assert data.read_gold_file(f'{world.root}/train_gold.sql') == [(e.sql, e.db_id) for e in world.train]
  strong_file = data.read_spider_examples(f'{world.root}/train_strong.json')
  assert [e.sql for e in strong_file] == [e.sql for e in world.strong]
  again = smoke.write_smoke_world(str(tmp_path / 'again'), seed=0, n_domains=5, n_parents=14, dev_fraction=0.3,
                                  with_values=False, strong_error_templates=0.35, strong_error_rate=rate)
  assert again.strong == world.strong and again.blind_spots == world.blind_spots
