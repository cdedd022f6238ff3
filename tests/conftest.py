"""Test-wide setup: 8 virtual CPU devices so sharding tests run anywhere, XLA:CPU flags that compile fast
(tests/xla_flags.py), and a persistent compilation cache.

Everything here is set through the environment before jax is imported anywhere in the test process, so the
subprocesses that tests launch (launch.py, the generation CLI, multi-process training) inherit it too.

The cache lives in <repo>/.pytest_cache/jax (ignored by git, emptied by --cache-clear), one folder per CPU model
and instruction-set flags: an executable compiled for one x86-64 CPU may use instructions another lacks, and a
checkout can be shared between machines. A second run of the suite then skips most XLA compilation. pytest-xdist
workers and the subprocesses share the folder: an entry read while another process is still writing it fails to
load, which JAX reports as a warning and answers by compiling. The folder has no size bound: with one, JAX rescans
every entry on each write. Old entries pile up as the code changes; --cache-clear (or deleting the folder) empties
it.
"""
import hashlib
import os
import platform
from pathlib import Path

from tests.xla_flags import fast_compile_flags

_CACHE_ROOT = Path(__file__).resolve().parents[1] / ".pytest_cache" / "jax"

os.environ.setdefault("JAX_PLATFORMS", "cpu")
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
  _flags += " --xla_force_host_platform_device_count=8"
# Compiling dominates almost every test here: tests/xla_flags.py chooses the flags that make XLA:CPU compile fast
# (and says what they save); a flag already in XLA_FLAGS is left as it is.
for _flag in fast_compile_flags(_CACHE_ROOT):
  if _flag.lstrip("-").split("=")[0] not in _flags:
    _flags += f" {_flag}"
os.environ["XLA_FLAGS"] = _flags.strip()


def _cpu_signature() -> str:
  """A short hash of this CPU's model name and feature flags (Linux /proc/cpuinfo), else of platform.processor()."""
  try:
    lines = Path("/proc/cpuinfo").read_text().splitlines()
    text = "\n".join(sorted({line for line in lines if line.startswith(("model name", "flags"))}))
  except OSError:
    text = platform.processor()
  return hashlib.sha256(f"{platform.machine()}\n{text}".encode()).hexdigest()[:12]


_cache = _CACHE_ROOT / f"cpu-{_cpu_signature()}"
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(_cache))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
