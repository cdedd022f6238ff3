"""mmjax launcher: one thin CLI for every experiment and benchmark.

  python launch.py --config configs/vit_digits.py:variant=smoke --workdir runs/digits_smoke
  python launch.py --config configs/vit_digits.py --workdir runs/digits --config.optim.lr=3e-3
  python launch.py --config configs/vit_digits.py --workdir runs/digits --mode eval   # read-only; prints the results
  python launch.py --config configs/llava_onevision.py:size=72b --mode compile --compile_devices=256 \
      --config.model.text.scan_layers=True       # lowers the real step on an abstract mesh (mmjax.train.aot)
  python launch.py --config configs/mmiu.py --mode score --workdir runs/mmiu_score \
      --config.data_file=all.json --config.responses=R.jsonl
  python launch.py --mode convert --convert_from HF_DIR --convert_to runs/params      # HF -> orbax
  python launch.py --mode convert --convert_from runs/params --convert_to HF_OUT      # orbax -> HF
  python launch.py --mode generate -- --checkpoint HF_DIR --input prompts.jsonl --output out.jsonl
  python launch.py --mode generate -- --checkpoint HF_DIR --chat                      # streams tokens

Programs (--mode): an experiment module names the programs it runs in `PROGRAMS = {name: fn(config, workdir) ->
summary}` (a benchmark's are generate and score, from mmjax.evals.benchmark_programs); a training experiment
(`make_experiment(config)`) runs the trainer's train, eval and compile (lowering only), then its own PROGRAMS.
Without --mode the module's first program runs. Without --config, --mode convert converts checkpoints and --mode
generate runs the generation CLI (mmjax.generate.cli; its flags follow `--`). A config's `variant` (e.g. smoke) is a
config argument, never a program: `--config configs/mmiu.py:variant=smoke --mode generate`.

Errors a user can fix (a bad config argument, key or value, a missing file, bad ids, a checkpoint that does not fit)
print one line and exit 2; --debug shows the traceback instead.

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
from collections.abc import Callable, Mapping, Sequence

from absl import app, flags, logging
from ml_collections import config_flags

PROGRAMS = ('train', 'eval', 'compile', 'sample', 'generate', 'evaluate', 'encode', 'convert', 'score', 'n2g2m', 'ppl',
            'label', 'train_prm', 'search', 'select', 'plots', 'generate_struct', 'contaminate')

_CONFIG = config_flags.DEFINE_config_file('config', None, 'configs/<exp>.py[:args]', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics, responses and reports.')
_MODE = flags.DEFINE_enum('mode', None, PROGRAMS,
                          "The program: one the experiment declares (train|eval|compile for a training experiment, "
                          "generate|score for a benchmark); default: its first. Without --config: convert, or "
                          "generate (the generation CLI, its flags after `--`).")
_DEBUG = flags.DEFINE_bool('debug', False, 'Show the traceback of an error instead of its one-line message.')
_COORDINATOR = flags.DEFINE_string('coordinator_address', None, 'HOST:PORT of process 0 (multi-host).')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Number of processes (multi-host).')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'Index of this process (multi-host).')
_CONVERT_FROM = flags.DEFINE_string('convert_from', None,
                                    'convert: an HF directory, an mmjax params checkpoint or a training workdir.')
_CONVERT_TO = flags.DEFINE_string('convert_to', None, 'convert: the directory to write.')
_HF_CONFIG = flags.DEFINE_string('hf_config', None, 'convert to HF from a workdir: config.json or HF directory.')
_STOP_AFTER = flags.DEFINE_integer('stop_after_step', None,
                                   'Checkpoint and exit 0 after this step (time-sliced jobs).')
_ALLOW_CHANGE = flags.DEFINE_list('allow_config_change', [],
                                  'train: config keys (or subtrees, e.g. data) that may differ from those of the '
                                  'checkpoint it resumes although the change could corrupt the run (batch_size, '
                                  'seed, data.*, total_steps, lr, param_dtype, ...; see mmjax/train/resume_config.py).')
_RESTORE_STEP = flags.DEFINE_integer('restore_step', None,
                                     'train: resume from this step (the later steps are moved to '
                                     'checkpoints_set_aside/, not deleted); eval: evaluate it. Default: the newest '
                                     'step that restores.')
_COMPILE_DEVICES = flags.DEFINE_integer('compile_devices', None,
                                        'compile: lower the train step for this many devices (the -1 of '
                                        'config.mesh fills them), e.g. 256 for a pod; default: those present.')

_CLUSTER_ENV = ('TPU_WORKER_HOSTNAMES', 'MEGASCALE_COORDINATOR_ADDRESS', 'JAX_COORDINATOR_ADDRESS')
# Errors a user can fix by changing the command, a file or a config value: one line, exit 2 (traceback: --debug).
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError, app.UsageError)
DTYPES = ('float32', 'bfloat16', 'float16')
DTYPE_ALIASES = {'fp32': 'float32', 'f32': 'float32', 'float': 'float32', 'bf16': 'bfloat16', 'fp16': 'float16',
                 'f16': 'float16', 'half': 'float16'}
# Names from other trainers and scripts -> the name of the same setting here; suggested first for an unknown key.
KEY_ALIASES = {
    'learning_rate': 'lr', 'lr_schedule': 'schedule', 'lr_scheduler': 'schedule', 'scheduler': 'schedule',
    'steps': 'total_steps', 'num_steps': 'total_steps', 'max_steps': 'total_steps', 'train_steps': 'total_steps',
    'batch': 'batch_size', 'bs': 'batch_size', 'global_batch_size': 'batch_size', 'train_batch_size': 'batch_size',
    'wd': 'weight_decay', 'warmup': 'warmup_steps', 'num_warmup_steps': 'warmup_steps', 'grad_clip': 'clip_norm',
    'max_grad_norm': 'clip_norm', 'clip_grad_norm': 'clip_norm', 'gradient_clipping': 'clip_norm',
    'gradient_accumulation_steps': 'grad_accum_steps', 'accum_steps': 'grad_accum_steps', 'dtype': 'compute_dtype',
    'precision': 'compute_dtype', 'beta1': 'b1', 'beta2': 'b2', 'epsilon': 'eps', 'ema': 'ema_decay',
    'save_every': 'ckpt_every', 'checkpoint_every': 'ckpt_every', 'eval_interval': 'eval_every',
    'log_interval': 'log_every', 'random_seed': 'seed', 'max_tokens': 'max_new_tokens',
    'model_path': 'checkpoint', 'model_name_or_path': 'checkpoint', 'ckpt': 'checkpoint', 'data_path': 'data_file',
}


def _fail(message: str) -> None:
  sys.stderr.write(f'launch.py: {message}\n')
  sys.exit(2)


def _flat_items(cfg, prefix: str = '') -> list[tuple[str, object]]:
  """(dotted key, value) of every key of a ConfigDict, nested ones included."""
  items = []
  for k, v in cfg.items():
    items.append((prefix + k, v))
    if hasattr(v, 'items'):
      items += _flat_items(v, prefix + k + '.')
  return items


def suggest_keys(key: str, valid: Sequence[str], n: int = 3) -> list[str]:
  """Up to n valid keys the unknown `key` may mean: its alias (KEY_ALIASES) at the same place, then anywhere, then
  the closest spellings."""
  head, _, leaf = key.rpartition('.')
  alias = KEY_ALIASES.get(leaf)
  by_alias = []
  if alias:
    here = f'{head}.{alias}' if head else alias
    by_alias = [k for k in valid if k == here] + [k for k in valid if k.rpartition('.')[2] == alias and k != here]
  return list(dict.fromkeys(by_alias + difflib.get_close_matches(key, valid, n=n, cutoff=0.5)))[:n]


def _before_separator(argv: Sequence[str]) -> list[str]:
  """launch.py's own arguments: those before a `--` (the generation CLI's follow it)."""
  argv = list(argv)
  return argv[:argv.index('--')] if '--' in argv else argv


def _config_spec(argv: Sequence[str]) -> str | None:
  for i, a in enumerate(argv):
    if a.startswith('--config='):
      return a.split('=', 1)[1]
    if a == '--config' and i + 1 < len(argv):
      return argv[i + 1]
  return None


def _load_config(spec: str):
  """Loads `path[:arg]` the way config_flags does; a missing file or a bad config argument is a ValueError."""
  path, _, arg = spec.partition(':')
  if not os.path.isfile(path):
    raise FileNotFoundError(f'--config {spec}: no config file {path}')
  module_spec = importlib.util.spec_from_file_location('_mmjax_config', path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  try:
    return module.get_config(arg) if arg else module.get_config()
  except ValueError as e:
    renamed = ('; the program is --mode (e.g. --mode score) and the config variant is variant= (e.g. variant=smoke)'
               if 'mode' in [item.partition('=')[0].strip() for item in arg.split(',')] else '')
    raise ValueError(f'--config {spec}: {e}{renamed}') from None


def check_dtypes(config) -> None:
  """ValueError naming the first key `*dtype` whose value is not a dtype name (e.g. `--config.compute_dtype=bf16`)."""
  for key, value in _flat_items(config):
    if key.rpartition('.')[2].endswith('dtype') and isinstance(value, str) and value not in DTYPES:
      close = DTYPE_ALIASES.get(value.lower()) or next(iter(difflib.get_close_matches(value, DTYPES, n=1)), None)
      raise ValueError(f'config.{key}={value!r} is not a dtype' + (f'; did you mean {close}?' if close else '')
                       + f" (one of {', '.join(DTYPES)})")


def _unknown_keys(cfg, own: Sequence[str]) -> str | None:
  """One line per `--config.KEY=...` that `cfg` lacks, with the closest valid keys; None when every key exists."""
  valid = [k for k, _ in _flat_items(cfg)]
  bad = [a.split('=', 1)[0][len('--config.'):] for a in own if a.startswith('--config.')]
  lines = []
  for k in (k for k in bad if k not in valid):
    close = suggest_keys(k, valid)
    lines.append(f"unknown config key '{k}'" + (f"; closest valid keys: {', '.join(close)}" if close else ''))
  return '\n'.join(lines) or None


def _parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing that turns a missing config file, a bad config argument, an unknown config key, a bad flag
  value and a bad dtype into one line and exit 2 (a traceback with --debug)."""
  own = _before_separator(argv)
  try:
    spec = _config_spec(own)
    cfg = _load_config(spec) if spec else None
    try:
      rest = flags.FLAGS(argv)
    except (flags.Error, AttributeError, KeyError) as e:
      raise ValueError((_unknown_keys(cfg, own) if cfg is not None else None) or str(e)) from e
    if _CONFIG.value is not None:
      check_dtypes(_CONFIG.value)
    return rest
  except USER_ERRORS as e:
    if any(a in ('--debug', '--debug=true', '--debug=1') for a in own):
      raise
    _fail(str(e))


