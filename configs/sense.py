"""SENSE (text-to-SQL, arXiv 2408.03256): score SQL predictions with the Spider test-suite metric or BIRD EX, and
train a decoder with SFT then DPO / cDPO on execution-labelled pairs.

get_config('benchmark=spider|bird,variant=default|smoke,stage=|sft|dpo'); the program is launch.py's --mode: score
(no stage), train (stage=sft|dpo; SFT, then DPO from the SFT workdir) and generate (greedy SQL for a dev set from
a training workdir's checkpoint, scored as --mode score; the issue's `mode=generate_eval`). The issue's `mode=eval`
config argument is --mode score here: in mmjax the program is always --mode. experiments/sense/README.md has the
training commands.

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
from mmjax.train.config import base_config, parse_arg

BENCHMARKS = ('spider', 'bird')
# The official evaluators' per-query timeouts (test-suite: 60 s, BIRD meta_time_out: 30 s); ours preempt.
TIMEOUT_S = {'spider': 60.0, 'bird': 30.0}
STAGES = ('', 'sft', 'dpo')


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = parse_arg(arg, variant='default', benchmark='spider', stage='')
  if arg.variant not in VARIANTS:
    raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {arg.variant!r}")
  if arg.benchmark not in BENCHMARKS:
    raise ValueError(f"benchmark must be one of {', '.join(BENCHMARKS)}, got {arg.benchmark!r}")
  if arg.stage not in STAGES:
    raise ValueError(f"stage must be sft or dpo (training) or empty (score-only), got {arg.stage!r}")
  c = base_config() if arg.stage else ml_collections.ConfigDict()
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
  if arg.stage:
    _training(c, arg.stage, arg.variant)
  return c


def _training(c: ml_collections.ConfigDict, stage: str, variant: str) -> None:
  """The keys of the SFT and DPO stages (spec section 2 defaults; the smoke's tiny model has its own rates)."""
  c.stage = stage
  # SFT data: ';'-separated layout:folder entries; spider (train_spider.json + database/), bird (train.json +
  # train_databases/), synth (synthesis.synthesize_strong's out_dir: train_synth.json + database/).
  c.train_sets = ''
  c.seq_len = 1024  # tokens of prompt + SQL + EOS; longer prompts lose their oldest tokens
  c.max_new_tokens = 256  # generate: the SQL's token budget
  c.example_rows = 0  # example rows per table in the CREATE TABLE prompt
  c.model = ml_collections.ConfigDict()
  c.model.hf_dir = ''  # an HF Qwen2 folder (config.json, safetensors, tokenizer.json); '' = the tiny smoke model
  c.model.hidden_size = 64  # the tiny model (hf_dir = ''), random init with the word tokenizer
  c.model.intermediate_size = 128
  c.model.num_hidden_layers = 2
  c.model.num_attention_heads = 4
  c.model.num_key_value_heads = 2
  c.tokenizer_min_count = 1  # the word tokenizer: words seen fewer times are spelled out in characters
  # smoke: build the word tokenizer over the train questions' gold SQL too, not only the strong data's (a real
  # model's vocabulary has every SQL keyword; without it, a keyword that only the gold uses, AVG where every strong
  # SQL has SUM, is spelled in characters that the SFT never trained)
  c.tokenizer_gold_sql = False
  # dpo: set init_from to the SFT workdir: the policy starts from its latest checkpoint, and the frozen reference's
  # log-probs (and the smoke's tokenizer) come from the same checkpoint.
  c.dpo = ml_collections.ConfigDict()
  c.dpo.beta = 0.1
  c.dpo.label_smoothing = 0.0  # cDPO's ε (0.1 in the released pipeline); 0 is plain DPO
  c.dpo.pairs = ''  # a JSONL of pairs (db_id, question, evidence, prompt, chosen, rejected; synthesis.weak_sample)
  c.dpo.db_dir = ''  # the pairs' database root (<db_dir>/<db>/<db>.sqlite); only to rebuild prompts
  c.dpo.n_samples = 8  # smoke: weak samples per training question
  # smoke: the weak model, 'mutator' (gold-SQL faults, smoke.weak_sampler) or 'policy' (the SFT checkpoint's own
  # samples at dpo.temperature, plus the gold SQL as a chosen candidate when dpo.gold_chosen; dpo.policy_sampler)
  c.dpo.pairs_from = 'mutator'
  c.dpo.temperature = 1.0
  c.dpo.gold_chosen = True
  c.dpo.rejected_must_run = False  # pair only rejected samples that execute (wrong results, not failing SQL)
  c.dpo.nll_weight = 0.0  # RPO / DPO+NLL: + weight * the chosen SQL's mean token NLL (0 = SENSE's plain DPO / cDPO)
  # smoke, our departure: questions whose kept samples are all right become anchors (their most frequent right SQL),
  # trained with + weight * its mean token NLL and no DPO term, against DPO breaking what SFT got right (0: none)
  c.dpo.anchor_weight = 0.0
  c.dpo.pairs_per_question = 1  # the released "grouped-any-limit1" pair set
  c.total_steps = 3000
  c.batch_size = 32
  c.log_every = 50
  c.eval_every = 0
  c.ckpt_every = 1000
  c.keep_ckpts = 1
  c.optim.weight_decay = 0.0
  c.optim.clip_norm = 1.0
  c.optim.schedule = 'cosine'
  if stage == 'sft':
    c.optim.lr = 2e-5  # spec: 2e-5 for 3 epochs, cosine, 3% warmup (7B/13B models)
    c.optim.warmup_steps = 90
  else:
    c.optim.lr = 1e-6  # spec: 5e-7 to 1e-6 for 1-2 epochs (7B/13B models)
    c.optim.warmup_steps = 10
    c.total_steps = 1000
  # variant=smoke: the generated world (experiments/sense/smoke.py write_smoke_world) trained and evaluated on.
  # strong_error_*: the strong (SFT) data's blind spots, a share of the templates whose SQL carries one consistent
  # fault, in this share of their train instances (1.0: all, so that SFT never sees their right form)
  c.smoke = ml_collections.ConfigDict({'n_domains': 9, 'n_parents': 14, 'per_template': 10, 'dev_fraction': 0.35,
                                       'with_values': False, 'strong_error_templates': 0.35,
                                       'strong_error_rate': 1.0})
  if variant == 'smoke':  # the learning smoke (README, "The learning smoke"): DPO above SFT on held-out EX
    c.seq_len = 120  # the longest 9-domain prompt + SQL + EOS is 115 tokens
    c.max_new_tokens = 48
    c.batch_size = 16
    c.log_every = 20
    c.ckpt_every = 400
    c.workers = 2
    c.progress_bar = False
    c.mesh.data = 1  # one device: the same program under pytest's 8 virtual CPU devices as from the command line
    # the train step at XLA level 1: under the tests' level 0 the SFT took 70 CPU s, at level 1 41 (compile is cheap
    # at this size, the 200 steps are not)
    c.xla_options = {'xla_backend_optimization_level': 1}
    c.tokenizer_gold_sql = True
    c.model.hidden_size = 128  # 5-domain world, first round: held-out SFT EX 40% against 23% for hidden 64
    c.model.intermediate_size = 256
    # A tiny random-init model needs rates far above a 7B model's (3e-3 for SFT, 2e-3 for DPO).
    c.optim.lr = 3e-3 if stage == 'sft' else 2e-3
    c.optim.warmup_steps = 20 if stage == 'sft' else 5
    c.total_steps = 200 if stage == 'sft' else 60
    # DPO pairs aimed at the blind spots: the SFT policy's own samples at T 0.5 (mostly its learned answer), the gold
    # SQL as a chosen candidate, only rejected samples that run (a wrong result, not broken SQL), one pair a question
    c.dpo.pairs_from = 'policy'
    c.dpo.n_samples = 4
    c.dpo.temperature = 0.5
    c.dpo.rejected_must_run = True
    c.dpo.pairs_per_question = 1
    c.dpo.beta = 0.5
    c.dpo.nll_weight = 1.0  # DPO+NLL (our departure)
    c.dpo.anchor_weight = 5.0  # anchors: NLL on the policy's own right SQL of the questions without pairs (ours)
