"""LLaVA-OneVision training (configs/llava_onevision.py): `make_experiment(config)` for the mmjax trainer.

Loss: next-token cross-entropy averaged over the batch's supervised tokens (labels != -100; 'original' or
'assistant' masking). Evaluator (when there is eval data): multiple-choice accuracy against chance (the mean of
1 / options) two ways: 'accuracy' picks the option letter with the highest log-probability at the answer position;
'option_accuracy' ranks the options' texts by their log-likelihood as the reply to the question without the option
list (the smoke run trains on such open answers). Report: the first
predictions as JSON lines and the processor files (config.json, tokenizer, preprocessor) in WORKDIR/hf, which
`launch.py --mode convert --convert_from WORKDIR --convert_to WORKDIR_hf --hf_config WORKDIR/hf` completes with
the weights into an HF directory the next stage starts from.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from experiments.llava_onevision import model as model_lib, sources
from experiments.llava_onevision.data import ExampleEncoder, VisualLayout, multiple_choice, option_replies
from experiments.llava_onevision.tokenizer import smoke_processor
from mmjax.data import IGNORE_INDEX, make_eval_pipeline, make_pipeline
from mmjax.models import llava, visual_taps
from mmjax.models.llava_processor import LlavaOnevisionProcessor
from mmjax.train import Context, Experiment

PROCESSOR_FILES = ('tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json', 'preprocessor_config.json',
                   'processor_config.json', 'chat_template.json', 'chat_template.jinja')


def make_processor(config: ml_collections.ConfigDict, train, evaluation) -> LlavaOnevisionProcessor:
  """The processor of data.processor, or (smoke) a word-level one over the texts of the shapes sets."""
  if config.data.processor:
    processor = LlavaOnevisionProcessor.from_pretrained(config.data.processor)
  elif config.variant == 'smoke':
    texts = sources.conversation_texts(train) + (sources.conversation_texts(evaluation) if evaluation else [])
    processor = smoke_processor(texts, config.model.vision.image_size, config.model.vision.patch_size)
  else:
    raise ValueError('config.data.processor must name an HF llava_onevision directory (tokenizer.json, '
                     'preprocessor_config.json); only variant=smoke builds its own tokenizer')
  crop = processor.image_config.crop_size
  if crop != config.model.vision.image_size:
    raise ValueError(f'the processor crops {crop} px, config.model.vision.image_size is '
                     f'{config.model.vision.image_size}')
  if processor.tokenizer.get_vocab_size() > config.model.text.vocab_size:
    raise ValueError(f'the tokenizer has {processor.tokenizer.get_vocab_size()} tokens, more than '
                     f'config.model.text.vocab_size={config.model.text.vocab_size}')
  return processor


def token_loss(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Mean next-token cross-entropy of logits [B, S, V] against labels [B, S] shifted by one (-100 ignored)."""
  targets = labels[:, 1:]
  mask = targets != IGNORE_INDEX
  safe = jnp.where(mask, targets, 0)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], safe)
  count = jnp.maximum(mask.sum(), 1)
  hits = (logits[:, :-1].argmax(-1) == safe) & mask
  return (ce * mask).sum() / count, {'supervised_tokens': mask.sum().astype(jnp.float32),
                                     'token_accuracy': hits.sum() / count}


def next_token_loss(logits_fn):
  """The trainer's loss_fn(params, batch, rng, step): `token_loss` of logits_fn(params, batch)."""

  def loss_fn(params, batch, rng, step):
    del rng, step  # no dropout, no step-dependent loss
    return token_loss(logits_fn(params, batch), batch['labels'])

  return loss_fn


def abstract_experiment(config: ml_collections.ConfigDict) -> tuple[Experiment, dict[str, jax.ShapeDtypeStruct]]:
  """The training experiment without data and the shapes of one global batch (the arrays of data.ExampleEncoder),
  for lowering the step ahead of time (mmjax.train.aot); the image and video token ids are Qwen2's."""
  defaults = model_lib.LlavaOnevisionConfig
  cfg = model_lib.model_config(config, defaults.image_token_index, defaults.video_token_index)
  module = model_lib.make_module(cfg, config)
  b, s, k, c = config.batch_size, config.data.max_length, config.data.max_crops, config.model.vision.image_size
  i32, f32 = jnp.int32, jnp.float32
  batch = {'input_ids': jax.ShapeDtypeStruct((b, s), i32), 'labels': jax.ShapeDtypeStruct((b, s), i32),
           'attention_mask': jax.ShapeDtypeStruct((b, s), i32),
           'tap_index': jax.ShapeDtypeStruct((b, s, visual_taps.TAPS), i32),
           'tap_weight': jax.ShapeDtypeStruct((b, s, visual_taps.TAPS), f32),
           'pixel_values': jax.ShapeDtypeStruct((b, k, c, c, 3), f32)}
  experiment = Experiment(init_params=model_lib.random_init(module, config.model.init_std),
                          loss_fn=next_token_loss(llava.logits_fn(module)), train_data=None,
                          flops_per_example=model_lib.flops_per_example(cfg, s, k))
  return experiment, batch


