"""Generation from the command line: batch mode (JSONL in, JSONL out) and chat mode (stdin, streamed replies).

  python -m mmjax.cli_generate --checkpoint HF_DIR --input prompts.jsonl --output completions.jsonl
  python -m mmjax.cli_generate --checkpoint HF_DIR --chat --temperature 0.7 --top_p 0.9
  python -m mmjax.cli_generate --checkpoint WORKDIR --base HF_DIR --input prompts.jsonl --output out.jsonl

--checkpoint is an HF directory (config.json, safetensors, tokenizer.json) or an mmjax trainer workdir (orbax
checkpoints under WORKDIR/checkpoints; the latest step's EMA parameters if present, else its parameters), whose
architecture, tokenizer and EOS ids come from the HF directory --base.

Batch input lines: {"prompt": str} or {"prompt_ids": [int, ...]}, optionally "images": [paths] (multimodal models
only, with "prompt" text holding one <image> placeholder per image; relative paths are relative to the input file's
folder). Each output line is one completion: the input record plus "sample", "text", "tokens", "logprobs" and
"finish_reason" (see `mmjax.generate.Completion`).

Chat mode reads one user message per stdin line and streams the reply token by token to stdout, ending it with a
newline; "/reset" forgets the conversation, end of input quits. Conversations use ChatML when the tokenizer has
<|im_start|> and <|im_end|>, else plain "User: ... / Assistant: ..." turns; the oldest tokens are cut when the
conversation outgrows the context.
"""
import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

import flax.linen as nn
import jax
import jax.numpy as jnp
from absl import logging
from flax.traverse_util import flatten_dict

from mmjax.generate import as_adapter, compile_counts, generate, stream
from mmjax.models.llava_onevision import LlavaOnevisionForConditionalGeneration, LlavaOnevisionProcessor
from mmjax.weights import from_pretrained
from mmjax.weights.registry import spec_for_model_type


@dataclasses.dataclass(frozen=True)
class Settings:
  """Decoding settings shared by both modes (see `mmjax.generate.generate`)."""
  max_new_tokens: int = 128
  temperature: float = 0.0
  top_k: int | None = None
  top_p: float | None = None
  min_p: float | None = None
  num_samples: int = 1
  seed: int = 0
  eos_token_id: tuple[int, ...] | None = None
  truncate: str | None = None
  batch_size: int = 16

  def generate_kwargs(self) -> dict[str, Any]:
    return dict(max_new_tokens=self.max_new_tokens, temperature=self.temperature, top_k=self.top_k,
                top_p=self.top_p, min_p=self.min_p, num_samples=self.num_samples, seed=self.seed,
                truncate=self.truncate)


@dataclasses.dataclass(frozen=True)
class LoadedModel:
  """A module with its parameters, its tokenizer (a `tokenizers.Tokenizer`, or None) and its EOS ids."""
  module: Any
  params: Any
  tokenizer: Any
  eos_token_id: tuple[int, ...]
  source: str
  processor: Any = None  # LlavaOnevisionProcessor of a LLaVA-OneVision checkpoint: expands <image> placeholders

  def encode(self, text: str) -> list[int]:
    if self.tokenizer is None:
      raise ValueError(f'{self.source} has no tokenizer.json: give "prompt_ids" instead of "prompt" text.')
    return self.tokenizer.encode(text).ids

  def decode(self, ids: Sequence[int]) -> str | None:
    return None if self.tokenizer is None else self.tokenizer.decode(list(ids), skip_special_tokens=True)


def load_model(checkpoint: str | os.PathLike, base: str | os.PathLike | None = None, dtype: str = 'float32'
               ) -> LoadedModel:
  """Loads an HF directory, or an mmjax trainer workdir with the HF directory `base` (see the module docstring)."""
  checkpoint = Path(checkpoint)
  hf_dir = hf_directory(checkpoint, base)
  if hf_dir == checkpoint:
    module, params, _ = from_pretrained(hf_dir, jnp.dtype(dtype))
  else:
    module, params = _from_workdir(checkpoint, hf_dir, jnp.dtype(dtype))
  as_adapter(module)  # fails now, naming the module, if the engine cannot decode it
  processor = None
  if isinstance(module, LlavaOnevisionForConditionalGeneration) and (hf_dir / 'preprocessor_config.json').is_file():
    processor = LlavaOnevisionProcessor.from_pretrained(hf_dir)
  return LoadedModel(module, params, _tokenizer(hf_dir), _eos_ids(hf_dir), str(checkpoint), processor)


