"""initial_params: a tiny LLaVA-OneVision from separate SigLIP and Qwen2 HF folders plus a random projector, on the
trainer's shardings, without ever computing the full random init; regex keys, prefixes and the key errors."""
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.traverse_util import flatten_dict
from jax.sharding import AxisType, PartitionSpec as P

from mmjax.models.llava_onevision import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration
from mmjax.models.qwen2 import Qwen2Config
from mmjax.models.siglip import SiglipVisionConfig
from mmjax.train.sharding import DEFAULT_RULES, logical_shardings, rules_from_config
from mmjax.weights import from_pretrained, initial_params, save_pretrained
from mmjax.weights.compose import partial_init
from tests.hf_models import save_qwen2, save_siglip

RANDOM = ('multi_modal_projector', 'image_newline')


@pytest.fixture(scope='module')
def folders(tmp_path_factory):
  root = tmp_path_factory.mktemp('compose')
  save_siglip(root / 'siglip', use_head=False)
  save_qwen2(root / 'qwen2', tied=False)
  return root


@pytest.fixture(scope='module')
def llava(folders):
  """(module, traced-only init_fn and its call log, abstract params on a (fsdp=4, tensor=2) mesh)."""
  vision = SiglipVisionConfig.from_hf_dict(json.loads((folders / 'siglip' / 'config.json').read_text()))
  text = Qwen2Config.from_hf_dict(json.loads((folders / 'qwen2' / 'config.json').read_text()))
  module = LlavaOnevisionForConditionalGeneration(
      LlavaOnevisionConfig(vision_config=vision, text_config=text, image_token_index=126, video_token_index=127))
  calls = []

  def init_fn(rng):
    calls.append('traced' if isinstance(rng, jax.core.Tracer) else 'executed')
    return module.init(rng, jnp.zeros((1, 1), jnp.int32))['params']

  mesh = jax.make_mesh((4, 2), ('fsdp', 'tensor'), axis_types=(AxisType.Auto,) * 2)
  boxed = jax.eval_shape(init_fn, jax.random.key(0))
  shardings = logical_shardings(boxed, mesh, rules_from_config(DEFAULT_RULES, mesh))
  abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), nn.unbox(boxed),
                          shardings)
  return module, init_fn, calls, abstract


@pytest.fixture(scope='module')
def composed(folders, llava):
  """LLaVA stage 1's start: (params, how init_fn was called meanwhile)."""
  _, init_fn, calls, abstract = llava
  calls.clear()
  params = initial_params({'vision_tower': str(folders / 'siglip'), 'language_model': str(folders / 'qwen2')},
                          abstract, init_fn, jax.random.key(1))
  return params, list(calls)


def _equal(a, b):
  jax.tree.map(np.testing.assert_array_equal, a, b)


def test_llava_from_siglip_and_qwen2_folders(folders, llava, composed):
  _, _, _, abstract = llava
  params, calls = composed
  assert calls == ['traced']  # the init is traced once, for the projector, and never run eagerly
  _equal(params['vision_tower'], from_pretrained(folders / 'siglip')[1])
  _equal(params['language_model'], from_pretrained(folders / 'qwen2')[1])
  assert np.std(np.asarray(params['multi_modal_projector']['linear_2']['kernel'])) > 0
  placed = jax.tree.map(lambda x: x.sharding, params)
  assert placed == jax.tree.map(lambda a: a.sharding, abstract)
  assert params['language_model']['layers_0']['mlp']['gate_proj']['kernel'].sharding.spec == P('fsdp', 'tensor')


def test_the_random_part_compiles_without_the_rest_of_the_model(llava):
  """The program that draws the projector outputs its leaves only and holds no draw of the decoder, unlike the
  full init's program (the decoder's embedding table is the only 128 x 64 array)."""
  _, init_fn, _, abstract = llava
  flat = {path: jax.ShapeDtypeStruct(a.shape, a.dtype) for path, a in flatten_dict(abstract).items()}  # 1 device
  paths = [path for path in flat if path[0] in RANDOM]
  assert 'tensor<128x64xf32>' in jax.jit(lambda rng: nn.unbox(init_fn(rng))).lower(jax.random.key(1)).as_text()
  lowered = partial_init(init_fn, flat, paths).lower(jax.random.key(1))
  assert 'tensor<128x64xf32>' not in lowered.as_text() and 'tensor<128x64xui32>' not in lowered.as_text()
  compiled = lowered.compile()
  assert 'f32[128,64]' not in compiled.as_text() and 'u32[128,64]' not in compiled.as_text()
  wanted = sum(int(np.prod(flat[path].shape)) * 4 for path in paths)
  stats = compiled.memory_analysis()
  if stats is not None:  # not every backend reports it
    assert wanted <= stats.output_size_in_bytes < 1.1 * wanted


def test_regex_keys_and_prefixes_read_a_combined_checkpoint(llava, composed, tmp_path):
  """A LLaVA HF folder (exported from the composed model) as a source: a regex reads the same paths, a prefix a
  part of it; parameters outside both are drawn."""
  module, init_fn, _, abstract = llava
  start = composed[0]
  save_pretrained(tmp_path / 'llava', module, start)
  params = initial_params(
      {r'(multi_modal_projector|vision_tower/layers_\d+)': str(tmp_path / 'llava'),
       'language_model': {'source': str(tmp_path / 'llava'), 'prefix': 'language_model'}},
      abstract, init_fn, jax.random.key(2))
  _equal(params['multi_modal_projector'], start['multi_modal_projector'])
  _equal(params['vision_tower']['layers_1'], start['vision_tower']['layers_1'])
  _equal(params['language_model'], start['language_model'])
  redrawn = params['vision_tower']['post_layernorm']['bias'], params['vision_tower']['patch_embedding']['kernel']
  assert not np.array_equal(redrawn[1], start['vision_tower']['patch_embedding']['kernel'])
  assert redrawn[0].sharding == abstract['vision_tower']['post_layernorm']['bias'].sharding
  # The whole tree from one source.
  _equal(initial_params(str(tmp_path / 'llava'), abstract, init_fn, jax.random.key(3)), start)


def test_bad_keys_are_named(folders, llava):
  _, init_fn, _, abstract = llava
  siglip = str(folders / 'siglip')
  with pytest.raises(ValueError, match=r"key 'vision' matches no parameter \(subtrees at the top: image_newline, "
                                       r'language_model, multi_modal_projector, vision_tower\)'):
    initial_params({'vision': siglip}, abstract, init_fn, jax.random.key(0))
  with pytest.raises(ValueError, match=r"keys 'language_model' and 'language_model/layers_0' overlap: both fill "
                                       r'\d+ parameters, e\.g\. language_model/layers_0/'):
    initial_params({'language_model': str(folders / 'qwen2'), 'language_model/layers_0': siglip}, abstract,
                   init_fn, jax.random.key(0))
  with pytest.raises(ValueError, match=r"init_from\['vision_tower'\] must be a path or a mapping with a source"):
    initial_params({'vision_tower': {'path': siglip}}, abstract, init_fn, jax.random.key(0))
  with pytest.raises(ValueError, match="key 'vision_tower/layers_\\[' is neither a parameter subtree nor a regex"):
    initial_params({'vision_tower/layers_[': siglip}, abstract, init_fn, jax.random.key(0))
