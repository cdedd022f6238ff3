"""The search, select and plots programs on random tiny models (no training): per-question JSONL that a rerun
resumes, the selection and the PNGs; the arithmetic task's checker and tokenizer; one-line errors."""
import json
import os

import jax
import jax.numpy as jnp
import pytest

from configs.test_time_compute import get_config
from experiments.test_time_compute import arithmetic, experiment, training
from experiments.test_time_compute.labels import Labelled
from mmjax.models.prm import from_decoder, from_decoder_params


def _config():
  c = get_config('variant=smoke')
  c.data.min_len = c.data.max_len = 2
  c.data.eval_questions = 3
  c.model.hidden_size, c.model.intermediate_size, c.model.num_heads, c.model.num_kv_heads = 16, 32, 2, 1
  c.search.budgets = (2,)
  c.search.strategies = ('best_of_n', 'beam_m2_k0')
  c.search.chunk = 2
  c.select.bins = 2
  return c


def test_search_resumes_per_question_then_select_and_plots(tmp_path):
  config, workdir = _config(), str(tmp_path)
  model = training.policy_model(config)
  params = jax.tree.map(jnp.asarray, model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))['params'])
  params = jax.tree.map(lambda x: getattr(x, 'value', x), params, is_leaf=lambda x: hasattr(x, 'value'))
  os.makedirs(tmp_path / 'policy'), os.makedirs(tmp_path / 'prm')
  training.save_params(str(tmp_path / 'policy' / 'params.msgpack'), params)
  training.save_params(str(tmp_path / 'prm' / training.BEST),
                       from_decoder_params(from_decoder(model), params, jax.random.key(1)))
  experiment.search_program(config, workdir)
  path = tmp_path / 'search.jsonl'
  lines = path.read_text().splitlines()
  records = [json.loads(line) for line in lines]
  assert [r['question'] for r in records] == [0, 1, 2]
  for r in records:
    assert set(r['runs']) == {'best_of_n', 'beam_m2_k0'} and set(r['runs']['beam_m2_k0']) == {'2'}
    assert set(r['runs']['best_of_n']['2']) == {'weighted', 'majority', 'argmax'}
    assert 0 <= r['pass1'] <= 1 and 0 < r['mean_score'] < 1
  path.write_text('\n'.join(lines[:2]) + '\n')  # a run killed before its last chunk
  experiment.search_program(config, workdir)
  assert path.read_text().splitlines()[:2] == lines[:2] and len(path.read_text().splitlines()) == 3
  selected = experiment.select_program(config, workdir)
  assert len(selected['compute_optimal']) == 1 and 0 <= selected['compute_optimal'][0] <= 1
  files = experiment.plots_program(config, workdir)['files']
  assert all((tmp_path / f).stat().st_size > 1000 for f in files) and len(files) == 3
  assert set(json.loads((tmp_path / 'summary.json').read_text())) == {'search', 'select', 'plots'}


def test_missing_stage_outputs_name_the_stage(tmp_path):
  with pytest.raises(FileNotFoundError, match='params.msgpack does not exist: run the stage'):
    experiment.label_program(_config(), str(tmp_path))
  with pytest.raises(FileNotFoundError, match='run --mode label first'):
    experiment.train_prm_program(_config(), str(tmp_path))
  with pytest.raises(FileNotFoundError, match='run --mode search first'):
    experiment.read_search(str(tmp_path / 'search.jsonl'))


def test_strategy_names():
  assert experiment.strategy('beam_msqrt_k3').name == 'beam_msqrt_k3'
  assert experiment.strategy('dvts_m4_k0').width == 4
  with pytest.raises(ValueError, match="unknown strategy 'beam4'"):
    experiment.strategy('beam4')


def test_arithmetic_task():
  p = arithmetic.Problem((3, 5, 8, 2))
  assert p.prompt == '3+5+8+2=\n' and p.steps() == ['3+5=8\n', '8+8=6\n', '6+2=8\n', 'a=8'] and p.answer == '8'
  assert arithmetic.answer_fn(''.join(p.steps())) == '8' and arithmetic.answer_fn('3+5=8\n') is None
  assert arithmetic.check_steps(p, ['3+5=8\n', '8+8=7\n', '7+2=9\n']) == [True, False, False]
  assert arithmetic.decode(arithmetic.encode(p.prompt)) == p.prompt
  example = arithmetic.sft_example(p, arithmetic.max_tokens(4))
  assert example['tokens'][int(example['loss_mask'].nonzero()[0][-1]) + 1] == arithmetic.EOS
  with pytest.raises(ValueError, match="character 'x' is not in"):
    arithmetic.encode('3x')
  problems = arithmetic.make_problems(50, min_len=3, max_len=5, seed=0)
  assert {p.difficulty for p in problems} == {3, 4, 5}
  assert max(len(arithmetic.encode(p.prompt + ''.join(p.steps()))) + 1 for p in problems) <= arithmetic.max_tokens(5)


class _ScriptedVerifier:
  """Scores each step by the exact checker: `right` for a right step, `wrong` for a wrong one."""

  def __init__(self, probs, right, wrong):
    self.probs, self.right, self.wrong = probs, right, wrong

  def score(self, requests):
    return [[self.right if ok else self.wrong for ok in arithmetic.check_steps(self.probs[q], steps)]
            for q, steps in requests]


def test_step_separation_of_a_scripted_verifier():
  probs = [arithmetic.Problem((3, 5, 8)), arithmetic.Problem((9, 4))]
  labelled = [Labelled(0, ('3+5=8\n', '8+8=6\n', 'a=6'), (1.0, 1.0, 1.0)),
              Labelled(0, ('3+5=9\n', '9+8=7\n', 'a=7'), (0.0, 0.0, 0.0)),
              Labelled(1, ('9+4=3\n', 'a=3'), (1.0, 1.0))]  # 5 right steps, 3 wrong ones
  good = experiment.step_separation(_ScriptedVerifier(probs, 0.9, 0.2), probs, labelled)
  assert good == pytest.approx({'step_auc': 1.0, 'right_steps': 5, 'wrong_steps': 3, 'right_score': 0.9,
                                 'wrong_score': 0.2}, abs=1e-12)
  assert experiment.step_separation(_ScriptedVerifier(probs, 0.2, 0.9), probs, labelled)['step_auc'] == 0.0
  assert experiment.step_separation(_ScriptedVerifier(probs, 0.5, 0.5), probs, labelled)['step_auc'] == 0.5
  assert experiment.step_separation(_ScriptedVerifier(probs, 0.9, 0.2), probs, labelled[2:])['step_auc'] is None