def hf_directory(checkpoint: str | os.PathLike, base: str | os.PathLike | None = None) -> Path:
  """The HF directory holding the architecture and tokenizer: `checkpoint` itself when it has a config.json, else
  `base` (an mmjax trainer workdir's); ValueError when neither does."""
  checkpoint = Path(checkpoint)
  if (checkpoint / 'config.json').is_file():
    return checkpoint
  if base is None:
    raise ValueError(f'{checkpoint} has no config.json, so it is not an HF directory; for an mmjax trainer workdir '
                     'pass --base HF_DIR for the architecture and the tokenizer.')
  return Path(base)


def _from_workdir(workdir: Path, hf_dir: Path, dtype: jnp.dtype) -> tuple[Any, Any]:
  """(module, params) of the latest orbax step in workdir/checkpoints, with hf_dir's architecture."""
  import orbax.checkpoint as ocp  # only workdir checkpoints need orbax
  hf_config = json.loads((hf_dir / 'config.json').read_text())
  spec = spec_for_model_type(hf_config.get('model_type'), str(hf_dir / 'config.json'))
  config = spec.config_cls.from_hf_dict(hf_config)
  module = spec.build(config, dtype)
  manager = ocp.CheckpointManager((workdir / 'checkpoints').absolute(), item_names=('state',))
  step = manager.latest_step()
  if step is None:
    raise FileNotFoundError(f'{workdir / "checkpoints"} holds no finished checkpoint step.')
  state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))['state']
  params = state['ema_params'] if 'ema_params' in state else state['params']
  abstract = jax.eval_shape(module.init, jax.random.key(0), *spec.example_inputs(config))['params']
  want = {k: tuple(v.shape) for k, v in flatten_dict(nn.unbox(abstract)).items()}
  have = {k: tuple(v.shape) for k, v in flatten_dict(params).items()}
  if want != have:
    diff = sorted('/'.join(k) for k in set(want) ^ set(have)) + \
        sorted(f'{"/".join(k)} {have[k]} != {want[k]}' for k in set(want) & set(have) if want[k] != have[k])
    raise ValueError(f'{workdir} step {step}: the parameters do not match the {hf_config["model_type"]} of '
                     f'{hf_dir}: {", ".join(diff[:10])}{" ..." if len(diff) > 10 else ""}.')
  logging.info('Loaded step %d of %s.', step, workdir)
  return module, jax.tree.map(lambda x: jnp.asarray(x, dtype), params)


def _tokenizer(hf_dir: Path) -> Any:
  path = hf_dir / 'tokenizer.json'
  if not path.is_file():
    logging.warning('%s has no tokenizer.json: only "prompt_ids" input works and outputs carry no text.', hf_dir)
    return None
  import tokenizers
  return tokenizers.Tokenizer.from_file(str(path))


def _eos_ids(hf_dir: Path) -> tuple[int, ...]:
  """EOS ids from generation_config.json, else config.json; () when neither names one."""
  for name in ('generation_config.json', 'config.json'):
    path = hf_dir / name
    eos = json.loads(path.read_text()).get('eos_token_id') if path.is_file() else None
    if eos is not None:
      return tuple(eos) if isinstance(eos, list) else (eos,)
  return ()


def run_batch(model: LoadedModel, input_path: str | os.PathLike, output_path: str | os.PathLike,
              settings: Settings) -> int:
  """Generates for every line of input_path and writes output_path (see the module docstring); returns lines."""
  records = list(_read_records(Path(input_path), model))
  eos = model.eos_token_id if settings.eos_token_id is None else settings.eos_token_id
  with open(output_path, 'w') as out:
    for begin in range(0, len(records), settings.batch_size):
      chunk = records[begin:begin + settings.batch_size]
      prompts, model_inputs = _chunk_inputs(model, chunk)
      results = generate(model.module, model.params, prompts, eos_token_id=eos or None,
                         **settings.generate_kwargs(), **model_inputs)
      for (record, *_), completions in zip(chunk, results):
        for sample, c in enumerate(completions):
          out.write(json.dumps({**record, 'sample': sample, 'text': model.decode(c.tokens), 'tokens': c.tokens,
                                'logprobs': [round(float(x), 6) for x in c.logprobs],
                                'finish_reason': c.finish_reason}) + '\n')
      out.flush()
  logging.info('Wrote %d prompts to %s; compilations: %s', len(records), output_path, compile_counts())
  return len(records)


