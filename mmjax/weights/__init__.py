"""mmjax.weights: checkpoint import and export with explicit per-model key maps, and composed initialisation.

from_pretrained / save_pretrained: HF folders <-> (module, params, config).
load_into: fill a parameter tree from a workdir, an orbax params checkpoint, an HF/diffusers folder or a layout file.
initial_params: a model's start from a mapping of subtrees to sources, the rest initialised randomly.
read_workdir_params: the latest parameters of a trainer workdir (its EMA where kept).
"""
from mmjax import lazy_exports

# submodule -> the names it exports; a name's submodule is imported on its first use (mmjax.lazy_exports)
_EXPORTS = {
  'compose': ('initial_params',),
  'convert': ('hf_to_orbax', 'orbax_to_hf'),
  'key_map': ('KeyMap', 'ModelSpec', 'Target', 'Transform'),
  'load': ('load_into', 'open_source'),
  'pretrained': ('from_pretrained', 'save_pretrained'),
  'registry': ('DIFFUSERS_SPECS', 'LAYOUTS', 'MODEL_SPECS'),
  'source': ('WeightsFileError', 'WeightsMismatchError'),
  'workdir': ('WorkdirStep', 'read_workdir_params'),
}
__all__ = [name for names in _EXPORTS.values() for name in names]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
