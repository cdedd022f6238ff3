"""mmjax launcher: one thin CLI for every experiment.

  python launch.py --config configs/vit_digits.py:mode=smoke --workdir runs/digits_smoke
  python launch.py --config configs/vit_digits.py --workdir runs/digits --config.optim.lr=3e-3
  python launch.py --config configs/vit_digits.py --workdir runs/digits --mode eval
  python launch.py --mode convert --convert_from HF_DIR --convert_to runs/params      # HF -> orbax
  python launch.py --mode convert --convert_from runs/params --convert_to HF_OUT      # orbax -> HF
  python launch.py --mode generate -- --checkpoint HF_DIR --input prompts.jsonl --output out.jsonl
  python launch.py --mode generate -- --checkpoint HF_DIR --chat                      # streams tokens

Multi-host: on a TPU pod or a SLURM/Kubernetes cluster JAX finds the coordinator itself;
elsewhere pass --coordinator_address=HOST:PORT --num_processes=N --process_id=I to every
process.
"""
from __future__ import annotations

import difflib
import importlib
import importlib.util
import json
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file('config', None, 'configs/<exp>.py[:args]', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and reports.')
_MODE = flags.DEFINE_enum('mode', 'train', ['train', 'eval', 'convert', 'generate'], 'What to run.')
_COORDINATOR = flags.DEFINE_string('coordinator_address', None, 'HOST:PORT of process 0 (multi-host).')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Number of processes (multi-host).')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'Index of this process (multi-host).')
_CONVERT_FROM = flags.DEFINE_string('convert_from', None,
                                    'convert: an HF directory, an mmjax params checkpoint or a training workdir.')
_CONVERT_TO = flags.DEFINE_string('convert_to', None, 'convert: the directory to write.')
_HF_CONFIG = flags.DEFINE_string('hf_config', None, 'convert to HF from a workdir: config.json or HF directory.')
_STOP_AFTER = flags.DEFINE_integer('stop_after_step', None,
                                   'Checkpoint and exit 0 after this step (time-sliced jobs).')

_CLUSTER_ENV = ('TPU_WORKER_HOSTNAMES', 'MEGASCALE_COORDINATOR_ADDRESS', 'JAX_COORDINATOR_ADDRESS')


def _flat_keys(cfg, prefix=''):
  keys = []
  for k, v in cfg.items():
    keys.append(prefix + k)
    if hasattr(v, 'items'):
      keys += _flat_keys(v, prefix + k + '.')
  return keys


def _load_config(spec: str):
  """Loads `path[:arg]` the way config_flags does, to list the valid keys."""
  path, _, arg = spec.partition(':')
  module_spec = importlib.util.spec_from_file_location('_mmjax_config', path)
  if module_spec is None or not os.path.exists(path):
    return None
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def _parse_flags(argv):
  """absl flag parsing that turns an unknown config key into a one-line error."""
  try:
    return flags.FLAGS(argv)
  except (flags.Error, AttributeError, KeyError) as e:
    bad = [a.split('=', 1)[0][len('--config.'):] for a in argv if a.startswith('--config.')]
    path = None
    for i, a in enumerate(argv):
      if a.startswith('--config='):
        path = a.split('=', 1)[1]
      elif a == '--config' and i + 1 < len(argv):
        path = argv[i + 1]
    cfg = _load_config(path) if path else None
    if cfg is not None:
      valid = _flat_keys(cfg)
      unknown = [k for k in bad if k not in valid]
      if unknown:
        lines = []
        for k in unknown:
          close = difflib.get_close_matches(k, valid, n=3, cutoff=0.5)
          lines.append(f"unknown config key '{k}'" + (f"; closest valid keys: {', '.join(close)}" if close else ''))
        sys.stderr.write('launch.py: ' + '\n'.join(lines) + '\n')
        sys.exit(2)
    sys.stderr.write(f'launch.py: {e}\n')
    sys.exit(2)


def _maybe_initialize_distributed():
  import jax
  if _COORDINATOR.value or (_NUM_PROCESSES.value or 1) > 1:
    # Cross-process collectives between CPU devices (tests, CPU clusters); GPUs/TPUs ignore it.
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                               num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value)
  elif any(k in os.environ for k in _CLUSTER_ENV) or int(os.environ.get('SLURM_NTASKS', '1')) > 1:
    jax.distributed.initialize()


def _convert():
  """HF directory -> mmjax params checkpoint, or params checkpoint / training workdir -> HF directory."""
  if not _CONVERT_FROM.value or not _CONVERT_TO.value:
    raise app.UsageError('--mode convert needs --convert_from and --convert_to')
  from mmjax.weights import hf_to_orbax, orbax_to_hf
  src = _CONVERT_FROM.value
  if os.path.isfile(os.path.join(src, 'config.json')) and not os.path.isdir(os.path.join(src, 'params')):
    out = hf_to_orbax(src, _CONVERT_TO.value)
  else:
    out = orbax_to_hf(src, _CONVERT_TO.value, hf_config=_HF_CONFIG.value)
  print(f'wrote {out}')


def main(argv):
  if _MODE.value == 'generate':  # the generation CLI owns the arguments after `--`
    from mmjax import cli_generate
    sys.exit(cli_generate.main(argv[1:]))
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if _MODE.value == 'convert':
    _convert()
    return
  if _CONFIG.value is None or not _WORKDIR.value:
    raise app.UsageError('--config and --workdir are required')
  _maybe_initialize_distributed()
  from mmjax.train import evaluate_checkpoint, train_and_evaluate  # after distributed init
  config = _CONFIG.value
  logging.info('config:\n%s', config)
  module = importlib.import_module(config.experiment) if config.get('experiment') else None
  if module is not None and hasattr(module, 'run'):
    # Programs that are not a training run (benchmark scoring, conversion) own their mode.
    out = module.run(config, _WORKDIR.value, _MODE.value)
    print(json.dumps(out, indent=1, default=str))
    return
  if _MODE.value == 'train':
    out = train_and_evaluate(config, _WORKDIR.value, stop_after_step=_STOP_AFTER.value)
  else:
    out = evaluate_checkpoint(config, _WORKDIR.value)
  summary = {'step': out['step'], 'eval': out['eval'], 'preempted': out.get('preempted', False),
             'report': out.get('report')}
  print(json.dumps(summary, indent=1, default=str))


if __name__ == '__main__':
  app.run(main, flags_parser=_parse_flags)
