"""Counting the engine's compilations, so that tests and logs can see whether bucketing works.

`jax.jit` retraces (and so recompiles) a function only for a new combination of static arguments and input shapes.
Each jitted engine function calls `record` from inside its traced body: that Python code runs once per trace,
never on a cache hit, so the counts are the number of compilations per function name. The log line says why a
compilation happens: the first call, which recorded shapes differ from the function's last compilation, or, with
the same shapes, that a static argument (adapter, filters, static model inputs) or the parameter tree changed.
"""
import collections

from absl import logging

_COUNTS: collections.Counter[str] = collections.Counter()
_LAST: dict[str, dict[str, object]] = {}


def record(name: str, **shapes: object) -> None:
  """Counts one trace of jitted function `name` and logs it with the static shapes it was traced for and why."""
  _COUNTS[name] += 1
  last = _LAST.get(name)
  if last is None:
    why = 'first compilation'
  else:
    changed = [f'{k} {last.get(k)} -> {v}' for k, v in shapes.items() if last.get(k) != v]
    why = ('new ' + ', '.join(changed) if changed else
           'same shapes: a static argument (adapter, filters, static model inputs) or the parameter tree changed')
  _LAST[name] = dict(shapes)
  logging.info('mmjax.generate: compiling %s (#%d) for %s (%s)', name, _COUNTS[name],
               ', '.join(f'{k}={v}' for k, v in shapes.items()), why)


def compile_counts() -> dict[str, int]:
  """{function name: compilations so far in this process}, e.g. {'prefill': 3, 'decode_loop': 2}."""
  return dict(_COUNTS)
