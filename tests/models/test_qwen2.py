"""Qwen2ForCausalLM vs transformers (tied/untied, left padding), inputs_embeds, remat, config parsing, errors."""
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.models import Qwen2Config, Qwen2ForCausalLM, init_cache
from mmjax.weights import from_pretrained
from tests.hf_models import qwen2_logits, save_qwen2
from tests.numerics import assert_close_programs, assert_close_torch

P = jax.sharding.PartitionSpec


@pytest.fixture(scope='module', params=[False, True], ids=['untied', 'tied'])
def qwen2(request, tmp_path_factory):
  """(HF model, mmjax module, params, jitted run(params, ids, mask) -> logits) for one random checkpoint."""
  directory = tmp_path_factory.mktemp(f'qwen2_{request.param}')
  reference = save_qwen2(directory, tied=request.param)
  module, params, config = from_pretrained(directory)
  assert config.tie_word_embeddings == request.param and ('lm_head' in params) != request.param
  run = jax.jit(lambda p, ids, mask: module.apply({'params': p}, ids, attention_mask=mask).logits)
  return reference, module, params, run


def test_logits_match_transformers(qwen2):
  reference, _, params, run = qwen2
  ids = np.random.default_rng(0).integers(0, 128, (2, 9))
  logits = run(params, ids, None)
  assert logits.dtype == jnp.float32
  assert_close_torch(logits, qwen2_logits(reference, ids))


def test_left_padded_logits_match_transformers(qwen2):
  reference, _, params, run = qwen2
  ids = np.random.default_rng(1).integers(0, 128, (3, 8))
  mask = (np.arange(8)[None, :] >= np.array([[0], [3], [6]])).astype(np.int64)
  logits = np.asarray(run(params, ids, mask))
  real = mask.astype(bool)
  assert_close_torch(logits[real], qwen2_logits(reference, ids, mask)[real])
  # Left padding changes nothing for the real tokens: row 1 equals its unpadded prompt.
  assert_close_programs(logits[1, 3:], run(params, ids[1:2, 3:], None)[0])


def test_inputs_embeds_and_embed_method(qwen2):
  _, module, params, run = qwen2
  ids = jnp.asarray(np.random.default_rng(2).integers(0, 128, (2, 5)))
  embeds = module.apply({'params': params}, ids, method='embed')
  assert embeds.shape == (2, 5, 64)
  from_embeds = jax.jit(lambda p, e: module.apply({'params': p}, inputs_embeds=e).logits)
  assert_close_programs(from_embeds(params, embeds), run(params, ids, None))


def test_logits_at_selects_positions(qwen2):
  _, module, params, run = qwen2
  ids = jnp.asarray(np.random.default_rng(4).integers(0, 128, (2, 7)))
  at = jnp.asarray([[6], [2]])
  picked = jax.jit(lambda p, ids, at: module.apply({'params': p}, ids, logits_at=at).logits)(params, ids, at)
  assert picked.shape == (2, 1, 128)
  assert_close_programs(picked, jnp.take_along_axis(run(params, ids, None), at[:, :, None], axis=1))


def test_remat_gives_the_same_logits(qwen2):
  _, module, params, run = qwen2
  ids = jnp.asarray(np.random.default_rng(3).integers(0, 128, (2, 5)))
  remat = module.clone(remat_policy='full')
  remat_logits = lambda p: remat.apply({'params': p}, ids).logits  # noqa: E731
  assert_close_programs(jax.jit(remat_logits)(params), run(params, ids, None))
  jaxpr = str(jax.make_jaxpr(remat_logits)(params))
  assert len(re.findall(r'= (?:remat\w*|checkpoint)\[', jaxpr)) == 2


