"""The reward model: its head read at step ends equals running it on each prefix alone, its trunk is the decoder's
(a head copied from an LM-head column gives that column's logits), the aggregations, and the BCE gradient."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.models.llama import LlamaConfig, LlamaForCausalLM
from mmjax.models.prm import aggregate, bce_loss, from_decoder, from_decoder_params, step_scores
from mmjax.models.qwen2 import Qwen2Config, Qwen2ForCausalLM
from tests.numerics import assert_close_programs

SIZES = dict(vocab_size=32, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2)


def _models(family: str):
  decoder = (Qwen2ForCausalLM(Qwen2Config(**SIZES)) if family == 'qwen2'
             else LlamaForCausalLM(LlamaConfig(**SIZES)))
  decoder_params = nn.unbox(decoder.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))['params'])
  decoder_params = jax.tree.map(lambda x: x * 10, decoder_params)  # spread the scores away from 0.5
  model = from_decoder(decoder)
  return decoder, decoder_params, model, from_decoder_params(model, decoder_params, jax.random.key(1))


@pytest.mark.parametrize('family', ['qwen2', 'llama'])
def test_scores_at_step_ends_equal_each_prefix_alone(family):
  _, _, model, params = _models(family)
  rng = np.random.default_rng(0)
  lengths = np.array([13, 7, 10])
  tokens = rng.integers(0, 32, (3, 16)).astype(np.int32)  # right padding past lengths is random on purpose
  ends = np.array([[2, 6, 12], [3, 6, 6], [9, 9, 9]], np.int32)
  got = np.asarray(step_scores(model, params, tokens, lengths, ends))
  assert np.all((got > 0) & (got < 1))
  # Each (row, step) prefix alone: its tokens up to the step's end, zero-padded, scored at its last position.
  pairs = [(b, k) for b in range(3) for k in range(3)]
  alone = np.zeros((len(pairs), 16), np.int32)
  for i, (b, k) in enumerate(pairs):
    alone[i, :ends[b, k] + 1] = tokens[b, :ends[b, k] + 1]
  mask = np.arange(16)[None, :] <= np.array([ends[b, k] for b, k in pairs])[:, None]
  full = jax.jit(model.apply)({'params': params}, alone, attention_mask=mask)
  want = [jax.nn.sigmoid(full[i, ends[b, k]]) for i, (b, k) in enumerate(pairs)]
  assert_close_programs(got.reshape(-1), np.array(want))


def test_the_trunk_is_the_decoders():
  """A head copied from LM-head column v (bias 0) reads the decoder's logit of token v, with the decoder's params."""
  decoder, decoder_params, model, params = _models('qwen2')
  assert 'lm_head' not in params and set(decoder_params) - set(params) == {'lm_head'}
  v = 5
  params = {**params, 'reward_head': {'kernel': decoder_params['lm_head']['kernel'][:, v:v + 1],
                                      'bias': jnp.zeros(1)}}
  tokens = np.random.default_rng(1).integers(0, 32, (2, 9)).astype(np.int32)
  want = jax.jit(decoder.apply)({'params': decoder_params}, tokens).logits[..., v]
  assert_close_programs(jax.jit(model.apply)({'params': params}, tokens), want)


def test_aggregations():
  rng = np.random.default_rng(2)
  scores = rng.uniform(0.05, 0.95, (4, 5))
  counts = np.array([5, 3, 1, 0])
  mask = np.arange(5)[None, :] < counts[:, None]
  for how, reduce in (('last', lambda s: s[-1]), ('min', np.min), ('prod', np.prod)):
    got = np.asarray(aggregate(scores, mask, how))
    want = [reduce(scores[b, :c]) for b, c in enumerate(counts[:3])]
    assert_close_programs(got[:3], np.array(want, np.float32))
    assert got[3] == (0.0 if how == 'last' else 1.0)
  with pytest.raises(ValueError, match='unknown aggregation'):
    aggregate(scores, mask, 'mean')


def test_bce_on_soft_targets():
  """d loss / d logit = (sigmoid(logit) - target) / steps on real steps and 0 elsewhere; the loss is smallest at
  logit = log(t / (1 - t)); the gradient reaches the trunk's parameters."""
  rng = np.random.default_rng(3)
  logits = rng.normal(size=(3, 4)).astype(np.float32)
  targets = rng.uniform(0.1, 0.9, (3, 4)).astype(np.float32)
  mask = np.array([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 0, 0]], bool)
  grad = np.asarray(jax.grad(bce_loss)(logits, targets, mask))
  assert_close_programs(grad, np.where(mask, (1 / (1 + np.exp(-logits)) - targets) / mask.sum(), 0))
  best = np.log(targets / (1 - targets))
  assert bce_loss(best, targets, mask) < bce_loss(best + 0.1, targets, mask)
  assert bce_loss(best, targets, mask) < bce_loss(best - 0.1, targets, mask)
  _, _, model, params = _models('qwen2')
  tokens = rng.integers(0, 32, (3, 8)).astype(np.int32)
  ends = np.array([[1, 3, 7, 7], [2, 2, 2, 2], [4, 6, 6, 6]], np.int32)

  def loss(p):
    return bce_loss(model.apply({'params': p}, tokens, read_at=ends), targets, mask)

  grads = jax.jit(jax.grad(loss))(params)
  norms = {k: float(jnp.sqrt(sum(jnp.sum(g ** 2) for g in jax.tree.leaves(v)))) for k, v in grads.items()}
  assert all(np.isfinite(n) and n > 0 for n in norms.values()), norms
