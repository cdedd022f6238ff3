"""mmjax.weights: checkpoint import and export with explicit per-model key maps, and composed initialisation.

from_pretrained / save_pretrained: HF folders <-> (module, params, config).
load_into: fill a parameter tree from a workdir, an orbax params checkpoint, an HF/diffusers folder or a layout file.
initial_params: a model's start from a mapping of subtrees to sources, the rest initialised randomly.
read_workdir_params: the latest parameters of a trainer workdir (its EMA where kept).
"""
from mmjax.weights.compose import initial_params
from mmjax.weights.convert import hf_to_orbax, orbax_to_hf
from mmjax.weights.key_map import KeyMap, ModelSpec, Target, Transform
from mmjax.weights.load import load_into, open_source
from mmjax.weights.pretrained import from_pretrained, save_pretrained
from mmjax.weights.registry import DIFFUSERS_SPECS, LAYOUTS, MODEL_SPECS
from mmjax.weights.source import WeightsFileError, WeightsMismatchError
from mmjax.weights.workdir import WorkdirStep, read_workdir_params

__all__ = ['DIFFUSERS_SPECS', 'LAYOUTS', 'MODEL_SPECS', 'KeyMap', 'ModelSpec', 'Target', 'Transform',
           'WeightsFileError', 'WeightsMismatchError', 'WorkdirStep', 'from_pretrained', 'hf_to_orbax',
           'initial_params', 'load_into', 'open_source', 'orbax_to_hf', 'read_workdir_params', 'save_pretrained']