def test_forward_mode_matches_reverse_mode(qwen2):
  """jvp along random parameter and embedding tangents, and jacfwd in the embeddings, against reverse mode."""
  _, module, params, _ = qwen2
  rng = np.random.default_rng(5)
  random = lambda x: jnp.asarray(rng.standard_normal(x.shape), x.dtype)  # noqa: E731
  embeds = module.apply({'params': params}, jnp.asarray(rng.integers(0, 128, (1, 3))), method='embed')
  logits = lambda p, e: module.apply({'params': p}, inputs_embeds=e).logits  # noqa: E731
  tangents, cotangent = (jax.tree.map(random, params), random(embeds)), jnp.asarray(rng.standard_normal((1, 3, 128)))

  @jax.jit
  def both_modes(params, embeds):
    _, forward = jax.jvp(logits, (params, embeds), tangents)
    _, vjp = jax.vjp(logits, params, embeds)
    # <J t, c> two ways: the jvp's tangent against c, and t against the vjp's cotangent J^T c.
    adjoint = sum(jnp.vdot(t, g) for t, g in zip(jax.tree.leaves(tangents), jax.tree.leaves(vjp(cotangent))))
    in_embeds = lambda e: logits(params, e)  # noqa: E731
    return jnp.vdot(forward, cotangent), adjoint, jax.jacfwd(in_embeds)(embeds), jax.jacrev(in_embeds)(embeds)

  forward, adjoint, jacfwd, jacrev = both_modes(params, embeds)
  assert_close_programs(forward, adjoint)
  assert_close_programs(jacfwd, jacrev)


def test_parameter_axes():
  config = Qwen2Config(vocab_size=32, hidden_size=16, intermediate_size=24, num_hidden_layers=1,
                       num_attention_heads=4, num_key_value_heads=2)
  specs = nn.get_partition_spec(jax.eval_shape(Qwen2ForCausalLM(config).init, jax.random.key(0),
                                               jnp.zeros((1, 2), jnp.int32)))['params']
  assert specs['embed_tokens']['embedding'] == P('vocab', 'embed')
  assert specs['lm_head']['kernel'] == P('embed', 'vocab')
  attn = specs['layers_0']['self_attn']
  assert attn['k_proj'] == {'kernel': P('embed', 'kv_heads', 'head_dim'), 'bias': P('kv_heads', 'head_dim')}
  assert attn['o_proj'] == {'kernel': P('heads', 'head_dim', 'embed')}
  assert specs['layers_0']['mlp']['down_proj']['kernel'] == P('mlp', 'embed')
  assert specs['norm']['scale'] == P('embed')


def test_config_from_hf_dict():
  base = dict(vocab_size=32, hidden_size=16, intermediate_size=24, num_hidden_layers=1, num_attention_heads=4)
  assert Qwen2Config.from_hf_dict({**base, 'rope_theta': 5.0}).rope_theta == 5.0  # transformers 4.x
  v5 = Qwen2Config.from_hf_dict({**base, 'rope_parameters': {'rope_type': 'default', 'rope_theta': 7.0}})
  assert v5.rope_theta == 7.0 and v5.num_key_value_heads == 4
  assert Qwen2Config.from_hf_dict(v5.to_hf_dict()) == v5
  with pytest.raises(ValueError, match="lacks \\['vocab_size'\\]"):
    Qwen2Config.from_hf_dict({k: v for k, v in base.items() if k != 'vocab_size'})
  with pytest.raises(ValueError, match="use_sliding_window=true; rope type 'yarn'"):
    Qwen2Config.from_hf_dict({**base, 'use_sliding_window': True, 'rope_scaling': {'type': 'yarn'}})
  with pytest.raises(ValueError, match='multiple of num_key_value_heads'):
    Qwen2Config.from_hf_dict({**base, 'num_key_value_heads': 3})


def test_input_errors(qwen2):
  _, module, params, _ = qwen2
  ids = jnp.zeros((2, 4), jnp.int32)
  apply = lambda *args, **kwargs: module.apply({'params': params}, *args, **kwargs)  # noqa: E731
  with pytest.raises(ValueError, match='exactly one'):
    apply(ids, inputs_embeds=jnp.zeros((2, 4, 64)))
  with pytest.raises(ValueError, match='attention_mask must be'):
    apply(ids, attention_mask=jnp.ones((2, 3)))
  with pytest.raises(ValueError, match='inputs_embeds'):
    apply(inputs_embeds=jnp.zeros((2, 4, 32)))
  with pytest.raises(ValueError, match='does not fit'):
    apply(ids, cache=init_cache(module.config, 2, 3))
  with pytest.raises(ValueError, match='cache holds'):
    apply(ids, cache=init_cache(module.config, 1, 8))
