"""Generation with scanned layers (`scan_layers=True`, Qwen2 and Llama) equals the unscanned model: greedy tokens,
session forks and beam search, on the stacked [L, B, T, Hkv, D] cache that the scan reads and returns as it is."""
import dataclasses

import numpy as np
import pytest

from mmjax.generate import beam_search, generate, prefill
from mmjax.models.decoder import stack_layers
from mmjax.train.mesh import make_mesh
from mmjax.weights import from_pretrained
from tests.hf_models import LLAMA3_ROPE, WIDE, save_llama
from tests.numerics import assert_close_programs


@pytest.fixture(scope='module', params=['qwen2', 'llama3.1'])
def both(request, tiny, tmp_path_factory):
  """(unscanned module, params, scanned module, stacked params)."""
  if request.param == 'qwen2':
    _, module, params, _ = tiny
  else:
    directory = tmp_path_factory.mktemp('llama_scanned')
    save_llama(directory, num_key_value_heads=2, rope_parameters=LLAMA3_ROPE, **WIDE)
    module, params, _ = from_pretrained(directory)
  scanned = module.clone(config=dataclasses.replace(module.config, scan_layers=True))
  return module, params, scanned, stack_layers(params)


def _assert_same(got, want):
  assert [c.tokens for c in got] == [c.tokens for c in want]
  for g, w in zip(got, want):
    assert g.finish_reason == w.finish_reason
    assert_close_programs(g.logprobs, w.logprobs)


def test_scanned_generation_equals_unscanned(both, prompts):
  module, params, scanned, stacked = both
  kwargs = dict(max_new_tokens=8, eos_token_id=7)
  _assert_same([c for (c,) in generate(scanned, stacked, prompts, **kwargs)],
               [c for (c,) in generate(module, params, prompts, **kwargs)])

  sessions = [prefill(m, p, prompts[:2], max_new_tokens=16) for m, p in ((scanned, stacked), (module, params))]
  cfg = module.config
  # The scanned model's cache is stacked: layers first, then the (bucketed) rows.
  assert sessions[0].cache.keys.shape == (cfg.num_hidden_layers, 2, sessions[0].capacity, cfg.num_key_value_heads,
                                          cfg.head_dim)
  assert isinstance(sessions[1].cache.keys, tuple)
  _assert_same(*(s.decode(max_new_tokens=3) for s in sessions))
  forks = [s.select([1, 0, 1]) for s in sessions]
  assert forks[0].cache.keys.shape[1] == 4 and forks[0].cache.lengths.shape == (4,)  # 3 rows bucketed to 4
  _assert_same(*(f.decode(max_new_tokens=5) for f in forks))

  got, want = (beam_search(m, p, prompts[:2], num_beams=3, max_new_tokens=6) for m, p in ((scanned, stacked),
                                                                                          (module, params)))
  for g, w in zip(got, want):
    assert [h.tokens for h in g] == [h.tokens for h in w]
    assert_close_programs(np.array([h.score for h in g]), np.array([h.score for h in w]))


def test_scanned_sharded_generation_equals_one_device(tiny, prompts):
  _, module, params, _ = tiny
  scanned = module.clone(config=dataclasses.replace(module.config, scan_layers=True))
  stacked = stack_layers(params)
  mesh = make_mesh({'data': 4, 'tensor': 2})
  session = prefill(scanned, stacked, prompts, max_new_tokens=8, mesh=mesh)
  spec = session.cache.keys.sharding.spec
  assert spec[1] == 'data' and spec[3] == 'tensor', spec  # rows over data, KV heads over tensor, layers whole
  want = generate(scanned, stacked, prompts, max_new_tokens=8)
  _assert_same(session.decode(max_new_tokens=8), [c for (c,) in want])
