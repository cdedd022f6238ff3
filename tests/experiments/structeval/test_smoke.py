"""The smoke setting: on the synthetic knowledge base a memoriser (seed answers only) and a knower (answers from the
facts) look alike by seed accuracy, and StructEval's views tell them apart."""
import json
import os

import pytest

from configs.structeval import get_config
from experiments.structeval.benchmark import StructEvalBenchmark
from experiments.structeval.consistency import ranking_consistency
from experiments.structeval.data import load_struct
from experiments.structeval.experiment import PROGRAMS
from experiments.structeval.synthetic import Knower, Memoriser, write_synthetic_struct
from mmjax.evals import evaluate


@pytest.fixture(scope='module')
def kb(tmp_path_factory):
  return write_synthetic_struct(str(tmp_path_factory.mktemp('kb')), seed=0)


def _run(kb, responder, workdir):
  bench = StructEvalBenchmark(load_struct(kb.path, include_seeds=True))
  return evaluate(bench, responder, str(workdir), batch_size=64, run_info={}, title='smoke', progress=False).summary


def test_mastery_views_separate_a_memoriser_from_a_knower(kb, tmp_path):
  memo = _run(kb, Memoriser(kb, seed=1), tmp_path / 'memo')
  know = _run(kb, Knower(kb, p=0.95, seed=1), tmp_path / 'know')
  # Plain seed accuracy does not separate them: the memoriser is perfect, the knower near it.
  assert memo['seed_accuracy'] == 100.0 and know['seed_accuracy'] >= 85.0
  assert memo['seed_accuracy'] >= know['seed_accuracy']
  # StructEval does: the memoriser falls to about chance on the Struct items and never masters a seed.
  assert memo['item_accuracy'] < 40.0 and know['item_accuracy'] > 75.0
  assert know['seed_mean'] - memo['seed_mean'] > 40.0
  assert memo['strict_mastery'] <= 5.0 and know['strict_mastery'] - memo['strict_mastery'] > 25.0
  assert know['strict_mastery_with_seed'] > memo['strict_mastery_with_seed']
  assert all(know['per_level'][lv] > memo['per_level'][lv] for lv in know['per_level'])
  assert len(know['per_level']) == 6 and set(know['per_kind']) == {'bloom', 'concept'}
  assert os.path.getsize(tmp_path / 'know' / 'summary.png') > 0


def test_smoke_variant_runs_and_resumes(tmp_path):
  config = get_config('variant=smoke')
  config.progress_bar = False
  s = PROGRAMS['generate'](config, str(tmp_path))
  assert s['n'] == 320 and s['throughput']['generated'] == 320 and s['unmatched'] > 0
  again = PROGRAMS['generate'](config, str(tmp_path))
  assert again['throughput']['generated'] == 0 and again['accuracy'] == s['accuracy']
  assert json.load(open(tmp_path / 'run_info.json'))['responder'] == 'guess'


def _scores(kb, responder):
  bench = StructEvalBenchmark(load_struct(kb.path, include_seeds=True))
  prompts = [bench.prompt(i, responder)[0] for i in range(len(bench))]
  return bench.score([{'id': i, 'response': r} for i, r in enumerate(responder.respond(prompts))]).summary


def test_struct_rankings_agree_across_instantiations(tmp_path):
  """Ten knowers of graded skill, ranked on two independently generated sets: the Struct items rank them more
  consistently than the seed questions alone (one item per objective)."""
  skills = [0.5 + 0.05 * k for k in range(10)]
  runs = []
  for seed in (0, 1):
    kb = write_synthetic_struct(str(tmp_path / str(seed)), seed=seed)
    runs.append({f'p={p:.2f}': _scores(kb, Knower(kb, p=p, seed=seed + 7)) for p in skills})
  struct = ranking_consistency(*({m: s['item_accuracy'] for m, s in run.items()} for run in runs))
  seeds = ranking_consistency(*({m: s['seed_accuracy'] for m, s in run.items()} for run in runs))
  assert struct['kendall_tau_b'] > 0.8 and struct['spearman_rho'] > 0.9
  assert struct['kendall_tau_b'] > seeds['kendall_tau_b']
