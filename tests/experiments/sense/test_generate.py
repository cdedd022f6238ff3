"""SENSE --mode generate: greedy SQL from a training workdir's checkpoint, scored by the score-mode evaluators, on a
BIRD-layout dev set with a tiny model trained (two steps) on a Spider-layout train set through --config.train_sets."""
import json

import pytest

import launch
from configs.sense import get_config
from experiments.sense import data, experiment, smoke


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """(config, workdir) of a 2-step SFT run on a generated Spider-layout train set."""
  root = tmp_path_factory.mktemp('sense_gen')
  world = smoke.write_smoke_world(str(root / 'world'), seed=1, n_domains=3, n_parents=8, per_template=1)
  config = get_config('variant=default,stage=sft,benchmark=bird')
  config.update(dict(train_sets=f'spider:{world.root}', total_steps=2, batch_size=8, seq_len=128,
                     max_new_tokens=8, ckpt_every=2, log_every=1, progress_bar=False, workers=2, timeout_s=5.0))
  config.optim.warmup_steps = 1
  workdir = str(root / 'sft')
  _, program = launch.pick_program(experiment, 'train')
  assert program(config, workdir)['step'] == 2
  return config, workdir, root


def test_generate_scores_a_bird_split(trained):
  config, workdir, root = trained
  data_dir, _ = experiment.write_smoke_tree(str(root / 'tree'), 'bird')
  config.data_dir = data_dir
  _, program = launch.pick_program(experiment, 'generate')
  summary = program(config, workdir)
  out = f'{workdir}/generate_bird_dev'
  gold = data.read_gold_file(f'{data_dir}/dev_gold.sql')
  predictions = data.read_bird_predictions(f'{out}/predict_dev.json')
  assert [db for _, db in predictions] == [db for _, db in gold]
  assert summary['n'] == len(gold) and summary['step'] == 2 and summary['stage'] == 'sft'
  assert set(summary['levels']) == {'simple', 'moderate', 'challenging'}
  assert json.loads(open(f'{out}/summary.json').read()) == summary
  verdicts = [json.loads(line) for line in open(f'{out}/verdicts.jsonl')]
  assert [v['prediction'] for v in verdicts] == [sql for sql, _ in predictions]
  assert summary['accuracy'] == sum(v['correct'] for v in verdicts) / len(verdicts)


def test_generate_needs_a_training_config(tmp_path):
  _, program = launch.pick_program(experiment, 'generate')
  with pytest.raises(ValueError, match='stage=sft'):
    program(get_config('benchmark=spider'), str(tmp_path))


def test_bad_train_sets_are_named(tmp_path):
  config = get_config('stage=sft')
  _, program = launch.pick_program(experiment, 'train')
  with pytest.raises(ValueError, match='train_sets'):
    program(config, str(tmp_path / 'a'))
  config.train_sets = 'wikisql:/nowhere'
  with pytest.raises(ValueError, match="'wikisql:/nowhere'"):
    program(config, str(tmp_path / 'b'))
