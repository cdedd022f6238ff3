"""Counting the engine's compilations, so that tests and logs can see whether bucketing works.

`jax.jit` retraces (and so recompiles) a function only for a new combination of static arguments and input shapes.
Each jitted engine function calls `record` from inside its traced body: that Python code runs once per trace,
never on a cache hit, so the counts are the number of compilations per function name.
"""
import collections

from absl import logging

_COUNTS: collections.Counter[str] = collections.Counter()


def record(name: str, **shapes: object) -> None:
  """Counts one trace of jitted function `name` and logs it with the static shapes it was traced for."""
  _COUNTS[name] += 1
  logging.info('mmjax.generate: compiling %s (#%d) for %s', name, _COUNTS[name],
               ', '.join(f'{k}={v}' for k, v in shapes.items()))


def compile_counts() -> dict[str, int]:
  """{function name: compilations so far in this process}, e.g. {'prefill': 3, 'decode_loop': 2}."""
  return dict(_COUNTS)
