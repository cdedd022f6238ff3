"""The contamination experiment (spec section 4, details unverified): fine-tune a model on the seed test items
(question + answer), then compare its seed accuracy with its StructEval accuracy, before and after.

The claim to check: contamination inflates accuracy on the seed questions while the Struct items around them (other
test objectives and concepts) barely move. The model is a tiny random Qwen2 over a word-level tokenizer built from
the data's texts (the smoke, on the synthetic knowledge base), or an HF folder's Qwen2 with its tokenizer.
Training goes through the shared trainer (`mmjax.train.train_and_evaluate`): the seeds in the base-model prompt
(prompts.ppl_context + '\\nAnswer: X', the text PPL scoring reads), the NLL of every token but the first, averaged.
Both evaluations score every item, seeds included, by the lowest perplexity over the four options (ppl.PPLScorer);
"before" scores the trainer's own starting parameters (the init it draws from config.seed, or the HF weights).
Output: contamination.json in the workdir with both evaluations (seed accuracy, the StructEval views) and the gains.

  # the smoke: 40 synthetic seeds, 320 Struct items, the tiny model, 150 steps (minutes on a 2-core CPU)
  python launch.py --config configs/structeval.py:variant=smoke --mode contaminate --workdir runs/struct_contam
  # seeds 0, 1, 2 (2026-12-03, CPU): seed accuracy 20/15/25 -> 100 %, Struct item accuracy 22.5/25.3/26.3 ->
  # 25.9/23.8/20.9 %: the seed gain is 75-85 points, the Struct change -5 to +3 points (chance is 25 %).
  python launch.py --config configs/structeval.py --mode contaminate --workdir runs/struct_obqa_contam \
      --config.data_file=/data/struct_data/struct_openbookqa
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from tokenizers import Tokenizer, models, pre_tokenizers

from experiments.structeval import settings
from experiments.structeval.data import StructItem, load_struct
from experiments.structeval.ppl import PPLScorer
from experiments.structeval.prompts import PPL_SUFFIX, ppl_context
from experiments.structeval.synthetic import write_synthetic_struct
from experiments.structeval.views import mastery_views
from mmjax.data import make_pipeline
from mmjax.evals.prompt import Prompt
from mmjax.models.qwen2 import Qwen2Config, Qwen2ForCausalLM
from mmjax.train import Experiment, train_and_evaluate
from mmjax.train.config import base_config
from mmjax.train.preference import sequence_logprobs

DEFAULTS = settings.CONTAMINATION  # configs/structeval.py's `contamination` sub-dict overrides them
PAD, UNK = '[PAD]', '[UNK]'


def word_tokenizer(texts: Sequence[str]) -> Tokenizer:
  """A word-level `tokenizers.Tokenizer` (words and punctuation, whitespace dropped) over every token of `texts`;
  id 0 is [PAD], 1 [UNK]."""
  vocab = {PAD: 0, UNK: 1}
  split = pre_tokenizers.Whitespace()
  for text in texts:
    for word, _ in split.pre_tokenize_str(text):
      vocab.setdefault(word, len(vocab))
  tokenizer = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
  tokenizer.pre_tokenizer = split
  return tokenizer


def training_text(item: StructItem) -> str:
  """The seed in the base-model prompt with its answer: what the fine-tune memorises and PPL scoring reads."""
  return ppl_context(item) + PPL_SUFFIX.format(item.answer)


class _Rows:
  """Training rows as a random-access source for make_pipeline: tokens [T] int32 right-padded, mask [T] float32 (1
  on the text's tokens)."""

  def __init__(self, encoded: Sequence[Sequence[int]]):
    length = max(map(len, encoded))
    self.tokens = np.zeros((len(encoded), length), np.int32)
    self.mask = np.zeros((len(encoded), length), np.float32)
    for row, mask, ids in zip(self.tokens, self.mask, encoded):
      row[:len(ids)], mask[:len(ids)] = ids, 1.0

  def __len__(self) -> int:
    return len(self.tokens)

  def __getitem__(self, i: int) -> dict[str, np.ndarray]:
    return {'tokens': self.tokens[i], 'mask': self.mask[i]}


def _tokenizer(settings: dict, texts: Sequence[str]) -> Tokenizer:
  if not settings['hf_dir']:
    return word_tokenizer(texts)
  tokenizer = Tokenizer.from_file(os.path.join(settings['hf_dir'], 'tokenizer.json'))
  tokenizer.no_truncation()
  tokenizer.no_padding()
  return tokenizer


def _model(settings: dict, vocab_size: int, window: int) -> Qwen2ForCausalLM:
  if settings['hf_dir']:
    from mmjax.weights.safetensors_source import read_config
    return Qwen2ForCausalLM(Qwen2Config.from_hf_dict(read_config(settings['hf_dir'])))
  return Qwen2ForCausalLM(Qwen2Config(
      vocab_size=vocab_size, hidden_size=settings['hidden_size'], intermediate_size=settings['intermediate_size'],
      num_hidden_layers=settings['layers'], num_attention_heads=settings['heads'],
      num_key_value_heads=settings['kv_heads'], rope_theta=10000.0, max_position_embeddings=window))


def trainer_config(settings: dict, seed: int) -> ml_collections.ConfigDict:
  """The shared trainer's config of the fine-tune: one checkpoint at the end, no periodic evaluation."""
  c = base_config()
  c.seed, c.total_steps, c.batch_size = seed, settings['steps'], settings['batch_size']
  c.log_every, c.eval_every, c.ckpt_every, c.keep_ckpts = max(settings['steps'] // 5, 1), 0, settings['steps'], 1
  c.async_checkpointing, c.progress_bar = False, False
  c.optim.lr, c.optim.warmup_steps = settings['lr'], 0
  c.init_from = settings['hf_dir']
  return c


def accuracies(scorer: PPLScorer, items: Sequence[StructItem]) -> dict:
  """StructEval's views (views.mastery_views, percent) of the items answered by lowest perplexity; the seeds must
  be among the items."""
  answers = scorer.respond([Prompt(ppl_context(item)) for item in items])
  return mastery_views(items, [a == item.answer for a, item in zip(answers, items)])


def run(items: Sequence[StructItem], workdir: str, *, seed: int = 0, **overrides: Any) -> dict:
  """Fine-tunes on the seeds of `items` (Struct items and seeds, load_struct(..., include_seeds=True)) in
  workdir/finetune (the trainer's workdir: a rerun resumes it) and writes workdir/contamination.json: {'before',
  'after', 'gain'} (gain: after - before of seed accuracy, item accuracy, per-seed mean and strict mastery, in
  points) with the settings."""
  unknown = set(overrides) - set(DEFAULTS)
  if unknown:
    raise ValueError(f'contamination: unknown settings {sorted(unknown)}; valid: {sorted(DEFAULTS)}')
  settings = {**DEFAULTS, **overrides}
  seeds = [item for item in items if item.kind == 'seed']
  if not seeds or len(seeds) == len(items):
    raise ValueError('contamination: the items need seeds and Struct items (load_struct(..., include_seeds=True))')
  texts = [training_text(s) for s in seeds]
  scored = [training_text(i) for i in items]  # as long as each of an item's four PPL strings
  tokenizer = _tokenizer(settings, scored)
  model = _model(settings, tokenizer.get_vocab_size(), max(len(tokenizer.encode(t).ids) for t in scored))

  def init_params(rng):
    return model.init(rng, jnp.zeros((1, 8), jnp.int32))['params']

  def loss_fn(params, batch, rng, step):
    del rng, step
    logits = model.apply({'params': params}, batch['tokens']).logits
    count = jnp.maximum(jnp.sum(batch['mask'][:, 1:]), 1.0)
    return -jnp.sum(sequence_logprobs(logits, batch['tokens'], batch['mask'])) / count, {'tokens': count}

  config = trainer_config(settings, seed)
  rows = _Rows([tokenizer.encode(t).ids for t in texts])
  experiment = Experiment(init_params=init_params, loss_fn=loss_fn,
                          train_data=make_pipeline(rows, global_batch_size=settings['batch_size'], seed=seed))
  if settings['hf_dir']:
    from mmjax.weights import from_pretrained
    start = from_pretrained(settings['hf_dir'])[1]
  else:  # the key the trainer's fresh init draws from (mmjax.train.trainer)
    start = nn.unbox(jax.jit(init_params)(jax.random.split(jax.random.PRNGKey(seed))[0]))
  scorer = PPLScorer(model, start, tokenizer, batch_size=settings['eval_batch_size'])
  before = accuracies(scorer, items)
  out = train_and_evaluate(config, os.path.join(workdir, 'finetune'), experiment)
  scorer.params = out['state'].params
  after = accuracies(scorer, items)
  keys = ('seed_accuracy', 'item_accuracy', 'seed_mean', 'strict_mastery')
  result = {'before': before, 'after': after, 'gain': {k: after[k] - before[k] for k in keys},
            'settings': settings, 'seed': seed, 'seeds': len(seeds), 'struct_items': len(items) - len(seeds)}
  with open(os.path.join(workdir, 'contamination.json'), 'w', encoding='utf-8') as f:
    json.dump(result, f, indent=1)
  return result


def smoke_items(folder: str, seed: int = 0, creatures: int = 40) -> list[StructItem]:
  """The synthetic knowledge-base set (synthetic.py) written into folder, its seeds included."""
  return load_struct(write_synthetic_struct(folder, seed=seed, creatures=creatures).path, include_seeds=True)


def run_contamination(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """`launch.py --mode contaminate`: variant=smoke fine-tunes the tiny model on the synthetic set (written to
  workdir/smoke_data); otherwise on config.data_file's seeds. Settings: DEFAULTS, overridden by
  config.contamination where the config has that sub-dict."""
  settings = {k: v for k, v in (config.get('contamination') or {}).items()}
  if config.variant == 'smoke':
    items = smoke_items(os.path.join(workdir, 'smoke_data'), config.seed)
  elif not config.data_file:
    raise ValueError('contamination: set --config.data_file to a struct file or folder (its seeds are fine-tuned on)')
  else:
    items = load_struct(config.data_file, include_seeds=True)
  return run(items, workdir, seed=config.seed, **settings)