def make_experiment(config: ml_collections.ConfigDict) -> Experiment:
  if config.data.loss_masking not in ('original', 'assistant'):
    raise ValueError(f"config.data.loss_masking must be 'original' or 'assistant', got {config.data.loss_masking!r}")
  train_src = sources.train_source(config)
  eval_src = sources.eval_source(config)
  sources.verify_images(train_src, eval_src)  # every file now, not when its batch comes
  processor = make_processor(config, train_src, eval_src)
  cfg = model_lib.model_config(config, processor.image_token_id, processor.video_token_id)
  if config.data.processor:
    model_lib.check_matches(cfg, config.data.processor)
  module = model_lib.make_module(cfg, config)
  init_params = model_lib.random_init(module, config.model.init_std)  # init_from replaces it (the trainer)

  layout = VisualLayout(config.data.image_layout, tuple(tuple(g) for g in config.data.grids),
                        int(config.data.anyres_max), int(config.data.max_crops))
  encoder = ExampleEncoder(processor, layout, max_length=config.data.max_length, masking=config.data.loss_masking)
  logits_fn = llava.logits_fn(module)
  loss_fn = next_token_loss(logits_fn)
  train_data = make_pipeline(train_src, global_batch_size=config.batch_size, seed=config.seed, transform=encoder)
  evaluators, report = {}, None
  if eval_src is not None:
    evaluators, report = _choice_eval(config, processor, layout, logits_fn, eval_src, cfg)
  return Experiment(init_params=init_params, loss_fn=loss_fn, train_data=train_data, evaluators=evaluators,
                    report=report,
                    flops_per_example=model_lib.flops_per_example(cfg, config.data.max_length, layout.max_crops))


def _choice_eval(config, processor, layout, logits_fn, eval_src, cfg):
  """The multiple-choice evaluator and the report (predictions + processor files)."""
  max_length = config.eval.max_length or config.data.max_length
  encoder = ExampleEncoder(processor, layout, max_length=max_length, masking='assistant', mc=True)
  examples = grain.MapDataset.source(eval_src)
  if config.eval.max_examples:
    examples = examples[:config.eval.max_examples]
  batch_size = config.eval.batch_size or jax.device_count()
  letters = jnp.asarray(encoder.letter_ids)

  @jax.jit
  def option_logprobs(params, batch):
    """log p(letter of option k) at each row's answer position, -inf beyond its options: [B, 26]."""
    logits = logits_fn(params, batch)
    at = jnp.take_along_axis(logits, (batch['answer_pos'] - 1)[:, None, None], axis=1)[:, 0]
    scores = jax.nn.log_softmax(at)[:, letters]
    return jnp.where(jnp.arange(letters.shape[0]) < batch['num_options'][:, None], scores, -jnp.inf)

  def run(params, ctx: Context, dataset):
    for local in make_eval_pipeline(dataset, global_batch_size=batch_size, transform=encoder):
      batch = ctx.global_batch(local)
      yield ctx.gather(batch['mask']), ctx.gather(option_logprobs(params, batch)), ctx.gather(batch['answer']), \
          ctx.gather(batch['num_options'])

  candidates = OptionReplies(examples)
  score_encoder = ExampleEncoder(processor, layout, max_length=max_length, masking='assistant')

  def with_ids(candidate):
    return {**score_encoder(candidate), 'example': np.int32(candidate['example']),
            'option': np.int32(candidate['option'])}

  @jax.jit
  def reply_logprob(params, batch):
    """Sum of the log-probabilities of each row's supervised tokens (the reply and its <|im_end|>): [B]."""
    logits = logits_fn(params, batch)
    targets = batch['labels'][:, 1:]
    mask = targets != IGNORE_INDEX
    logp = jnp.take_along_axis(jax.nn.log_softmax(logits[:, :-1]), jnp.where(mask, targets, 0)[..., None], -1)
    return (logp[..., 0] * mask).sum(-1)

  def accuracy(params, ctx: Context):
    correct = chance = total = 0.0
    for mask, scores, answer, options in run(params, ctx, examples):
      correct += float(((scores.argmax(-1) == answer) * mask).sum())
      chance += float((mask / np.maximum(options, 1)).sum())
      total += float(mask.sum())
    reply = np.full((len(examples), letters.shape[0]), -np.inf)
    for local in make_eval_pipeline(candidates, global_batch_size=batch_size, transform=with_ids):
      batch = ctx.global_batch(local)
      keep = ctx.gather(batch['mask']).astype(bool)
      reply[ctx.gather(batch['example'])[keep], ctx.gather(batch['option'])[keep]] = \
          ctx.gather(reply_logprob(params, batch))[keep]
    ranked = float((reply.argmax(-1) == np.asarray(candidates.answers)).sum())
    return {'accuracy': correct / total, 'option_accuracy': ranked / total, 'chance': chance / total, 'n': total}

  def write_report(params, ctx: Context):
    count = min(config.eval.report_examples, len(examples))
    rows = []
    for mask, scores, answer, options in run(params, ctx, examples[:count]):
      for k in np.flatnonzero(mask):
        rows.append((scores[k], int(answer[k]), int(options[k])))
    out = {'processor': os.path.join(ctx.workdir, 'hf')}
    if count:
      out['predictions'] = os.path.join(ctx.workdir, 'predictions.jsonl')
    if jax.process_index() == 0:
      if count:
        _write_predictions(out['predictions'], [examples[i] for i in range(count)], rows)
      write_processor_files(out['processor'], processor, cfg, config)
    return out

  return {'choice': accuracy}, write_report


