"""SENSE training: the word tokenizer, prompt-masked SFT, and DPO's step-0 loss (log 2) and logged rewards on the
mutator's pairs. The learning smoke (DPO above SFT on held-out execution accuracy) is in test_learning.py."""
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.sense import get_config
from experiments.sense import dpo, experiment, train
from experiments.sense.tokenizer import WordTokenizer, load_word_tokenizer
from mmjax.weights.workdir import read_workdir_params

SEED = 0  # config.seed: the world, the shuffle, the init and the mutator


def test_word_tokenizer_round_trips_and_spells_unseen_words(tmp_path):
  texts = ['SELECT name FROM customers WHERE age > 30', "SELECT city FROM customers WHERE name = 'Ada Stone'"] * 2
  tok = WordTokenizer.build(texts)
  assert tok.vocab[:3] == ['<pad>', '<eos>', '<unk>'] and WordTokenizer.build(texts).vocab == tok.vocab
  seen = 'SELECT name FROM customers WHERE age > 30'
  assert len(tok.encode(seen)) == 8 and tok.decode(tok.encode(seen)) == seen
  unseen = "SELECT zebra FROM farms WHERE weight >= 7\n-- done"
  assert tok.decode(tok.encode(unseen)) == unseen and len(tok.encode(unseen)) > len(unseen.split())
  assert tok.decode(tok.encode('SELECT é') + [tok.eos_id, tok.pad_id]) == 'SELECT ?'
  assert load_word_tokenizer(tok.save(str(tmp_path / 't.json'))).vocab == tok.vocab


def test_sft_loss_reads_only_the_response():
  config = get_config('variant=smoke,stage=sft')
  model = train.build_model(config, vocab_size=50)
  params = train.init_fn(model)(jax.random.key(0))
  prompt, response = [5, 6, 7, 8], [9, 10, 1]
  tokens, mask = train.pack_row(prompt, response, 12, 0)
  assert mask.tolist() == [0] * 4 + [1] * 3 + [0] * 5
  loss_fn = jax.jit(train.sft_loss(model))
  batch = {'tokens': jnp.asarray(tokens[None]), 'mask': jnp.asarray(mask[None])}
  loss, aux = loss_fn(params, batch, None, 0)
  logp = jax.nn.log_softmax(model.apply({'params': params}, batch['tokens']).logits[0])
  expected = -np.mean([logp[t - 1, tokens[t]] for t in range(4, 7)])
  np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
  assert float(aux['target_tokens']) == 3
  other = batch | {'tokens': batch['tokens'].at[0, 7:].set(3)}  # padding changes nothing
  np.testing.assert_allclose(float(loss_fn(params, other, None, 0)[0]), float(loss), rtol=1e-6)
  tok = WordTokenizer.build(['a b'])
  prompt_ids, response_ids = train.encode_pair(tok, 'x ' * 50, 'a b', 8)  # the prompt loses its oldest tokens
  assert response_ids == tok.encode('a b') + [tok.eos_id] and prompt_ids == tok.encode('x ' * 50)[-5:]
  assert train.encode_pair(tok, 'x', 'a b ' * 4, 8) is None


def _stage(stage, workdir, **over):
  config = get_config(f'variant=smoke,stage={stage}')
  config.seed = SEED
  config.update(over)
  return config, experiment.run_train(config, workdir)


# A tiny world and a few steps: the mechanics of both stages (the learning smoke is test_learning.py's).
TINY = dict(smoke={'n_domains': 3, 'n_parents': 8, 'per_template': 1}, batch_size=8, log_every=1, ckpt_every=2)
# Plain DPO on the mutator's pairs (the smoke's defaults train DPO+NLL with anchors on the policy's own samples)
PLAIN_DPO = dict(pairs_from='mutator', n_samples=8, pairs_per_question=4, rejected_must_run=False, nll_weight=0.0,
                 anchor_weight=0.0)


@pytest.fixture(scope='module')
def tiny_runs(tmp_path_factory):
  """(dpo config, sft workdir, dpo workdir) of 2 SFT steps, then 2 DPO steps from them."""
  root = tmp_path_factory.mktemp('sense_train')
  _, out = _stage('sft', str(root / 'sft'), total_steps=2, **TINY)
  assert out['step'] == 2
  config, out = _stage('dpo', str(root / 'dpo'), total_steps=2, init_from=str(root / 'sft'), dpo=PLAIN_DPO, **TINY)
  assert out['step'] == 2
  return config, str(root / 'sft'), str(root / 'dpo')


def test_dpo_starts_at_log_2_and_logs_rewards(tiny_runs):
  config, sft_dir, dpo_dir = tiny_runs
  exp = dpo.dpo_experiment(config, dpo_dir)  # reads pairs.jsonl back: the reference log-probs of the run
  tok = train.tokenizer_for(config, dpo_dir)
  model = train.build_model(config, tok.vocab_size)
  params, _ = read_workdir_params(sft_dir, train.abstract_params(model))
  batch = next(iter(exp.train_data))
  loss, metrics = jax.jit(exp.loss_fn)(params, batch, None, 0)
  assert abs(float(loss) - math.log(2)) < 1e-5, float(loss)  # reference (generate.score) == policy (forward)
  assert abs(float(metrics['reward_margin'])) < 1e-5
  stats = json.loads(open(f'{dpo_dir}/data_stats.json').read())
  pairs = [json.loads(line) for line in open(f'{dpo_dir}/pairs.jsonl')]
  assert stats['pairs'] == len(pairs) > 0 and stats['samples'] == stats['questions'] * config.dpo.n_samples
  assert all(p['chosen'] != p['rejected'] and p['ref_chosen'] < 0 and p['ref_rejected'] < 0 for p in pairs)
  rows = [json.loads(line) for line in open(f'{dpo_dir}/metrics.jsonl')]
  logged = [r for r in rows if 'reward_accuracy' in r]
  assert [r['step'] for r in logged] == [1, 2]
  assert {'loss', 'reward_accuracy', 'reward_margin', 'chosen_reward', 'rejected_reward'} <= set(logged[0])
  assert abs(logged[0]['loss'] - math.log(2)) < 1e-4  # the trainer's first step sees the same loss
