"""Running launch.py in fresh processes, as a user would."""
import os
import subprocess
import sys
from pathlib import Path

from tests.xla_flags import fast_compile_flags

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMOKE = 'configs/vit_digits.py:variant=smoke'
# The runs here take a few tiny steps, so compiling dominates them: they compile with the flags of
# tests/xla_flags.py (the flags are part of the compilation cache key). A run of hundreds of steps (the LLaVA smoke
# run) passes optimize=True and keeps XLA's defaults.
FAST_COMPILE = ' '.join(fast_compile_flags(Path(REPO) / '.pytest_cache' / 'jax'))


def launch_env(devices: int = 1, optimize: bool = False) -> dict:
  env = dict(os.environ)
  env['JAX_PLATFORMS'] = 'cpu'
  env['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={devices}' + ('' if optimize else f' {FAST_COMPILE}')
  env['PYTHONUNBUFFERED'] = '1'
  return env


def launch_args(workdir, *flags, config=SMOKE):
  return [sys.executable, 'launch.py', f'--config={config}', f'--workdir={workdir}',
          '--config.progress_bar=False', *flags]


def run_launch(workdir, *flags, devices=1, timeout=300, config=SMOKE, optimize=False) -> subprocess.CompletedProcess:
  return subprocess.run(launch_args(workdir, *flags, config=config), cwd=REPO, env=launch_env(devices, optimize),
                        capture_output=True, text=True, timeout=timeout)


def start_launch(workdir, *flags, devices=1, config=SMOKE, log=None) -> subprocess.Popen:
  return subprocess.Popen(launch_args(workdir, *flags, config=config), cwd=REPO, env=launch_env(devices),
                          stdout=log or subprocess.DEVNULL, stderr=subprocess.STDOUT, text=True)