class OptionReplies:
  """Each multiple-choice example of `examples` once per option, answered with the option's text (a grain source
  of examples with 'example' and 'option' indices; data.option_replies)."""

  def __init__(self, examples):
    self.examples, self.items, self.answers = examples, [], []
    for i in range(len(examples)):
      conversations = examples[i]['conversations']
      where = f'eval example {examples[i]["id"]!r}'
      self.answers.append(multiple_choice(conversations, where)[1])
      self.items += [(i, k, reply) for k, reply in enumerate(option_replies(conversations, where))]

  def __len__(self) -> int:
    return len(self.items)

  def __getitem__(self, index: int) -> dict:
    i, k, conversations = self.items[index]
    return {**self.examples[i], 'conversations': conversations, 'example': i, 'option': k}


def _write_predictions(path: str, examples, rows) -> None:
  with open(path, 'w') as f:
    for example, (scores, answer, options) in zip(examples, rows):
      probs = np.exp(scores[:options] - scores[:options].max())
      probs /= probs.sum()
      letters = [chr(ord('A') + i) for i in range(options)]
      question = [turn['value'] for turn in example['conversations'] if turn['from'] == 'human'][-1]
      f.write(json.dumps({'id': example['id'], 'question': question,
                          'answer': letters[answer], 'predicted': letters[int(np.argmax(probs))],
                          'probabilities': dict(zip(letters, np.round(probs, 4).tolist()))}) + '\n')


def write_processor_files(directory: str, processor: LlavaOnevisionProcessor, cfg, config) -> None:
  """config.json, tokenizer and preprocessor files of an HF directory (the weights come from launch.py convert)."""
  out = Path(directory)
  out.mkdir(parents=True, exist_ok=True)
  (out / 'config.json').write_text(json.dumps(cfg.to_hf_dict(), indent=2, sort_keys=True))
  if config.data.processor:
    for name in PROCESSOR_FILES:
      if (Path(config.data.processor) / name).is_file():
        shutil.copy(Path(config.data.processor) / name, out / name)
    return
  image = processor.image_config
  processor.tokenizer.save(str(out / 'tokenizer.json'))
  (out / 'tokenizer_config.json').write_text(json.dumps({'pad_token': '<|endoftext|>'}))
  (out / 'preprocessor_config.json').write_text(json.dumps({
      'size': {'height': image.crop_size, 'width': image.crop_size}, 'image_mean': list(image.image_mean),
      'image_std': list(image.image_std), 'rescale_factor': image.rescale_factor, 'resample': image.resample,
      'image_grid_pinpoints': [list(p) for p in cfg.image_grid_pinpoints], 'do_convert_rgb': image.do_convert_rgb},
      indent=2))