def _maybe_initialize_distributed() -> None:
  explicit = _COORDINATOR.value or (_NUM_PROCESSES.value or 1) > 1
  cluster = any(k in os.environ for k in _CLUSTER_ENV) or int(os.environ.get('SLURM_NTASKS', '1')) > 1
  if not (explicit or cluster):
    return
  import jax
  if explicit:
    # Cross-process collectives between CPU devices (tests, CPU clusters); GPUs/TPUs ignore it.
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                               num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value)
  else:
    jax.distributed.initialize()


def _convert():
  """HF directory -> mmjax params checkpoint, or params checkpoint / training workdir -> HF directory, with the
  tokenizer, processor and generation files, into a new or empty --convert_to."""
  if not _CONVERT_FROM.value or not _CONVERT_TO.value:
    raise app.UsageError('--mode convert needs --convert_from and --convert_to')
  from mmjax.weights import hf_to_orbax, orbax_to_hf
  src = _CONVERT_FROM.value
  try:
    if os.path.isfile(os.path.join(src, 'config.json')) and not os.path.isdir(os.path.join(src, 'params')):
      out = hf_to_orbax(src, _CONVERT_TO.value)
    else:
      out = orbax_to_hf(src, _CONVERT_TO.value, hf_config=_HF_CONFIG.value)
  except FileExistsError as e:  # a non-empty --convert_to: nothing was written, the user picks another
    raise app.UsageError(str(e)) from None
  print(f'wrote {out}')


