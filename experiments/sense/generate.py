"""`--mode generate` (the issue's generate_eval): greedy SQL from a training workdir's checkpoint, then scored.

For every question of a Spider or BIRD split (config.data_dir, config.split as in --mode score; variant=smoke: the
smoke world in the workdir, its dev split in the Spider layout) the prompt of SFT and DPO (train.prompt_for) is
decoded greedily through mmjax.generate (up to config.max_new_tokens tokens, until EOS), reduced to its SQL
(synthesis.extract_sql: up to the first ';') and written in the official prediction format; the evaluators of
--mode score (evaluate.score) then score it. Everything goes into <workdir>/generate_<benchmark>_<split>/:
predictions (pred.sql, or BIRD's predict_<split>.json), verdicts.jsonl, summary.json (as --mode score, plus the
checkpoint's step) and summary.md.
"""
from __future__ import annotations

import json
import os

import ml_collections

from experiments.sense import data, evaluate, synthesis, train
from mmjax.generate import generate
from mmjax.weights.workdir import read_workdir_params

CHUNK = 64  # prompts per generate call


def generate_sql(config: ml_collections.ConfigDict, model, params, tok: train.Tokenizer,
                 prompts: list[str]) -> list[str]:
  """The greedy SQL of each prompt (the prompt's oldest tokens dropped when it does not fit the model)."""
  ids = [tok.encode(p) or [tok.pad_id] for p in prompts]
  out = []
  for start in range(0, len(ids), CHUNK):
    completions = generate(model, params, ids[start:start + CHUNK], max_new_tokens=config.max_new_tokens,
                           eos_token_id=tok.eos_id, truncate='left')
    out += [synthesis.extract_sql(tok.decode(c[0].tokens)) for c in completions]
  return out


def _examples(config: ml_collections.ConfigDict, data_dir: str) -> list[data.Text2SqlExample]:
  path = config.data_file or os.path.join(data_dir, f'{config.split}.json')
  if not os.path.isfile(path):
    raise FileNotFoundError(f'no {config.benchmark} questions {path} (set --config.data_dir or --config.data_file)')
  return (data.read_spider_examples if config.benchmark == 'spider' else data.read_bird_examples)(path)


def run_generate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Generates and scores (see the module docstring); returns the summary."""
  if not config.get('stage'):
    raise ValueError('--mode generate needs the training config of the checkpoint: configs/sense.py:stage=sft|dpo')
  if config.variant == 'smoke':
    if config.benchmark != 'spider':
      raise ValueError('variant=smoke generates for the smoke world, which has the Spider layout: benchmark=spider')
    data_dir = os.path.join(workdir, train.SMOKE_WORLD)
    if not os.path.isdir(data_dir):
      raise FileNotFoundError(f'{data_dir}: no smoke world; train this workdir first (--mode train)')
  else:
    data_dir = config.data_dir
  tok = train.tokenizer_for(config, workdir)
  model = train.build_model(config, tok.vocab_size)
  params, info = read_workdir_params(workdir, train.abstract_params(model))
  examples = _examples(config, data_dir)
  db_dir = evaluate.dataset_paths(config, data_dir)['db_dir']
  prompts = [train.prompt_for(config, e, data.database_path(db_dir, e.db_id)) for e in examples]
  sqls = generate_sql(config, model, params, tok, prompts)
  out = os.path.join(workdir, f'generate_{config.benchmark}_{config.split}')
  os.makedirs(out, exist_ok=True)
  if config.benchmark == 'spider':
    predictions = data.write_spider_predictions(os.path.join(out, 'pred.sql'), sqls)
  else:
    predictions = data.write_bird_predictions(os.path.join(out, f'predict_{config.split}.json'),
                                              [(s, e.db_id) for s, e in zip(sqls, examples)])
  summary = evaluate.score(config, out, data_dir, predictions)
  summary.update({'checkpoint': os.path.abspath(workdir), 'step': info.step, 'stage': config.stage})
  with open(os.path.join(out, 'summary.json'), 'w', encoding='utf-8') as f:
    json.dump(summary, f, indent=1)
  return summary
