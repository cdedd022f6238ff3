"""mmjax: JAX/Flax reimplementations of twelve 2024 multimodal papers."""
from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping, Sequence


def lazy_exports(package: str, exports: Mapping[str, Sequence[str]]) -> tuple[Callable, Callable]:
  """(`__getattr__`, `__dir__`) for a package that exports its submodules' names without importing them (PEP 562).

  `exports` maps a submodule's name (relative to `package`) to the names it provides: `from mmjax.train import
  Experiment` imports mmjax.train.experiment and what it needs, not every submodule of mmjax.train (and so not
  orbax, sklearn or every model). A name that is also its submodule's name (mmjax.generate.generate) is imported
  at once: importing that submodule later would bind the module in the function's place.
  """
  module = sys.modules[package]
  where = {name: sub for sub, names in exports.items() for name in names}
  for name, sub in where.items():
    if name == sub:
      setattr(module, name, getattr(importlib.import_module(f'{package}.{sub}'), name))

  def __getattr__(name: str):
    if name not in where:
      raise AttributeError(f'module {package!r} has no attribute {name!r}')
    value = getattr(importlib.import_module(f'{package}.{where[name]}'), name)
    setattr(module, name, value)
    return value

  def __dir__() -> list[str]:
    return sorted(set(vars(module)) | set(where))

  return __getattr__, __dir__
