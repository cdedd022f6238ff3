"""SENSE stage 1 training, and what SFT, DPO and generation share: the model, the tokenizer, the data, the prompt.

SFT (`sft_experiment`): the shared trainer maximises Σ_t log p(y_t | y_<t, x) over the SQL tokens and the EOS of
each training question, the prompt x masked (data.render_prompt over the database's CREATE TABLE schema, as in weak
sampling and DPO). The loss is the mean over the batch's target tokens. Rows are prompt + SQL + EOS, right-padded to
config.seq_len; a prompt too long for it loses its oldest tokens (`encode_pair`), a SQL that leaves no room for
one prompt token drops its example (counted in data_stats.json).

Model: the Qwen2 decoder (mmjax.models.qwen2). config.model.hf_dir = '' builds a tiny random-init one over a word
tokenizer built from the training texts and saved as <workdir>/tokenizer.json (experiments/sense/tokenizer.py); an
HF folder gives the architecture (config.json), the tokenizer (tokenizer.json) and, with --config.init_from=the
same folder, the weights. variant=smoke writes the generated smoke world (experiments/sense/smoke.py) into
<workdir>/smoke_world and trains on its strong data (the train questions with the synthetic generator's SQL, blind
spots included: smoke.write_smoke_world); otherwise config.train_sets names the SFT data.
"""
from __future__ import annotations

import json
import os
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from experiments.sense import data, smoke
from experiments.sense.tokenizer import HFTokenizer, WordTokenizer, load_word_tokenizer
from mmjax.data import make_pipeline
from mmjax.models.qwen2 import Qwen2Config, Qwen2ForCausalLM
from mmjax.train import Experiment
from mmjax.train.preference import sequence_logprobs

TOKENIZER = 'tokenizer.json'
SMOKE_WORLD = 'smoke_world'
LAYOUTS = {'spider': ('train_spider.json', 'database'), 'bird': ('train.json', 'train_databases'),
           'synth': ('train_synth.json', 'database')}
Tokenizer = WordTokenizer | HFTokenizer


class ListSource:
  """A random-access source over a list of examples (dicts of numpy arrays) for `make_pipeline`."""

  def __init__(self, examples: list[dict[str, np.ndarray]]):
    if not examples:
      raise ValueError('no training examples (see data_stats.json in the workdir)')
    self.examples = examples

  def __len__(self) -> int:
    return len(self.examples)

  def __getitem__(self, i: int) -> dict[str, np.ndarray]:
    return self.examples[i]


def smoke_world(config: ml_collections.ConfigDict, workdir: str) -> smoke.SmokeWorld:
  """The smoke world of config.seed, (re)written into <workdir>/smoke_world (the same seed writes the same files)."""
  return smoke.write_smoke_world(os.path.join(workdir, SMOKE_WORLD), config.seed, **config.smoke)


def training_examples(config: ml_collections.ConfigDict, workdir: str) -> list[tuple[data.Text2SqlExample, str]]:
  """(example, database path) of the SFT data: the smoke world's strong data, or every entry of config.train_sets
  ('layout:folder;...', layouts spider, bird, synth)."""
  if config.variant == 'smoke':  # the strong data: train questions with the synthetic generator's SQL
    world = smoke_world(config, workdir)
    return [(e, world.db_path(e.db_id)) for e in world.strong]
  if not config.train_sets:
    raise ValueError("set --config.train_sets to the SFT data, e.g. 'spider:/data/spider;bird:/data/bird/train'")
  out = []
  for entry in filter(None, config.train_sets.split(';')):
    layout, sep, folder = entry.partition(':')
    if not sep or layout not in LAYOUTS:
      raise ValueError(f'config.train_sets entry {entry!r}: expected layout:folder, layout one of {list(LAYOUTS)}')
    name, db_folder = LAYOUTS[layout]
    path = os.path.join(folder, name)
    read = data.read_bird_examples if layout == 'bird' else data.read_spider_examples
    out += [(e, data.database_path(os.path.join(folder, db_folder), e.db_id)) for e in read(path)]
  return out


def prompt_for(config: ml_collections.ConfigDict, example: data.Text2SqlExample, db_path: str) -> str:
  """The prompt of one question (spec section 3), the same in SFT, weak sampling, DPO and generation."""
  return data.render_prompt(data.schema_prompt(db_path, config.example_rows), example.question, example.evidence)


def tokenizer_for(config: ml_collections.ConfigDict, workdir: str, texts: list[str] | None = None) -> Tokenizer:
  """The run's tokenizer: the HF folder's; else <workdir>/tokenizer.json, which SFT builds from `texts` when it is
  missing and DPO copies from its SFT workdir (config.init_from)."""
  if config.model.hf_dir:
    return HFTokenizer(config.model.hf_dir)
  path = os.path.join(workdir, TOKENIZER)
  if not os.path.isfile(path):
    if config.get('stage') == 'dpo':
      source = os.path.join(str(config.init_from), TOKENIZER)
      load_word_tokenizer(source)  # a clear error when the SFT workdir has none
      os.makedirs(workdir, exist_ok=True)
      shutil.copyfile(source, path)
    elif texts is not None:
      WordTokenizer.build(texts, config.tokenizer_min_count).save(path)
  return load_word_tokenizer(path)