def _chunk_inputs(model: LoadedModel, chunk: list[tuple[dict[str, Any], list[int] | None, list[str] | None]]
                  ) -> tuple[list[list[int]], dict[str, Any]]:
  """(prompt ids, model inputs) of a chunk of `_read_records` items: the records with images go through the
  processor together, so its image inputs hold their images in prompt order (`mmjax.generate.llava`'s rule)."""
  prompts = [ids for _, ids, _ in chunk]
  with_images = [i for i, (_, _, images) in enumerate(chunk) if images]
  if not with_images:
    return prompts, {}
  inputs = model.processor([chunk[i][0]['prompt'] for i in with_images], images=[chunk[i][2] for i in with_images])
  per_prompt = [0] * len(chunk)
  for i, ids, mask, count in zip(with_images, inputs['input_ids'], inputs['attention_mask'],
                                 inputs['batch_num_images']):
    prompts[i], per_prompt[i] = ids[mask.astype(bool)].tolist(), int(count)
  return prompts, dict(pixel_values=inputs['pixel_values'], image_sizes=inputs['image_sizes'],
                       batch_num_images=per_prompt)


def _read_records(path: Path, model: LoadedModel
                  ) -> Iterator[tuple[dict[str, Any], list[int] | None, list[str] | None]]:
  """(record, prompt token ids, None) per line, or (record, None, image paths) for a record with images, which
  `_chunk_inputs` tokenizes; ValueError naming the file and line for bad input."""
  with open(path) as f:
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      where = f'{path}:{number}'
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f'{where}: not JSON ({e}).') from None
      if not isinstance(record, dict) or ('prompt' in record) == ('prompt_ids' in record):
        raise ValueError(f'{where}: a record needs exactly one of "prompt" (text) and "prompt_ids" (token ids).')
      if record.get('images'):
        yield record, None, _image_paths(record, model, path, where)
        continue
      ids = record['prompt_ids'] if 'prompt_ids' in record else model.encode(record['prompt'])
      if not isinstance(ids, list) or not all(isinstance(t, int) for t in ids):
        raise ValueError(f'{where}: "prompt_ids" must be a list of ints.')
      yield record, ids, None


def _image_paths(record: dict[str, Any], model: LoadedModel, path: Path, where: str) -> list[str]:
  """The checked image paths of a record with images, relative ones resolved against the input file's folder."""
  if not isinstance(model.module, LlavaOnevisionForConditionalGeneration):
    raise ValueError(f'{where}: the record has images, but {model.source} holds a text-only '
                     f'{type(model.module).__name__}; images need a multimodal model such as LLaVA-OneVision.')
  if model.processor is None:
    raise ValueError(f'{where}: the record has images, but {model.source} has no preprocessor_config.json for '
                     'its image processor.')
  images = record['images']
  if 'prompt' not in record or not isinstance(images, list) or not all(isinstance(p, str) for p in images):
    raise ValueError(f'{where}: a record with images needs "prompt" text and "images" as a list of paths.')
  if record['prompt'].count('<image>') != len(images):
    raise ValueError(f'{where}: the prompt holds {record["prompt"].count("<image>")} <image> placeholders for '
                     f'{len(images)} images; each image needs one.')
  return [str(path.parent / p) for p in images]


