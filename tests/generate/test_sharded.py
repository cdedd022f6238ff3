"""Generation on the 8-device CPU mesh (tensor and data parallel) equals generation on one device."""
import jax
import numpy as np

from mmjax.generate import beam_search, generate, prefill
from mmjax.train.mesh import make_mesh
from tests.numerics import assert_close_programs


def test_sharded_generation_equals_one_device(tiny, prompts):
  _, module, params, _ = tiny
  mesh = make_mesh({'data': 4, 'tensor': 2})  # 4 prompt rows over data, the 2 KV heads over tensor
  kwargs = dict(max_new_tokens=8, eos_token_id=7)
  want = generate(module, params, prompts, **kwargs)
  got = generate(module, params, prompts, mesh=mesh, **kwargs)
  assert [c.tokens for (c,) in got] == [c.tokens for (c,) in want]
  for (g,), (w,) in zip(got, want):
    assert_close_programs(g.logprobs, w.logprobs)
  session = prefill(module, params, prompts, max_new_tokens=8, mesh=mesh)
  keys = session.cache.keys[0]
  assert keys.sharding.spec[0] == 'data' and keys.sharding.spec[2] == 'tensor', keys.sharding
  specs = [leaf.sharding.spec for leaf in jax.tree.leaves(session.params)]
  assert sum('tensor' in spec for spec in specs) >= 4, specs  # q/k/v/o, mlp and vocab kernels are split
  assert [h.tokens for h in beam_search(module, params, prompts[:1], num_beams=2, max_new_tokens=4, mesh=mesh)[0]] \
      == [h.tokens for h in beam_search(module, params, prompts[:1], num_beams=2, max_new_tokens=4)[0]]
  assert np.isfinite(np.asarray(session.logits)).all()