def build_model(config: ml_collections.ConfigDict, vocab_size: int) -> Qwen2ForCausalLM:
  """The Qwen2 decoder: the HF folder's architecture, or the tiny one of config.model over `vocab_size` tokens."""
  m = config.model
  if m.hf_dir:
    from mmjax.weights.safetensors_source import read_config
    cfg = Qwen2Config.from_hf_dict(read_config(m.hf_dir))
  else:
    cfg = Qwen2Config(vocab_size=vocab_size, hidden_size=m.hidden_size, intermediate_size=m.intermediate_size,
                      num_hidden_layers=m.num_hidden_layers, num_attention_heads=m.num_attention_heads,
                      num_key_value_heads=m.num_key_value_heads, rope_theta=10000.0, tie_word_embeddings=True,
                      max_position_embeddings=config.seq_len + config.max_new_tokens)
  return Qwen2ForCausalLM(cfg, dtype=jnp.dtype(config.compute_dtype), param_dtype=jnp.dtype(config.param_dtype),
                          remat_policy=config.remat_policy)


def init_fn(model: Qwen2ForCausalLM):
  """rng -> the model's boxed parameter tree."""
  return lambda rng: model.init(rng, jnp.zeros((1, 8), jnp.int32))['params']


def encode_pair(tok: Tokenizer, prompt: str, sql: str, seq_len: int) -> tuple[list[int], list[int]] | None:
  """(prompt ids, SQL ids + EOS) fitting seq_len tokens: the prompt loses its oldest tokens if need be; None when
  the response leaves no room for one prompt token."""
  response = tok.encode(sql) + [tok.eos_id]
  room = seq_len - len(response)
  if room < 1:
    return None
  ids = tok.encode(prompt)
  return ids[-room:], response


def pack_row(prompt: list[int], response: list[int], seq_len: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
  """tokens [T] int32 (prompt + response, right-padded) and mask [T] float32 (1 on the response)."""
  tokens = np.full(seq_len, pad_id, np.int32)
  mask = np.zeros(seq_len, np.float32)
  row = prompt + response
  tokens[:len(row)] = row
  mask[len(prompt):len(row)] = 1.0
  return tokens, mask


def write_stats(workdir: str, stats: dict) -> None:
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, 'data_stats.json'), 'w', encoding='utf-8') as f:
    json.dump(stats, f, indent=1)


def sft_loss(model: Qwen2ForCausalLM):
  """(params, batch, rng, step) -> (mean NLL over the target tokens, {'target_tokens'}); batch tokens/mask [B, T]."""
  def loss_fn(params, batch, rng, step):
    del rng, step
    logits = model.apply({'params': params}, batch['tokens']).logits
    count = jnp.maximum(jnp.sum(batch['mask'][:, 1:]), 1.0)
    return -jnp.sum(sequence_logprobs(logits, batch['tokens'], batch['mask'])) / count, {'target_tokens': count}
  return loss_fn


def sft_experiment(config: ml_collections.ConfigDict, workdir: str) -> Experiment:
  """The SFT Experiment over the training examples (see the module docstring)."""
  pairs = [(prompt_for(config, e, path), e.sql) for e, path in training_examples(config, workdir)]
  texts = [p + s for p, s in pairs]
  if config.variant == 'smoke' and config.get('tokenizer_gold_sql', False):
    texts += [e.sql for e in smoke_world(config, workdir).train]  # config.tokenizer_gold_sql: the vocabulary only
  tok = tokenizer_for(config, workdir, texts)
  rows, dropped = [], 0
  for prompt, sql in pairs:
    encoded = encode_pair(tok, prompt, sql, config.seq_len)
    if encoded is None:
      dropped += 1
      continue
    tokens, mask = pack_row(*encoded, config.seq_len, tok.pad_id)
    rows.append({'tokens': tokens, 'mask': mask})
  write_stats(workdir, {'stage': 'sft', 'examples': len(pairs), 'kept': len(rows), 'dropped_too_long': dropped,
                        'vocab_size': tok.vocab_size, 'seq_len': config.seq_len})
  model = build_model(config, tok.vocab_size)
  train_data = make_pipeline(ListSource(rows), global_batch_size=config.batch_size, seed=config.seed)
  return Experiment(init_params=init_fn(model), loss_fn=sft_loss(model), train_data=train_data)


def abstract_params(model: Qwen2ForCausalLM) -> dict:
  """The model's unboxed parameter tree of jax.ShapeDtypeStruct."""
  return nn.unbox(jax.eval_shape(init_fn(model), jax.random.key(0)))