def run_chat(model: LoadedModel, settings: Settings, stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout
             ) -> None:
  """The interactive loop (see the module docstring): one message per line, replies streamed as produced."""
  template = _ChatTemplate(model)
  eos = settings.eos_token_id if settings.eos_token_id is not None else model.eos_token_id
  eos = tuple(eos) + template.end_ids
  history: list[int] = []
  kwargs = {**settings.generate_kwargs(), 'num_samples': 1, 'truncate': 'left'}
  for line in stdin:
    message = line.rstrip('\n')
    if message.strip() == '/reset':
      history = []
      continue
    if not message.strip():
      continue
    history += template.turn('user', message) + template.reply_header()
    tokens: list[int] = []
    shown = ''
    for ((completion,),) in stream(model.module, model.params, [history], eos_token_id=eos or None, chunk=1,
                                   **kwargs):
      tokens = [t for t in completion.tokens if t not in template.end_ids]
      text = model.decode(tokens) or ''
      if not text.endswith('\ufffd'):  # hold back an incomplete multi-byte character
        stdout.write(text[len(shown):])
        stdout.flush()
        shown = text
    stdout.write('\n')
    stdout.flush()
    history += tokens + template.turn_end()


class _ChatTemplate:
  """ChatML turns when the tokenizer knows <|im_start|> and <|im_end|>, else plain-text turns."""

  def __init__(self, model: LoadedModel):
    if model.tokenizer is None:
      raise ValueError(f'chat mode needs a tokenizer; {model.source} has no tokenizer.json.')
    self.model = model
    start, end = (model.tokenizer.token_to_id(t) for t in ('<|im_start|>', '<|im_end|>'))
    self.chatml = start is not None and end is not None
    self.start, self.end_ids = start, ((end,) if self.chatml else ())

  def turn(self, role: str, text: str) -> list[int]:
    if self.chatml:
      return [self.start] + self.model.encode(f'{role}\n{text}') + list(self.end_ids) + self.model.encode('\n')
    return self.model.encode(f'{role.capitalize()}: {text}\n')

  def reply_header(self) -> list[int]:
    return [self.start] + self.model.encode('assistant\n') if self.chatml else self.model.encode('Assistant:')

  def turn_end(self) -> list[int]:
    return list(self.end_ids) + self.model.encode('\n')


def main(argv: Sequence[str] | None = None) -> int:
  """Parses the flags (see --help) and runs batch or chat mode; returns the exit code."""
  parser = argparse.ArgumentParser(prog='python -m mmjax.cli_generate', description=__doc__.split('\n')[0])
  parser.add_argument('--checkpoint', required=True, help='HF directory or mmjax trainer workdir')
  parser.add_argument('--base', help='HF directory with the architecture and tokenizer of a workdir checkpoint')
  parser.add_argument('--dtype', default='float32', choices=['float32', 'bfloat16', 'float16'])
  parser.add_argument('--input', help='JSONL prompts (batch mode)')
  parser.add_argument('--output', help='JSONL completions (batch mode)')
  parser.add_argument('--chat', action='store_true', help='interactive chat on stdin')
  parser.add_argument('--max_new_tokens', type=int, default=Settings.max_new_tokens)
  parser.add_argument('--temperature', type=float, default=Settings.temperature, help='0 = greedy')
  parser.add_argument('--top_k', type=int)
  parser.add_argument('--top_p', type=float)
  parser.add_argument('--min_p', type=float)
  parser.add_argument('--num_samples', type=int, default=Settings.num_samples)
  parser.add_argument('--seed', type=int, default=Settings.seed)
  parser.add_argument('--eos_token_id', type=int, nargs='*', help="default: the checkpoint's; none: no EOS")
  parser.add_argument('--truncate', choices=['left'], help='cut the oldest tokens of too-long prompts')
  parser.add_argument('--batch_size', type=int, default=Settings.batch_size, help='prompts per generate call')
  args = parser.parse_args(argv)
  if args.chat == bool(args.input or args.output) or (not args.chat and not (args.input and args.output)):
    parser.error('pass either --chat, or --input and --output')
  settings = Settings(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                      top_p=args.top_p, min_p=args.min_p, num_samples=args.num_samples, seed=args.seed,
                      eos_token_id=None if args.eos_token_id is None else tuple(args.eos_token_id),
                      truncate=args.truncate, batch_size=args.batch_size)
  model = load_model(args.checkpoint, args.base, args.dtype)
  if args.chat:
    run_chat(model, settings)
  else:
    run_batch(model, args.input, args.output, settings)
  return 0


if __name__ == '__main__':
  sys.exit(main())
