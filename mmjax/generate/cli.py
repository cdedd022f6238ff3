"""Generation from the command line: batch mode (JSONL in, JSONL out) and chat mode (stdin, streamed replies).

  python -m mmjax.generate.cli --checkpoint HF_DIR --input prompts.jsonl --output completions.jsonl
  python -m mmjax.generate.cli --checkpoint HF_DIR --chat --temperature 0.7 --top_p 0.9
  python -m mmjax.generate.cli --checkpoint WORKDIR --base HF_DIR --input prompts.jsonl --output out.jsonl
  python launch.py --mode generate -- --checkpoint HF_DIR --input prompts.jsonl --output out.jsonl

--checkpoint is an HF directory (config.json, safetensors, tokenizer.json) or an mmjax trainer workdir (the latest
step's parameters, its EMA where the run kept one), whose architecture, tokenizer and EOS ids come from the HF
directory --base.

Batch input: one JSON object per line, each holding exactly one of
  "prompt": text, tokenized with the checkpoint's tokenizer.json, or
  "prompt_ids": [int, ...], token ids;
and optionally "images": [path, ...] (multimodal models only, with "prompt" text holding one <image> placeholder
per image; relative paths are relative to the input file's folder). Other keys are copied to the output. Every
line is checked before anything is generated; an error names FILE:LINE. A prompt longer than the context less
--max_new_tokens is an error unless --truncate left.

Batch output: one JSON object per completion (--num_samples per input line), in input order: the input record plus
"input_line" (its line in the input file), "sample", "text", "tokens", "logprobs" and "finish_reason" (see
`mmjax.generate.Completion`). It is written to OUTPUT.partial and renamed to OUTPUT when every line is done, so an
existing OUTPUT is never cut short. Rerunning an interrupted command resumes: the input lines already completed in
OUTPUT.partial (or in OUTPUT) are not generated again; the decoding flags of the two runs are not compared.
Sampling is reproducible from --seed: sample s of input line n draws from stream (seed, n, s), so every line
draws independently and a resumed run samples what the uninterrupted one would have.

Chat mode reads one user message per stdin line and streams the reply token by token to stdout, ending it with a
newline; "/reset" forgets the conversation, end of input quits. Reply k of the session draws from stream (seed, k),
so a message repeated after /reset gets a fresh sample (the same reply only when greedy). --chat_template names the
conversation's template: chatml (<|im_start|>user\n...<|im_end|>\n), llama3 (<|begin_of_text|>, then
<|start_header_id|>user<|end_header_id|>\n\n...<|eot_id|>), plain ("User: ...\n" / "Assistant:" turns), or auto (the
default): the first of chatml and llama3 whose special tokens the tokenizer has, else plain. No system turn is added.
The oldest tokens are cut when the conversation outgrows the context.

Errors in the input or the flags print one line and exit 2; --debug shows the traceback instead.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from absl import logging

from mmjax.data.chat_masking import TEMPLATE_TOKENS, TEMPLATES
from mmjax.generate import as_adapter, compile_counts, generate, stream
from mmjax.models.llava_onevision import LlavaOnevisionForConditionalGeneration
from mmjax.weights.load_model import DTYPES, LoadedModel, load_model

PROG = 'python -m mmjax.generate.cli'
OUTPUT_KEYS = ('input_line', 'sample', 'text', 'tokens', 'logprobs', 'finish_reason')  # added to each input record
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)
CHAT_TEMPLATES = ('auto', *TEMPLATES, 'plain')
# The special tokens each chat template inserts ('plain': none).
CHAT_SPECIALS = {**TEMPLATE_TOKENS, 'plain': ()}


@dataclasses.dataclass(frozen=True)
class Settings:
  """Decoding settings shared by both modes (see `mmjax.generate.generate`).

  eos_token_id: None = the checkpoint's EOS ids; () = none (generation runs to max_new_tokens).
  """
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
class Request:
  """One checked input line: its number, its record, and its token ids (None for a record with images, which the
  processor tokenizes together with its images)."""
  line: int
  record: dict[str, Any]
  ids: list[int] | None
  images: list[str] | None


def read_requests(path: str | os.PathLike, model: LoadedModel, settings: Settings) -> list[Request]:
  """Every line of the input file, checked against the model and the settings; ValueError naming FILE:LINE."""
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f'--input {path}: no such file')
  adapter = as_adapter(model.module)
  room = adapter.max_context - settings.max_new_tokens
  if room < 1:
    raise ValueError(f'--max_new_tokens {settings.max_new_tokens} leaves no room for a prompt in the context of '
                     f'{adapter.max_context} tokens')
  requests = []
  with open(path, encoding='utf-8') as f:
    for number, line in enumerate(f, 1):
      if line.strip():
        requests.append(_request(line, number, f'{path}:{number}', path, model, settings, room, adapter.vocab_size))
  if not requests:
    raise ValueError(f'--input {path}: no records')
  return requests


def _request(line: str, number: int, where: str, path: Path, model: LoadedModel, settings: Settings, room: int,
             vocab_size: int) -> Request:
  try:
    record = json.loads(line)
  except json.JSONDecodeError as e:
    raise ValueError(f'{where}: not JSON ({e}).') from None
  if not isinstance(record, dict) or ('prompt' in record) == ('prompt_ids' in record):
    raise ValueError(f'{where}: a record needs exactly one of "prompt" (text) and "prompt_ids" (token ids).')
  if not isinstance(record.get('prompt', ''), str):
    raise ValueError(f'{where}: "prompt" must be text; token ids go in "prompt_ids".')
  if record.get('images'):
    images = _image_paths(record, model, path, where)
    length = _count_with_images(model, record['prompt'], images, where)
    ids = None
  else:
    images = None
    ids = record['prompt_ids'] if 'prompt_ids' in record else model.encode(record['prompt'])
    if not isinstance(ids, list) or not ids or not all(isinstance(t, int) and not isinstance(t, bool) for t in ids):
      raise ValueError(f'{where}: "prompt_ids" must be a non-empty list of ints.')
    if min(ids) < 0 or max(ids) >= vocab_size:
      raise ValueError(f'{where}: token ids must be in [0, {vocab_size}); got min {min(ids)}, max {max(ids)}.')
    length = len(ids)
  if length > room and settings.truncate != 'left':
    raise ValueError(f'{where}: the prompt has {length} tokens; with --max_new_tokens {settings.max_new_tokens} it '
                     f'exceeds the context of {room + settings.max_new_tokens} tokens by {length - room}. Shorten '
                     'it, lower --max_new_tokens, or pass --truncate left.')
  return Request(number, record, ids, images)


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
  paths = [str(path.parent / p) for p in images]
  missing = [p for p in paths if not os.path.isfile(p)]
  if missing:
    more = f' (and {len(missing) - 1} more)' if missing[1:] else ''
    raise ValueError(f'{where}: no image file {missing[0]}{more}')
  return paths


def _count_with_images(model: LoadedModel, prompt: str, images: list[str], where: str) -> int:
  """Tokens of a prompt once the processor expands its <image> placeholders (each one token before that)."""
  from PIL import Image
  sizes = []
  for p in images:
    try:
      with Image.open(p) as image:
        sizes.append((image.height, image.width))
    except (OSError, ValueError) as e:
      raise ValueError(f'{where}: cannot read image file {p}: {e}') from None
  multi = len(images) > 1
  return len(model.encode(prompt)) + sum(model.processor.num_image_tokens(s, single_crop=multi) - 1 for s in sizes)


def _finished(path: Path, requests: Sequence[Request], num_samples: int) -> dict[int, list[str]]:
  """The input lines a previous run completed in `path` (an output or partial output file): line -> its output
  lines. A completion whose record differs from the input line's is an error (the file answers another input); a
  line with fewer than num_samples completions, or a last line cut short, is dropped and generated again."""
  by_line = {r.line: r for r in requests}
  groups: dict[int, list[str]] = {}
  with open(path, encoding='utf-8') as f:
    lines = f.read().split('\n')
  for number, text in enumerate(lines, 1):
    if not text.strip():
      continue
    try:
      out = json.loads(text)
    except json.JSONDecodeError:
      if number == len(lines):  # no newline yet: an interrupted write
        break
      raise ValueError(f'{path}:{number}: not JSON, so not an output of this CLI (choose another --output)') from None
    request = by_line.get(out.get('input_line')) if isinstance(out, dict) else None
    if request is None or any(out.get(k) != v for k, v in request.record.items() if k not in OUTPUT_KEYS):
      raise ValueError(f'{path}:{number}: not a completion of a line of the current input; the file answers another '
                       'input (choose another --output, or remove it)')
    groups.setdefault(request.line, []).append(text)
  return {line: texts for line, texts in groups.items() if len(texts) == num_samples}


def run_batch(model: LoadedModel, input_path: str | os.PathLike, output_path: str | os.PathLike,
              settings: Settings) -> int:
  """Generates for every input line not yet completed and writes output_path (see the module docstring); returns
  the number of input lines generated by this call."""
  requests = read_requests(input_path, model, settings)
  output = Path(output_path)
  partial = output.with_name(output.name + '.partial')
  source = partial if partial.exists() else output if output.exists() else None
  done = _finished(source, requests, settings.num_samples) if source else {}
  pending = [r for r in requests if r.line not in done]
  if not pending and source == output:
    logging.warning('%s already holds every completion of %s; nothing to generate.', output, input_path)
    return 0
  if done:
    logging.info('Resuming %s: %d of %d input lines are done.', source, len(done), len(requests))
  eos = model.eos_token_id if settings.eos_token_id is None else settings.eos_token_id
  with open(partial, 'w', encoding='utf-8') as out:
    out.writelines(text + '\n' for r in requests if r.line in done for text in done[r.line])
    for begin in range(0, len(pending), settings.batch_size):
      chunk = pending[begin:begin + settings.batch_size]
      prompts, model_inputs = _chunk_inputs(model, chunk)
      # Each input line draws its own samples (request id = line number), the same after a resume.
      results = generate(model.module, model.params, prompts, eos_token_id=eos or None,
                         request_ids=[r.line for r in chunk], **settings.generate_kwargs(), **model_inputs)
      for request, completions in zip(chunk, results):
        for sample, c in enumerate(completions):
          out.write(json.dumps({**request.record, 'input_line': request.line, 'sample': sample,
                                'text': model.decode(c.tokens), 'tokens': c.tokens,
                                'logprobs': [round(float(x), 6) for x in c.logprobs],
                                'finish_reason': c.finish_reason}) + '\n')
      out.flush()
      os.fsync(out.fileno())
  os.replace(partial, output)
  logging.info('Wrote %d input lines (%d generated) to %s; compilations: %s', len(requests), len(pending), output,
               compile_counts())
  return len(pending)


def _chunk_inputs(model: LoadedModel, chunk: Sequence[Request]) -> tuple[list[list[int]], dict[str, Any]]:
  """(prompt ids, model inputs) of a chunk: the records with images go through the processor together, so its
  image inputs hold their images in prompt order (`mmjax.generate.llava`'s rule)."""
  prompts = [r.ids for r in chunk]
  with_images = [i for i, r in enumerate(chunk) if r.images]
  if not with_images:
    return prompts, {}
  inputs = model.processor([chunk[i].record['prompt'] for i in with_images], images=[chunk[i].images
                                                                                      for i in with_images])
  per_prompt = [0] * len(chunk)
  for i, ids, mask, count in zip(with_images, inputs['input_ids'], inputs['attention_mask'],
                                 inputs['batch_num_images']):
    prompts[i], per_prompt[i] = ids[mask.astype(bool)].tolist(), int(count)
  return prompts, dict(pixel_values=inputs['pixel_values'], image_sizes=inputs['image_sizes'],
                       batch_num_images=per_prompt)


def run_chat(model: LoadedModel, settings: Settings, stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout,
             chat_template: str = 'auto') -> None:
  """The interactive loop (see the module docstring): one message per line, replies streamed as produced, in the
  conversation template chat_template (one of CHAT_TEMPLATES)."""
  template = _ChatTemplate(model, chat_template)
  eos = settings.eos_token_id if settings.eos_token_id is not None else model.eos_token_id
  eos = tuple(eos) + template.end_ids
  history: list[int] = []
  kwargs = {**settings.generate_kwargs(), 'num_samples': 1, 'truncate': 'left'}
  turn = 0  # each reply draws its own samples (request id = turn), also after /reset
  for line in stdin:
    message = line.rstrip('\n')
    if message.strip() == '/reset':
      history = []
      continue
    if not message.strip():
      continue
    if not history:
      history = template.start()
    history += template.turn('user', message) + template.reply_header()
    tokens: list[int] = []
    shown = ''
    for ((completion,),) in stream(model.module, model.params, [history], eos_token_id=eos or None, chunk=1,
                                   request_ids=[turn], **kwargs):
      tokens = [t for t in completion.tokens if t not in template.end_ids]
      text = model.decode(tokens) or ''
      if not text.endswith('\ufffd'):  # hold back an incomplete multi-byte character
        stdout.write(text[len(shown):])
        stdout.flush()
        shown = text
    stdout.write('\n')
    stdout.flush()
    history += tokens + template.turn_end()
    turn += 1


class _ChatTemplate:
  """The token ids of a conversation's turns in a chat template (see the module docstring)."""

  def __init__(self, model: LoadedModel, name: str):
    if name not in CHAT_TEMPLATES:
      raise ValueError(f'unknown chat template {name!r}; choose one of {list(CHAT_TEMPLATES)}.')
    if model.tokenizer is None:
      raise ValueError(f'chat mode needs a tokenizer; {model.source} has no tokenizer.json.')
    self.model = model
    self.ids = {t: model.tokenizer.token_to_id(t) for t in sum(CHAT_SPECIALS.values(), ())}
    if name == 'auto':
      name = next(n for n in CHAT_SPECIALS if all(self.ids[t] is not None for t in CHAT_SPECIALS[n]))
    missing = [t for t in CHAT_SPECIALS[name] if self.ids[t] is None]
    if missing:
      raise ValueError(f'--chat_template {name}: the tokenizer of {model.source} lacks {missing}.')
    self.name = name
    self.end_ids = {'chatml': (self.ids['<|im_end|>'],), 'llama3': (self.ids['<|eot_id|>'],), 'plain': ()}[name]

  def encode(self, text: str) -> list[int]:
    """Text between the template's special tokens (a tokenizer's own post-processing, e.g. a BOS, is not added)."""
    return self.model.tokenizer.encode(text, add_special_tokens=False).ids

  def start(self) -> list[int]:
    """The tokens before a conversation's first turn."""
    return [self.ids['<|begin_of_text|>']] if self.name == 'llama3' else []

  def turn(self, role: str, text: str) -> list[int]:
    if self.name == 'chatml':
      return [self.ids['<|im_start|>']] + self.encode(f'{role}\n{text}') + self.turn_end()
    if self.name == 'llama3':  # the official template strips every message
      return self._header(role) + self.encode(text.strip()) + self.turn_end()
    return self.encode(f'{role.capitalize()}: {text}\n')

  def reply_header(self) -> list[int]:
    if self.name == 'chatml':
      return [self.ids['<|im_start|>']] + self.encode('assistant\n')
    return self._header('assistant') if self.name == 'llama3' else self.encode('Assistant:')

  def turn_end(self) -> list[int]:
    return list(self.end_ids) + (self.encode('\n') if self.name != 'llama3' else [])

  def _header(self, role: str) -> list[int]:
    return ([self.ids['<|start_header_id|>']] + self.encode(role) + [self.ids['<|end_header_id|>']]
            + self.encode('\n\n'))


def _eos_ids(values: list[str]) -> tuple[int, ...]:
  """--eos_token_id values: `none` (no EOS) or token ids."""
  if [v.lower() for v in values] == ['none']:
    return ()
  try:
    return tuple(int(v) for v in values)
  except ValueError:
    raise argparse.ArgumentTypeError(f'--eos_token_id takes token ids or none, got {" ".join(values)}') from None


def parser() -> argparse.ArgumentParser:
  """The flags; --help prints them with the module docstring (the record formats)."""
  p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--checkpoint', required=True, help='HF directory or mmjax trainer workdir')
  p.add_argument('--base', help='HF directory with the architecture and tokenizer of a workdir checkpoint')
  p.add_argument('--dtype', default='float32', choices=DTYPES)
  p.add_argument('--input', help='JSONL prompts (batch mode; format above)')
  p.add_argument('--output', help='JSONL completions (batch mode; written via OUTPUT.partial, resumable)')
  p.add_argument('--chat', action='store_true', help='interactive chat on stdin')
  p.add_argument('--chat_template', default='auto', choices=CHAT_TEMPLATES, help='chat mode: the conversation template')
  p.add_argument('--max_new_tokens', type=int, default=Settings.max_new_tokens)
  p.add_argument('--temperature', type=float, default=Settings.temperature, help='0 = greedy')
  p.add_argument('--top_k', type=int)
  p.add_argument('--top_p', type=float)
  p.add_argument('--min_p', type=float)
  p.add_argument('--num_samples', type=int, default=Settings.num_samples, help='completions per input line')
  p.add_argument('--seed', type=int, default=Settings.seed)
  p.add_argument('--eos_token_id', nargs='+', metavar='ID',
                 help="token ids that end a completion (default: the checkpoint's); none: no EOS")
  p.add_argument('--truncate', choices=['left'], help='cut the oldest tokens of too-long prompts')
  p.add_argument('--batch_size', type=int, default=Settings.batch_size, help='input lines per generate call')
  p.add_argument('--debug', action='store_true', help='show the traceback of an error instead of one line')
  return p


def main(argv: Sequence[str] | None = None) -> int:
  """Parses the flags (see --help) and runs batch or chat mode; returns the exit code (2: an error in the input or
  the flags, printed as one line)."""
  p = parser()
  args = p.parse_args(argv)
  if args.chat == bool(args.input or args.output) or (not args.chat and not (args.input and args.output)):
    p.error('pass either --chat, or --input and --output')
  try:
    eos = None if args.eos_token_id is None else _eos_ids(args.eos_token_id)
  except argparse.ArgumentTypeError as e:
    p.error(str(e))
  settings = Settings(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                      top_p=args.top_p, min_p=args.min_p, num_samples=args.num_samples, seed=args.seed,
                      eos_token_id=eos, truncate=args.truncate, batch_size=args.batch_size)
  try:
    if args.input and not os.path.isfile(args.input):  # before the model loads
      raise FileNotFoundError(f'--input {args.input}: no such file')
    if args.output and os.path.abspath(args.output) == os.path.abspath(args.input or ''):
      raise ValueError('--output must not be the --input file')
    model = load_model(args.checkpoint, args.base, args.dtype)
    if args.chat:
      run_chat(model, settings, chat_template=args.chat_template)
    else:
      run_batch(model, args.input, args.output, settings)
  except USER_ERRORS as e:
    if args.debug:
      raise
    sys.stderr.write(f'{PROG}: error: {e}\n')
    return 2
  return 0


if __name__ == '__main__':
  sys.exit(main())
