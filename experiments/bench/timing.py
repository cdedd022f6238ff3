"""Timing helper shared by the benchmark scripts."""
import statistics
import time
from collections.abc import Callable


def median_time(fn: Callable[[], object], steps: int, warmup: int) -> float:
  """Median wall seconds of `fn()` over `steps` calls after `warmup` calls.

  `fn` must block until its work is done (e.g. end with `jax.block_until_ready`).
  """
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(steps):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return statistics.median(times)
