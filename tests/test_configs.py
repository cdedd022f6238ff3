"""Every configs/*.py builds in every variant and config argument it supports, and names an experiment that runs."""
import importlib
import itertools
from pathlib import Path

import pytest

import launch
from mmjax.evals.config import check_benchmark_config

CONFIGS = sorted(p.stem for p in (Path(__file__).resolve().parents[1] / 'configs').glob('*.py')
                 if p.stem != '__init__')
# Config arguments besides the variant, per config: every value each one takes.
ARGS = {
    'avesformer': {'task': ('s4', 'ms3', 'avss'), 'backbone': ('pvt_b0', 'pvt_b1', 'pvt_b2', 'pvt_b3', 'pvt_b4',
                   'pvt_b5', 'r50'), 'recipe': ('avsegformer', 'combo'), 'decoder': ('avesformer', 'avsegformer')},
    'coverbench': {'prompt': ('zero_shot', 'cot')},
    'dit_digits': {},
    'ipadapter_instruct': {},
    'object_images': {'stage': ('null2geo', 'geo2mat')},
    'llava_onevision': {'size': ('0.5b', '7b', '72b'), 'stage': ('stage1', 'stage1.5', 'si', 'ov')},
    'mmiu': {},
    'sense': {'benchmark': ('spider', 'bird')},
    'structeval': {},
    'test_time_compute': {},
    'vit_digits': {},
}
BENCHMARKS = {'coverbench', 'mmiu'}


def _args(name: str) -> list[str]:
  """Every combination of the config's arguments, each with every variant."""
  extra = ARGS[name]
  grid = [dict(zip(extra, values)) for values in itertools.product(*extra.values())]
  return [','.join(f'{k}={v}' for k, v in {**combo, 'variant': variant}.items())
          for combo in grid for variant in ('default', 'smoke')]


def test_every_config_is_covered():
  assert set(CONFIGS) == set(ARGS), 'add the new config and its arguments to ARGS'


@pytest.mark.parametrize('name', CONFIGS)
def test_config_builds_in_every_variant(name):
  module = importlib.import_module(f'configs.{name}')
  default = module.get_config()
  assert default.variant == 'default' and default == module.get_config('variant=default')
  experiment = importlib.import_module(default.experiment)
  programs = launch.experiment_programs(experiment)
  for arg in _args(name):
    config = module.get_config(arg)
    assert config.variant == arg.rpartition('variant=')[2], arg
    assert config.experiment == default.experiment
    launch.check_dtypes(config)
    for program in programs:
      assert launch.pick_program(experiment, program)[0] == program
    if name in BENCHMARKS:
      check_benchmark_config(config)
  assert launch.pick_program(experiment, None)[0] == next(iter(programs))


@pytest.mark.parametrize('name', sorted(BENCHMARKS))
def test_benchmark_configs_have_no_trainer_keys(name):
  config = importlib.import_module(f'configs.{name}').get_config()
  assert not {'optim', 'mesh', 'ema_decay', 'total_steps', 'sharding_rules'} & set(config)
  assert list(launch.experiment_programs(importlib.import_module(config.experiment))) == ['generate', 'score']


def test_a_bad_variant_names_the_valid_ones():
  for name in CONFIGS:
    with pytest.raises(ValueError, match="variant must be .*default.*smoke.*got 'fast'"):
      importlib.import_module(f'configs.{name}').get_config('variant=fast')
