"""Real-size programs lowered without devices (mmjax.train.aot): the 7B and 72B LLaVA-OneVision training steps with
scanned decoder layers on pod-size abstract meshes, and a 7B generation step (prefill + decode loop)."""
import re

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import PartitionSpec as P

from configs import llava_onevision
from mmjax.models.qwen2 import Qwen2Config, Qwen2ForCausalLM
from mmjax.train import aot

# Pod-size meshes: the configs' FSDP (7B) and FSDP x 8-way tensor parallelism (72B).
MESHES = {'7b': {'data': 2, 'fsdp': 16, 'tensor': 1}, '72b': {'data': 1, 'fsdp': 32, 'tensor': 8}}


def llava_ov_params(text: dict, vision: dict) -> int:
  """Parameters of LLaVA-OneVision from HF's architecture: Qwen2 (q/k/v bias), SigLIP without its head, the
  2-layer projector and image_newline."""
  e, inter, layers, vocab = (text[k] for k in ('hidden_size', 'intermediate_size', 'num_hidden_layers',
                                               'vocab_size'))
  kv = text['num_key_value_heads'] * e // text['num_attention_heads']
  layer = (e * e + e) + 2 * (e * kv + kv) + e * e + 3 * e * inter + 2 * e
  decoder = vocab * e * (1 if text['tie_word_embeddings'] else 2) + layers * layer + e
  w, vinter, patch = vision['hidden_size'], vision['intermediate_size'], vision['patch_size']
  vlayer = 4 * (w * w + w) + 2 * w * vinter + vinter + w + 4 * w
  tower = (patch * patch * 3 * w + w + (vision['image_size'] // patch) ** 2 * w
           + vision['num_hidden_layers'] * vlayer + 2 * w)
  return decoder + tower + (w * e + e) + (e * e + e) + e


def main_arg_shardings(text: str) -> list[str]:
  """The sdy sharding of every argument of the lowered module's main function, e.g. '{"fsdp"}, {}'."""
  header = text[text.index('func.func public @main('):]
  header = header[:header.index('\n')]
  return re.findall(r'%arg\d+: [^{]*\{sdy\.sharding = #sdy\.sharding<@mesh, \[(.*?)\]>', header)


def sdy_spec(sharding, rank: int) -> str:
  """The sdy text of a NamedSharding for an array of `rank` dimensions."""
  dims = []
  for entry in tuple(sharding.spec) + (None,) * (rank - len(sharding.spec)):
    axes = (entry,) if isinstance(entry, str) else tuple(entry or ())
    dims.append('{' + ', '.join(f'"{a}"' for a in axes) + '}')
  return ', '.join(dims)


def assert_arguments_sharded_as(lowered: aot.LoweredStep) -> None:
  """Every argument of the lowered program carries the sharding its ShapeDtypeStruct asked for."""
  leaves = jax.tree.leaves(lowered.args)
  got = main_arg_shardings(lowered.lowered.as_text())
  assert len(got) == len(leaves)
  expected = [sdy_spec(leaf.sharding, len(leaf.shape)) for leaf in leaves]
  mismatched = [(i, e, g) for i, (e, g) in enumerate(zip(expected, got)) if e != g]
  assert not mismatched, mismatched[:5]


@pytest.mark.parametrize('size', ['7b', '72b'])
def test_llava_onevision_training_step_lowers_at_real_size(size):
  config = llava_onevision.get_config(f'size={size},stage=ov')
  config.model.text.scan_layers = True
  lowered = aot.lower_train_step(config, MESHES[size])
  setup = lowered.setup
  assert dict(setup.mesh.shape) == MESHES[size]
  assert setup.num_params == llava_ov_params(llava_onevision.TEXT[size], llava_onevision.VISION)
  # The decoder's layers are one stacked tree: [L, E, H, D] over (-, fsdp, tensor, -) (the 7B mesh has no
  # tensor parallelism: its 'tensor' axis of size 1 shards nothing, but the rule still names it).
  q_proj = [s for path, s in jax.tree_util.tree_flatten_with_path(setup.param_shardings)[0]
            if 'language_model' in jax.tree_util.keystr(path) and 'q_proj' in jax.tree_util.keystr(path)
            and 'kernel' in jax.tree_util.keystr(path)]
  assert len(q_proj) == 1 and q_proj[0].spec == P(None, 'fsdp', 'tensor', None)
  state, batch = lowered.args
  assert batch['input_ids'].shape == (config.batch_size, config.data.max_length)
  assert_arguments_sharded_as(lowered)


def test_7b_generation_lowers_with_sharded_params_and_cache():
  text = dict(llava_onevision.TEXT['7b'], rope_theta=1e6, rms_norm_eps=1e-6)
  module = Qwen2ForCausalLM(Qwen2Config(**text), dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
  programs = aot.lower_generation(module, {'data': 2, 'fsdp': 1, 'tensor': 4}, rows=8, prompt_len=64,
                                  max_new_tokens=16)
  assert set(programs) == {'prefill', 'decode_loop'}
  params, tokens, _ = programs['prefill'].args
  assert params['embed_tokens']['embedding'].shape == (text['vocab_size'], text['hidden_size'])
  assert params['layers_0']['self_attn']['q_proj']['kernel'].sharding.spec[1] == 'tensor'
  assert tokens.sharding.spec == P(('data', 'fsdp'))
  assert_arguments_sharded_as(programs['prefill'])
  _, state = programs['decode_loop'].args
  keys = state.cache.keys[0] if isinstance(state.cache.keys, tuple) else state.cache.keys
  assert 'tensor' in jax.tree.leaves(tuple(keys.sharding.spec))  # KV heads over the tensor axis
  assert 'stablehlo.while' in programs['decode_loop'].lowered.as_text()
