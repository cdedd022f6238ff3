"""SENSE (text-to-SQL, arXiv 2408.03256): score SQL predictions with the Spider test-suite metric or BIRD EX.

get_config('benchmark=spider|bird,variant=default|smoke'); the program is launch.py's --mode: score (the default).
The issue's `mode=eval` config argument is --mode score here: in mmjax the program is always --mode.

  # Spider dev, plain EX on the original databases: P holds one SQL per line, in dev_gold.sql's order
  python launch.py --config configs/sense.py:benchmark=spider --mode score --workdir runs/sense_spider_dev \
      --config.data_dir=/data/spider --config.predictions=P
  # Spider test-suite accuracy (the official metric): the test suite's folder of databases with their neighbours
  python launch.py --config configs/sense.py:benchmark=spider --mode score --workdir runs/sense_spider_ts \
      --config.data_dir=/data/spider --config.db_dir=/data/test-suite-sql-eval/database --config.predictions=P
  # BIRD dev EX by difficulty: P is the official predict_dev.json ({"0": "SQL\\t----- bird -----\\tdb_id", ...})
  python launch.py --config configs/sense.py:benchmark=bird --mode score --workdir runs/sense_bird_dev \
      --config.data_dir=/data/bird/dev --config.predictions=P
  # seconds: a generated Spider-layout tree and predictions, scored end to end
  python launch.py --config configs/sense.py:variant=smoke --mode score --workdir runs/sense_smoke
"""
import ml_collections

from mmjax.evals.config import VARIANTS
from mmjax.train.config import parse_arg

BENCHMARKS = ('spider', 'bird')
# The official evaluators' per-query timeouts (test-suite: 60 s, BIRD meta_time_out: 30 s); ours preempt.
TIMEOUT_S = {'spider': 60.0, 'bird': 30.0}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = parse_arg(arg, variant='default', benchmark='spider')
  if arg.variant not in VARIANTS:
    raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {arg.variant!r}")
  if arg.benchmark not in BENCHMARKS:
    raise ValueError(f"benchmark must be one of {', '.join(BENCHMARKS)}, got {arg.benchmark!r}")
  c = ml_collections.ConfigDict()
  c.experiment = 'experiments.sense.experiment'
  c.variant = arg.variant  # 'smoke': a generated tree in workdir/smoke_data replaces data_dir and predictions
  c.benchmark = arg.benchmark
  c.seed = 0  # smoke: the generated tree's seed
  c.data_dir = ''  # the Spider root (dev.json, dev_gold.sql, database/) or a BIRD split folder (dev.json, ...)
  c.split = 'dev'  # names <split>_gold.sql, <split>.json and (BIRD) <split>_databases/
  c.gold = ''  # the `SQL\tdb_id` gold file; '' = <data_dir>/<split>_gold.sql (BIRD also <split>.sql)
  c.db_dir = ''  # database root (<db_dir>/<db>/<db>.sqlite); '' = <data_dir>/database (BIRD <split>_databases)
  c.data_file = ''  # BIRD: the examples with `difficulty`, in gold order; '' = <data_dir>/<split>.json
  c.predictions = ''  # Spider: one SQL per line; BIRD: the official JSON dict (a .json file) or one SQL per line
  c.test_suite = True  # Spider: every .sqlite in the database's folder must match (plain EX when it holds one)
  c.keep_distinct = False  # Spider: keep DISTINCT when comparing (the official --keep_distinct)
  c.timeout_s = TIMEOUT_S[arg.benchmark]  # per query, wall clock; a timeout scores 0 and is counted
  c.max_rows = 100_000  # per query; more rows is an error (too_many_rows) and scores 0
  c.memory_mb = 2048  # address-space limit of each SQL worker process
  c.workers = 0  # SQL worker processes; 0 = one per CPU
  c.progress_bar = True
  return c
