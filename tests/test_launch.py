"""launch.py: program dispatch, and user errors as one line with exit 2 (a traceback only with --debug).

The subprocess tests run a toy config and experiment written into tmp_path: they import neither jax nor the
trainer, so each takes about a second.
"""
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import ml_collections
import pytest

import launch
from mmjax.train.config import base_config

ROOT = Path(__file__).resolve().parents[1]
TOY_EXPERIMENT = '''
def _program(name):
  def run(config, workdir):
    if config.data_file == 'missing.jsonl':
      raise FileNotFoundError('missing.jsonl: no such data file')
    return {'program': name, 'variant': config.variant, 'workdir': workdir}
  return run


PROGRAMS = {'generate': _program('generate'), 'score': _program('score')}
'''
TOY_CONFIG = '''
import ml_collections


def get_config(arg=None):
  variant = (arg or 'variant=default').partition('=')[2]
  if variant not in ('default', 'smoke'):
    raise ValueError(f"variant must be 'default' or 'smoke', got {variant!r}")
  return ml_collections.ConfigDict({'experiment': 'toy_experiment', 'variant': variant, 'data_file': '',
                                    'compute_dtype': 'float32', 'optim': {'lr': 0.1, 'weight_decay': 0.0}})
'''


@pytest.fixture(scope='module')
def toy(tmp_path_factory):
  folder = tmp_path_factory.mktemp('toy')
  (folder / 'toy_experiment.py').write_text(TOY_EXPERIMENT)
  (folder / 'toy_config.py').write_text(TOY_CONFIG)
  return folder


def _launch(toy: Path, *args: str) -> subprocess.CompletedProcess:
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'PYTHONPATH': str(toy)}
  return subprocess.run([sys.executable, 'launch.py', *args], cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=120)


def _one_line_error(proc: subprocess.CompletedProcess) -> str:
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert 'Traceback' not in proc.stderr, proc.stderr[-2000:]
  return proc.stderr.strip().splitlines()[-1]


def test_the_mode_runs_that_program_and_the_first_is_the_default(toy, tmp_path):
  config = f'--config={toy / "toy_config.py"}:variant=smoke'
  for args, program in ((['--mode=score'], 'score'), ([], 'generate')):
    proc = _launch(toy, config, f'--workdir={tmp_path}', *args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout) == {'program': program, 'variant': 'smoke', 'workdir': str(tmp_path)}


def test_user_errors_are_one_line_and_exit_2(toy, tmp_path):
  config, workdir = f'--config={toy / "toy_config.py"}', f'--workdir={tmp_path}'
  cases = [
      ([config, workdir, '--mode=train'], "toy_experiment has no program 'train'; it runs --mode generate|score"),
      ([config, workdir, '--config.compute_dtype=bf16'],
       "config.compute_dtype='bf16' is not a dtype; did you mean bfloat16?"),
      ([config, workdir, '--config.optim.learning_rate=0.1'],
       "unknown config key 'optim.learning_rate'; closest valid keys: optim.lr"),
      ([config, workdir, '--config.data_file=missing.jsonl'], 'missing.jsonl: no such data file'),
      ([f'--config={toy / "nope.py"}', workdir], f'no config file {toy / "nope.py"}'),
      ([f'{config}:variant=fast', workdir], "variant must be 'default' or 'smoke', got 'fast'"),
  ]
  for args, message in cases:
    line = _one_line_error(_launch(toy, *args))
    assert line.startswith('launch.py: ') and message in line, (args, line)


def test_debug_shows_the_traceback(toy, tmp_path):
  proc = _launch(toy, f'--config={toy / "toy_config.py"}', f'--workdir={tmp_path}', '--config.data_file=missing.jsonl',
                 '--debug')
  assert proc.returncode not in (0, 2) and 'Traceback' in proc.stderr
  assert 'FileNotFoundError: missing.jsonl: no such data file' in proc.stderr


def test_suggestions_put_the_alias_first():
  valid = [k for k, _ in launch._flat_items(base_config())]
  assert launch.suggest_keys('optim.learning_rate', valid)[0] == 'optim.lr'
  assert launch.suggest_keys('learning_rate', valid)[0] == 'optim.lr'
  assert launch.suggest_keys('optim.lr_schedule', valid)[0] == 'optim.schedule'
  assert launch.suggest_keys('steps', valid)[0] == 'total_steps'
  assert launch.suggest_keys('batch', valid)[0] == 'batch_size'
  assert launch.suggest_keys('optim.wd', valid)[0] == 'optim.weight_decay'
  assert launch.suggest_keys('optim.weight_decai', valid)[0] == 'optim.weight_decay'  # a misspelling


def test_every_dtype_key_is_checked():
  config = ml_collections.ConfigDict({'compute_dtype': 'float32', 'model': {'param_dtype': 'fp16'}})
  with pytest.raises(ValueError, match=r"config.model.param_dtype='fp16' is not a dtype; did you mean float16\?"):
    launch.check_dtypes(config)
  config.model.param_dtype = 'bfloat16'
  launch.check_dtypes(config)


def test_programs_of_a_module():
  benchmark = types.ModuleType('bench')
  benchmark.PROGRAMS = {'generate': print, 'score': print}
  assert launch.pick_program(benchmark, None) == ('generate', print)
  with pytest.raises(ValueError, match=r"bench has no program 'eval'; it runs --mode generate\|score"):
    launch.pick_program(benchmark, 'eval')
  trainer = types.ModuleType('trainer')
  trainer.make_experiment = print
  assert launch.pick_program(trainer, None)[0] == 'train'
  assert launch.pick_program(trainer, 'eval')[0] == 'eval'
  with pytest.raises(ValueError, match='without --config, --mode convert and --mode generate need none'):
    launch.pick_program(trainer, 'convert')
  benchmark.PROGRAMS = {'fit': print}
  with pytest.raises(ValueError, match=r"bench.PROGRAMS names \['fit'\]"):
    launch.pick_program(benchmark, None)
  with pytest.raises(ValueError, match='declares no PROGRAMS and no make_experiment'):
    launch.pick_program(types.ModuleType('empty'), None)
