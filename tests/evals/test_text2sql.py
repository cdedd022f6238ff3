"""Spider test-suite and BIRD EX verdicts on executed queries (edge cases where the two disagree included), the
official preprocessing, and Spider hardness on gold queries whose official level is known."""
import sqlite3

import pytest

from mmjax.evals import text2sql
from mmjax.evals.sql import ExecResult, SqlPool

RECURSIVE = 'WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT count(*) FROM r'


def _db(path, rows):
  conn = sqlite3.connect(path)
  conn.execute('CREATE TABLE t (a INTEGER, b TEXT, c REAL)')
  conn.executemany('INSERT INTO t VALUES (?, ?, ?)', rows)
  conn.commit()
  conn.close()
  return str(path)


@pytest.fixture(scope='module')
def dbs(tmp_path_factory):
  """A database and, in its folder, a neighbour where b's text differs for a = 3 (the test suite sees it)."""
  folder = tmp_path_factory.mktemp('suite')
  rows = [(1, 'x', 1.5), (2, 'y', None), (3, 'y', 2.0), (4, 'z', 2.0)]
  main = _db(folder / 'd.sqlite', rows)
  _db(folder / 'd_1.sqlite', [(1, 'x', 1.5), (2, 'y', None), (3, 'w', 2.0), (4, 'z', 2.0)])
  return main


@pytest.fixture(scope='module')
def execute():
  with SqlPool(2, timeout_s=1.0, progress=False) as pool:
    yield pool.map


# (case, gold, prediction, Spider test-suite verdict, BIRD verdict)
CASES = [
    ('order by in gold: order counts for Spider only', 'SELECT a FROM t ORDER BY a',
     'SELECT a FROM t ORDER BY a DESC', False, True),
    ('no order by in gold: any order', 'SELECT a FROM t', 'SELECT a FROM t ORDER BY a DESC', True, True),
    ('duplicates: bag (Spider) vs set (BIRD)', 'SELECT b FROM t WHERE a < 4', 'SELECT b FROM t WHERE a < 4 GROUP BY b',
     False, True),
    ('DISTINCT removed by Spider by default', 'SELECT b FROM t', 'SELECT DISTINCT b FROM t', True, True),
    ('column order', 'SELECT a, b FROM t', 'SELECT b, a FROM t', True, True),
    ('values sorted within rows: a BIRD false positive',
     'SELECT a, 5 - a FROM t WHERE a IN (1, 4)', 'SELECT a, 5 - a FROM t WHERE a IN (1, 1)', False, True),
    ('both empty, different columns', 'SELECT a FROM t WHERE a > 9', 'SELECT b, c FROM t WHERE 0', True, True),
    ('empty vs not empty', 'SELECT a FROM t WHERE a > 9', 'SELECT a FROM t WHERE a > 3', False, False),
    ('NULL equals NULL', 'SELECT c FROM t WHERE a = 2', 'SELECT NULL', True, True),
    ('NULL row vs no row', 'SELECT max(a) FROM t WHERE a > 9', 'SELECT a FROM t WHERE a > 9', False, False),
    ('NULL vs 0', 'SELECT c FROM t WHERE a = 2', 'SELECT 0', False, False),
    ('1.0 vs 1', 'SELECT c FROM t WHERE a = 3', 'SELECT 2', True, True),
    ("text '2' vs number 2", 'SELECT 2', "SELECT '2'", False, False),
    ('right on the database, wrong on its neighbour', "SELECT a FROM t WHERE b = 'y'",
     'SELECT a FROM t WHERE a IN (2, 3)', False, True),
]


@pytest.mark.parametrize('case,gold,pred,spider,bird', CASES, ids=[c[0] for c in CASES])
def test_edge_case_verdicts(dbs, execute, case, gold, pred, spider, bird):
  [spider_verdict] = text2sql.score_spider([(gold, pred, dbs)], execute)
  [bird_verdict] = text2sql.score_bird([(gold, pred, dbs)], execute)
  assert (spider_verdict.correct, bird_verdict.correct) == (spider, bird), case
  assert spider_verdict.reason == ('match' if spider else 'mismatch')
  assert bird_verdict.reason == ('match' if bird else 'mismatch')


def test_test_suite_off_uses_the_database_alone(dbs, execute):
  gold, pred = "SELECT a FROM t WHERE b = 'y'", 'SELECT a FROM t WHERE a IN (2, 3)'
  assert text2sql.score_spider([(gold, pred, dbs)], execute, test_suite=False)[0].correct
  assert not text2sql.score_spider([('SELECT b FROM t', 'SELECT DISTINCT b FROM t', dbs)], execute,
                                   keep_distinct=True)[0].correct


@pytest.mark.parametrize('gold,pred,reason', [
    ('SELECT nope FROM t', 'SELECT nope FROM t', 'gold_error'),  # both fail: never a match
    ('SELECT a FROM t', 'SELECT nope FROM t', 'pred_error'),
    ('SELECT a FROM t', 'DROP TABLE t', 'pred_error'),
    ('SELECT a FROM t', RECURSIVE, 'pred_timeout'),
    (RECURSIVE, 'SELECT a FROM t', 'gold_timeout'),
])
def test_failures_score_zero_and_are_classified(dbs, execute, gold, pred, reason):
  for verdict in (text2sql.score_spider([(gold, pred, dbs)], execute)[0],
                  text2sql.score_bird([(gold, pred, dbs)], execute)[0]):
    assert (verdict.correct, verdict.reason) == (False, reason) and verdict.error


