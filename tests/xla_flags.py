"""The XLA:CPU flags that tests compile with (tests/conftest.py for in-process tests, tests/train/launcher.py for
the launch.py processes they start).

Compiling dominates almost every test here, so tests trade run time for compile time:
- `--xla_backend_optimization_level=0`: no LLVM optimisation passes.
- `--xla_cpu_use_fusion_emitters=false`: XLA's older loop emitters instead of the fusion emitters (MLIR), which at
  level 0 compile a train step in well under half the time: the AVESFormer smoke's step 23 -> 9 s, its optimiser
  update alone 6 -> 3 s, and runs it as fast (0.41 vs 0.40 s a step), on one core of a 2-core AMD EPYC, jax 0.10.2.
  At the default level 2 the older emitters compile slower (38 -> 45 s), so launch.py runs that train for hundreds
  of steps (optimize=True) keep XLA's defaults.
Matmuls and convolutions are library calls either way; elementwise code and reductions are XLA's own at any level
(no fast-math), so results stay within the numerics policy's 1e-5 between programs.

XLA aborts the process on a flag it does not know, and an XLA release may drop the older emitters: each flag beyond
the first is probed once per jaxlib version in a subprocess, and the answer is kept next to the compilation cache.
MMJAX_TEST_OPTIMIZE=1 keeps XLA's defaults.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

OPT_LEVEL_0 = '--xla_backend_optimization_level=0'
OLD_EMITTERS = '--xla_cpu_use_fusion_emitters=false'


def _jaxlib_version() -> str:
  try:
    return metadata.version('jaxlib')
  except metadata.PackageNotFoundError:
    return 'unknown'


def _known(flag: str, cache_dir: Path) -> bool:
  """Whether this jaxlib's XLA accepts `flag` (probed in a subprocess, which XLA aborts on an unknown flag)."""
  name = flag.lstrip('-').split('=')[0]
  record = cache_dir / f'xla-flag-{name}-jaxlib-{_jaxlib_version()}.json'
  try:
    return bool(json.loads(record.read_text())['known'])
  except (OSError, ValueError, KeyError):
    pass
  env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS=flag)
  probe = subprocess.run([sys.executable, '-c', 'import jax; jax.devices()'], env=env, capture_output=True,
                         timeout=300)
  known = probe.returncode == 0
  try:
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = record.with_suffix(f'.{os.getpid()}.tmp')
    tmp.write_text(json.dumps({'flag': flag, 'known': known}))
    tmp.replace(record)  # atomic: pytest-xdist workers may probe at the same time
  except OSError:
    pass
  return known


def fast_compile_flags(cache_dir: Path) -> list[str]:
  """The flags that make XLA:CPU compile fast (none with MMJAX_TEST_OPTIMIZE=1)."""
  if os.environ.get('MMJAX_TEST_OPTIMIZE') == '1':
    return []
  return [OPT_LEVEL_0] + [f for f in (OLD_EMITTERS,) if _known(f, cache_dir)]