def _trainer_summary(out: dict) -> dict:
  return {'step': out['step'], 'eval': out['eval'], 'preempted': out.get('preempted', False),
          'report': out.get('report')}


def _train(config, workdir: str) -> dict:
  from mmjax.train import train_and_evaluate  # after distributed init
  return _trainer_summary(train_and_evaluate(config, workdir, stop_after_step=_STOP_AFTER.value,
                                             restore_step=_RESTORE_STEP.value,
                                             allow_config_change=_ALLOW_CHANGE.value))


def _eval(config, workdir: str) -> dict:
  """Reads the workdir only (beside its live training run if need be); the results go to stdout."""
  from mmjax.train import evaluate_checkpoint  # after distributed init
  return _trainer_summary(evaluate_checkpoint(config, workdir, step=_RESTORE_STEP.value))


def _compile(config, workdir: str | None) -> dict:
  """Lowers the real train step on an abstract mesh (no devices, nothing read or written); prints the summary."""
  del workdir
  import jax

  from mmjax.train import aot
  return aot.summary(aot.lower_train_step(config, num_devices=_COMPILE_DEVICES.value or jax.device_count()))


# The programs of a training experiment (a module with `make_experiment(config)`), before its own PROGRAMS.
TRAINER_PROGRAMS = {'train': _train, 'eval': _eval, 'compile': _compile}