def test_each_distinct_query_runs_once(dbs):
  calls = []

  def execute(jobs):
    calls.append(list(jobs))
    return [ExecResult(True, [(1,)]) for _ in jobs]
  verdicts = text2sql.score_spider([('SELECT 1', 'SELECT 1', dbs), ('SELECT 1', 'SELECT 2', dbs)], execute)
  assert [v.correct for v in verdicts] == [True, True]
  assert sorted(calls[0]) == sorted({(db, q) for db in text2sql.test_suite_databases(dbs)
                                     for q in ('SELECT 1', 'SELECT 2')})


def test_rows_match_permutes_many_columns():
  gold = [(i, str(i), i * 0.5, i % 2, None) for i in range(30)]
  perm = [(r[3], r[0], r[4], r[2], r[1]) for r in gold]
  assert text2sql.spider_rows_match(gold, perm, order_matters=False)
  assert text2sql.spider_rows_match(gold, perm, order_matters=True)
  assert not text2sql.spider_rows_match(gold, perm[::-1], order_matters=True)
  assert text2sql.spider_rows_match(gold, perm[::-1], order_matters=False)
  assert not text2sql.spider_rows_match(gold, perm[:-1] + [(0, 29, None, 14.5, '29')], order_matters=False)
  assert not text2sql.spider_rows_match([(1, 2)], [(1, 2, 3)], order_matters=False)
  wide = [tuple(100 * c + i for c in range(12)) for i in range(50)]  # 12! maps: only the constrained ones are tried
  assert text2sql.spider_rows_match(wide, [r[::-1] for r in wide], order_matters=True)
  assert text2sql.bird_rows_match([(1, 'a', None)], [(None, 1.0, 'a'), (None, 'a', 1)])


def test_preprocessing_as_the_official_script():
  assert text2sql.spider_preprocess("SELECT DISTINCT a, count(DISTINCT b) FROM t WHERE b = 'distinct'") == \
      "SELECT  a, count( b) FROM t WHERE b = 'distinct'"
  assert text2sql.spider_preprocess('SELECT a FROM t WHERE a > = 2 AND a ! = 3') == \
      'SELECT a FROM t WHERE a >= 2 AND a != 3'
  assert text2sql.spider_preprocess('SELECT YEAR(CURDATE()) - a FROM t') == 'SELECT 2020- a FROM t'
  assert text2sql.spider_preprocess('SELECT DISTINCT a FROM t', keep_distinct=True) == 'SELECT DISTINCT a FROM t'
  assert text2sql.order_matters('select a from t order by a') and not text2sql.order_matters('SELECT a FROM t')


# Spider dev gold queries with their level from the official evaluation.py (eval_hardness over process_sql).
HARDNESS = [
    ('SELECT count(*) FROM singer', 'easy'),
    ('SELECT document_id FROM Paragraphs GROUP BY document_id HAVING count(*) BETWEEN 1 AND 2', 'easy'),
    ('SELECT name ,  country ,  age FROM singer ORDER BY age DESC', 'medium'),
    ("SELECT name ,  country FROM singer WHERE song_name LIKE '%Hey%'", 'medium'),
    ('SELECT count(*) FROM concert WHERE YEAR  =  2014 OR YEAR  =  2015', 'medium'),
    ('SELECT song_name FROM singer WHERE age  >  (SELECT avg(age) FROM singer)', 'hard'),
    ('SELECT country FROM singer WHERE age  >  40 INTERSECT SELECT country FROM singer WHERE age  <  30', 'hard'),
    ('SELECT name FROM stadium WHERE stadium_id NOT IN (SELECT stadium_id FROM concert)', 'hard'),
    ('SELECT count(*) FROM Flights AS T1 JOIN Airports AS T2 ON T1.DestAirport  =  T2.AirportCode '
     'WHERE T2.city  =  "Aberdeen" OR T2.city  =  "Abilene"', 'hard'),
    ('SELECT T1.model FROM CAR_NAMES AS T1 JOIN CARS_DATA AS T2 ON T1.MakeId  =  T2.Id '
     'WHERE T2.Weight  <  (SELECT avg(Weight) FROM CARS_DATA)', 'extra'),
    ('SELECT T2.name FROM Likes AS T1 JOIN Highschooler AS T2 ON T1.student_id  =  T2.id GROUP BY T1.student_id '
     'ORDER BY count(*) DESC LIMIT 1', 'extra'),
    # the official count takes a NOT IN condition for an aggregate: two 'aggregates' make this extra, not hard
    ('select avg(age) from student where stuid not in (select stuid from has_pet)', 'extra'),
    ('SELECT name FROM airports WHERE elevation BETWEEN -50 AND 50', 'easy'),
]


@pytest.mark.parametrize('sql,level', HARDNESS)
def test_hardness_matches_the_official_levels(sql, level):
  assert text2sql.spider_hardness(sql) == level


def test_hardness_of_an_unparsable_query_names_it():
  with pytest.raises(ValueError, match='cannot parse SQL for its hardness.*: SELECT a FROM t WHERE a ='):
    text2sql.spider_hardness('SELECT a FROM t WHERE a =')
