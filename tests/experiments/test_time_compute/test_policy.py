"""EnginePolicy and EngineVerifier on a tiny random Qwen2 with a character tokenizer: a search's rounds (forks,
greedy rollouts, returns to earlier candidates) give the same steps with cache reuse as re-prefilling each path,
reuse never re-prefills a path it returned, and the verifier reads the reward model at each step's end."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.test_time_compute.policy import EnginePolicy, EngineVerifier
from mmjax.models.prm import from_decoder, from_decoder_params
from mmjax.models.qwen2 import Qwen2Config, Qwen2ForCausalLM
from tests.numerics import assert_close_programs

CHARS = '0123456789+=\n'  # ids 0-12; EOS is 13
EOS = len(CHARS)
QUESTIONS = ['1+2=\n', '21+1=\n']


def encode(text: str) -> list[int]:
  return [CHARS.index(c) for c in text]


def decode(ids) -> str:
  return ''.join(CHARS[i] for i in ids)


@pytest.fixture(scope='module')
def decoder():
  config = Qwen2Config(vocab_size=len(CHARS) + 1, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
  module = Qwen2ForCausalLM(config)
  params = jax.tree.map(lambda x: 4 * x, nn.unbox(module.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))))
  # Less EOS and more newlines than a random model gives: steps that end at "\n\n", at EOS and at the budget.
  head = params['params']['lm_head']['kernel']
  head = head.at[:, EOS].multiply(0.5).at[:, CHARS.index('\n')].multiply(1.8)
  return module, {**params['params'], 'lm_head': {'kernel': head}}


def _search(decoder, reuse_cache: bool):
  """Rounds of a beam search with a one-step lookahead: returns (every round's steps, the policy)."""
  policy = EnginePolicy(*decoder, encode=encode, decode=decode, questions=QUESTIONS, eos_token_id=EOS,
                        max_step_tokens=8, temperature=1.0, seed=5, reuse_cache=reuse_cache)
  requests = [(0, ())] * 2 + [(1, ())] * 2
  rounds = [policy.extend(requests)]
  candidates = [(q, s + (step.text,)) for (q, s), step in zip(requests, rounds[-1])]
  rounds.append(policy.extend(candidates, greedy=True))  # the rollouts
  rollouts = [(q, s + (step.text,)) for (q, s), step in zip(candidates, rounds[-1])]
  survivors = [candidates[i] for i in (3, 0, 0, 2)] + [rollouts[1]]  # forked, reordered, and a rollout kept
  rounds.append(policy.extend(survivors))
  return rounds, policy


def test_cache_reuse_equals_reprefilling(decoder):
  got, policy = _search(decoder, reuse_cache=True)
  want, fresh = _search(decoder, reuse_cache=False)
  assert got == want
  steps = [s for r in got for s in r]
  assert any(s.finished for s in steps) and any(s.text.endswith('\n\n') for s in steps)
  assert any(len(s.text) == 8 for s in steps)  # the step budget
  for s in steps:
    assert '\n\n' not in s.text[:-2] and (not s.text.endswith('\n\n') or not s.finished)
  # Reuse prefilled the two prompts once, then read every history from the cache; re-prefilling read none.
  rounds = policy.generator.rounds
  assert rounds[0].prefilled == len(encode(QUESTIONS[0] + QUESTIONS[1])) and rounds[0].reused == 0
  assert all(r.prefilled == 0 and r.reused > 0 for r in rounds[1:] if r.generated)
  assert all(r.reused == 0 for r in fresh.generator.rounds)
  assert len({s.text for s in got[0]}) > 1, 'samples drew the same step'


def test_greedy_rollouts_repeat_and_unknown_paths_are_prefilled(decoder):
  policy = EnginePolicy(*decoder, encode=encode, decode=decode, questions=QUESTIONS, eos_token_id=EOS,
                        max_step_tokens=8, seed=1)
  twice = policy.extend([(1, ('2\n',)), (1, ('2\n',))], greedy=True)
  assert twice[0] == twice[1]
  assert policy.generator.rounds[-2].prefilled == len(encode(QUESTIONS[1] + '2\n'))  # one row for both
  with pytest.raises(ValueError, match='names question 2; this policy holds 2'):
    policy.extend([(2, ())])


def test_verifier_reads_each_step_end(decoder):
  module, params = decoder
  model = from_decoder(module)
  reward = from_decoder_params(model, params, jax.random.key(3))
  requests = [(0, ('3\n\n', '11=3\n\n', '3')), (1, ()), (1, ('2\n\n',))]
  verifier = EngineVerifier(model, reward, encode=encode, questions=QUESTIONS, max_rows=2)
  got = verifier.score(requests)
  assert [len(s) for s in got] == [3, 0, 1]
  for (q, steps), scores in zip(requests, got):
    for k in range(len(steps)):
      ids = np.array([encode(QUESTIONS[q] + ''.join(steps[:k + 1]))], np.int32)
      assert_close_programs(np.float32(scores[k]), jax.nn.sigmoid(jax.jit(model.apply)({'params': reward},
                                                                                         ids)[0, -1]))
  outcome = EngineVerifier(model, reward, encode=encode, questions=QUESTIONS, outcome=True).score(requests)
  assert_close_programs(np.array([o for s in outcome for o in s]), np.array([got[0][-1], got[2][-1]]))
  assert all(0 < s < 1 for scores in got for s in scores)