def experiment_programs(module) -> Mapping[str, Callable]:
  """The programs an experiment module runs, in order (the first is the default): its PROGRAMS, after the
  trainer's when it is a training experiment (e.g. dit_digits adds sample)."""
  declared = getattr(module, 'PROGRAMS', None)
  if declared is not None:
    unknown = sorted(set(declared) - set(PROGRAMS))
    if unknown:
      raise ValueError(f'{module.__name__}.PROGRAMS names {unknown}; launch.py runs {", ".join(PROGRAMS)}')
  if hasattr(module, 'make_experiment'):
    return {**TRAINER_PROGRAMS, **(declared or {})}
  if declared is not None:
    return declared
  raise ValueError(f'{module.__name__} declares no PROGRAMS and no make_experiment(config); launch.py cannot run it')


def pick_program(module, mode: str | None) -> tuple[str, Callable]:
  """(name, program) of --mode (None: the module's first); ValueError naming the programs the module runs."""
  programs = experiment_programs(module)
  name = mode or next(iter(programs))
  if name not in programs:
    raise ValueError(f"{module.__name__} has no program '{name}'; it runs --mode {'|'.join(programs)}"
                     + ('; without --config, --mode convert and --mode generate need none' if name in
                        ('convert', 'generate') else ''))
  return name, programs[name]


def _import_experiment(name: str):
  if not name:
    raise ValueError('config.experiment is empty: it must name the experiment module, e.g. experiments.mmiu.experiment')
  try:
    return importlib.import_module(name)
  except ModuleNotFoundError as e:
    if e.name and name.startswith(e.name):
      raise ValueError(f'config.experiment={name!r}: no such module') from None
    raise


def _run(argv: list[str]) -> None:
  mode = _MODE.value
  if _CONFIG.value is None:
    if mode == 'generate':  # the generation CLI owns the arguments after `--`
      from mmjax.generate import cli
      sys.exit(cli.main(argv[1:] + (['--debug'] if _DEBUG.value else [])))
    if len(argv) > 1:
      raise app.UsageError(f'unexpected arguments: {argv[1:]}')
    if mode == 'convert':
      _convert()
      return
    raise app.UsageError('--config is required (without it: --mode convert, or --mode generate)')
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if not _WORKDIR.value and mode != 'compile':
    raise app.UsageError('--workdir is required with --config')
  config = _CONFIG.value
  name, program = pick_program(_import_experiment(config.experiment), mode)
  _maybe_initialize_distributed()
  logging.info('program %s, config:\n%s', name, config)
  print(json.dumps(program(config, _WORKDIR.value), indent=1, default=str))


def main(argv: list[str]) -> None:
  try:
    _run(argv)
  except USER_ERRORS as e:
    if _DEBUG.value:
      raise
    _fail(str(e))


if __name__ == '__main__':
  app.run(main, flags_parser=_parse_flags)
