"""Running launch.py in fresh processes, as a user would."""
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMOKE = 'configs/vit_digits.py:variant=smoke'


def launch_env(devices: int = 1) -> dict:
  env = dict(os.environ)
  env['JAX_PLATFORMS'] = 'cpu'
  env['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={devices}'
  env['PYTHONUNBUFFERED'] = '1'
  return env


def launch_args(workdir, *flags, config=SMOKE):
  return [sys.executable, 'launch.py', f'--config={config}', f'--workdir={workdir}',
          '--config.progress_bar=False', *flags]


def run_launch(workdir, *flags, devices=1, timeout=300, config=SMOKE) -> subprocess.CompletedProcess:
  return subprocess.run(launch_args(workdir, *flags, config=config), cwd=REPO, env=launch_env(devices),
                        capture_output=True, text=True, timeout=timeout)


def start_launch(workdir, *flags, devices=1, config=SMOKE, log=None) -> subprocess.Popen:
  return subprocess.Popen(launch_args(workdir, *flags, config=config), cwd=REPO, env=launch_env(devices),
                          stdout=log or subprocess.DEVNULL, stderr=subprocess.STDOUT, text=True)
