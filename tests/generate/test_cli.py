"""The generation CLI: batch mode (JSONL in/out, HF directory or mmjax workdir; input checked up front, output
written atomically and resumed) and streaming chat mode."""
import io
import json
import os
import re
import selectors
import shutil
import subprocess
import sys
import time
from pathlib import Path

import jax.numpy as jnp
import pytest
import tokenizers
from tokenizers import models, pre_tokenizers, trainers

from mmjax.data.chat_masking import render_chat
from mmjax.generate import cli, generate
from mmjax.weights.load_model import load_model

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ['the cat sat on the mat', 'a dog ran in the park', 'hello world, how are you today',
          'tokens stream one by one', 'the quick brown fox jumps over the lazy dog'] * 4


def _checkpoint(source: Path, directory: Path, special_tokens: list[str]) -> Path:
  """The tiny model's HF directory `source` copied to `directory` plus a 128-token BPE tokenizer.json."""
  for name in os.listdir(source):
    shutil.copy(source / name, directory / name)
  tokenizer = tokenizers.Tokenizer(models.BPE(unk_token='[UNK]'))
  tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
  tokenizer.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=100, special_tokens=['[UNK]', *special_tokens]))
  tokenizer.add_tokens([f'extra{i}' for i in range(128 - tokenizer.get_vocab_size())])
  assert tokenizer.get_vocab_size() == 128
  tokenizer.save(str(directory / 'tokenizer.json'))
  return directory


@pytest.fixture(scope='module')
def checkpoint(tiny, tmp_path_factory):
  """The tiny model with a tokenizer that has the ChatML special tokens."""
  return _checkpoint(tiny[3], tmp_path_factory.mktemp('cli_model'), ['<|im_start|>', '<|im_end|>'])


def _write_jsonl(path: Path, records: list[dict]) -> Path:
  path.write_text(''.join(json.dumps(r) + '\n' for r in records))
  return path


def test_batch_mode_writes_one_line_per_completion(checkpoint, tmp_path):
  model = load_model(checkpoint)
  records = [{'id': 'a', 'prompt': 'the cat sat on'}, {'prompt_ids': [5, 9, 33, 2, 70, 1, 8]},
             {'id': 'c', 'prompt': 'hello world , how are you'}]
  source = _write_jsonl(tmp_path / 'in.jsonl', records)
  assert cli.main(['--checkpoint', str(checkpoint), '--input', str(source), '--output',
                            str(tmp_path / 'out.jsonl'), '--max_new_tokens', '6', '--batch_size', '4']) == 0
  lines = [json.loads(line) for line in (tmp_path / 'out.jsonl').read_text().splitlines()]
  prompts = [model.encode(records[0]['prompt']), records[1]['prompt_ids'], model.encode(records[2]['prompt'])]
  expected = generate(model.module, model.params, prompts, max_new_tokens=6)
  assert [line.get('id') for line in lines] == ['a', None, 'c']
  for line, (completion,) in zip(lines, expected):
    assert line['tokens'] == completion.tokens and line['finish_reason'] == 'length' and line['sample'] == 0
    assert line['text'] == model.decode(completion.tokens) and line['text']
    assert line['logprobs'] == pytest.approx(completion.logprobs.tolist(), abs=1e-5)


def test_batch_mode_reads_an_mmjax_workdir(checkpoint, tmp_path):
  from mmjax.train.checkpoint import Checkpointer
  model = load_model(checkpoint)
  params = {'step': jnp.int32(3), 'params': model.params}
  saver = Checkpointer(str(tmp_path / 'run' / 'checkpoints'), every=1, keep=1, async_save=False)
  saver.save(3, params, {}, {'note': 'test'})
  saver.close()
  source = _write_jsonl(tmp_path / 'in.jsonl', [{'prompt': 'the dog ran'}])
  for name, args in [('hf', ['--checkpoint', str(checkpoint)]),
                     ('run', ['--checkpoint', str(tmp_path / 'run'), '--base', str(checkpoint)])]:
    assert cli.main([*args, '--input', str(source), '--output', str(tmp_path / f'{name}.jsonl'),
                     '--max_new_tokens', '6']) == 0
  assert (tmp_path / 'run.jsonl').read_text() == (tmp_path / 'hf.jsonl').read_text()


def test_images_with_a_text_only_model_are_a_clear_error(checkpoint, tmp_path, capsys):
  source = _write_jsonl(tmp_path / 'in.jsonl', [{'prompt': 'the cat'}, {'prompt': 'a dog', 'images': ['x.png']}])
  assert cli.main(['--checkpoint', str(checkpoint), '--input', str(source), '--output',
                   str(tmp_path / 'out.jsonl')]) == 2
  assert re.search(r'in.jsonl:2: the record has images, but .* text-only Qwen2ForCausalLM', capsys.readouterr().err)
  with pytest.raises(ValueError, match=r'in.jsonl:2: the record has images'):
    cli.main(['--checkpoint', str(checkpoint), '--input', str(source), '--output', str(tmp_path / 'out.jsonl'),
              '--debug'])


def _lines(path: Path) -> list[dict]:
  return [json.loads(line) for line in path.read_text().splitlines()]


def test_every_line_is_checked_before_generating_and_errors_name_the_line(checkpoint, tmp_path, capsys, monkeypatch):
  calls = []
  monkeypatch.setattr(cli, 'generate', lambda *a, **k: calls.append(a) or generate(*a, **k))
  room = 10  # the tiny model's context is 32768 tokens
  args = ['--checkpoint', str(checkpoint), '--max_new_tokens', str(32768 - room), '--output', str(tmp_path / 'o.jsonl')]
  cases = [
      ([{'prompt_ids': [1] * room}, {'prompt': 'a dog'}, {'prompt_ids': [5] * (room + 3)}],
       'in.jsonl:3: the prompt has 13 tokens; with --max_new_tokens 32758 it exceeds the context of 32768 tokens by 3. '
       'Shorten it, lower --max_new_tokens, or pass --truncate left.'),
      ([{'prompt': 'a dog'}, {'prompt_ids': [1, 128]}], 'in.jsonl:2: token ids must be in [0, 128)'),
      ([{'prompt': 'a dog'}, {'prompt_ids': []}], 'in.jsonl:2: "prompt_ids" must be a non-empty list of ints'),
      ([{'prompt': 'a dog'}, {'text': 'no prompt'}], 'in.jsonl:2: a record needs exactly one of "prompt"'),
  ]
  for records, message in cases:
    source = _write_jsonl(tmp_path / 'in.jsonl', records)
    assert cli.main(args + ['--input', str(source)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(message) or message in err.splitlines()[-1], err
    assert 'Traceback' not in err
  assert calls == []
  assert not (tmp_path / 'o.jsonl').exists() and not (tmp_path / 'o.jsonl.partial').exists()
  long = _write_jsonl(tmp_path / 'in.jsonl', [{'prompt_ids': [5] * (room + 3)}])
  assert cli.main(args + ['--input', str(long), '--max_new_tokens', '2', '--truncate', 'left']) == 0


def test_output_is_written_atomically_and_an_interrupted_run_resumes(checkpoint, tmp_path, monkeypatch):
  source = _write_jsonl(tmp_path / 'in.jsonl', [{'id': i, 'prompt': p} for i, p in enumerate(
      ['the cat sat', 'a dog ran', 'hello world', 'the quick fox'])])
  args = ['--checkpoint', str(checkpoint), '--input', str(source), '--max_new_tokens', '4', '--batch_size', '1',
          '--num_samples', '2', '--temperature', '1.0']
  assert cli.main(args + ['--output', str(tmp_path / 'whole.jsonl')]) == 0
  whole = (tmp_path / 'whole.jsonl').read_text()
  assert [(r['input_line'], r['sample']) for r in _lines(tmp_path / 'whole.jsonl')] == [
      (line, sample) for line in (1, 2, 3, 4) for sample in (0, 1)]

  out, partial = tmp_path / 'out.jsonl', tmp_path / 'out.jsonl.partial'
  out.write_text('{"note": "another run"}\n')
  assert cli.main(args + ['--output', str(out)]) == 2  # an output of something else is never cut short
  assert out.read_text() == '{"note": "another run"}\n' and not partial.exists()
  out.unlink()

  calls = []

  def interrupted(*a, **k):
    if len(calls) == 2:
      raise KeyboardInterrupt('simulated interruption')
    calls.append(a[2])
    return generate(*a, **k)

  monkeypatch.setattr(cli, 'generate', interrupted)
  with pytest.raises(KeyboardInterrupt):
    cli.main(args + ['--output', str(out)])
  assert not out.exists() and [r['input_line'] for r in _lines(partial)] == [1, 1, 2, 2]
  with open(partial, 'a') as f:
    f.write('{"id": 2, "prompt": "hello wor')  # a write cut short by the interruption
  calls.clear()
  monkeypatch.setattr(cli, 'generate', lambda *a, **k: calls.append(a[2]) or generate(*a, **k))
  assert cli.main(args + ['--output', str(out)]) == 0
  assert len(calls) == 2, 'only lines 3 and 4 are generated again'
  assert out.read_text() == whole and not partial.exists()
  calls.clear()
  assert cli.main(args + ['--output', str(out)]) == 0
  assert calls == [] and out.read_text() == whole


def test_eos_token_id_flag(checkpoint, tmp_path):
  source = _write_jsonl(tmp_path / 'in.jsonl', [{'prompt': 'the cat sat on'}])
  args = ['--checkpoint', str(checkpoint), '--input', str(source), '--max_new_tokens', '5']
  assert cli.main(args + ['--output', str(tmp_path / 'a.jsonl'), '--eos_token_id', 'none']) == 0
  free, = _lines(tmp_path / 'a.jsonl')
  assert free['finish_reason'] == 'length' and len(free['tokens']) == 5
  stop = free['tokens'][1]
  assert cli.main(args + ['--output', str(tmp_path / 'b.jsonl'), '--eos_token_id', str(stop)]) == 0
  stopped, = _lines(tmp_path / 'b.jsonl')
  assert stopped['finish_reason'] == 'eos' and stopped['tokens'] == free['tokens'][:free['tokens'].index(stop) + 1]
  with pytest.raises(SystemExit) as e:
    cli.main(args + ['--output', str(tmp_path / 'c.jsonl'), '--eos_token_id', 'never'])
  assert e.value.code == 2


def test_help_documents_the_record_formats():
  text = cli.parser().format_help()
  for field in ('"prompt"', '"prompt_ids"', '"images"', '"input_line"', '"finish_reason"', 'OUTPUT.partial',
                '--truncate left', 'none: no EOS'):
    assert field in text, field


class _Recorder(io.StringIO):
  """A stdout that remembers every write."""

  def __init__(self):
    super().__init__()
    self.writes = []

  def write(self, text: str) -> int:
    self.writes.append(text)
    return super().write(text)


def test_chat_streams_the_reply_token_by_token(checkpoint):
  model = load_model(checkpoint)
  out = _Recorder()
  settings = cli.Settings(max_new_tokens=6)
  cli.run_chat(model, settings, io.StringIO('the cat sat\n/reset\nthe cat sat\nhello\n'), out)
  replies = out.getvalue().split('\n')[:-1]
  assert len(replies) == 3 and replies[0] == replies[1], '/reset must forget the conversation'
  first = out.writes[:out.writes.index('\n')]
  assert len([w for w in first if w]) >= 3, f'the reply must arrive in pieces, got {first}'
  assert ''.join(first) == replies[0]


def test_chat_replies_sample_afresh_after_reset_and_reproduce_from_the_seed(checkpoint):
  model = load_model(checkpoint)
  settings = cli.Settings(max_new_tokens=8, temperature=1.0, seed=5)

  def chat() -> list[str]:
    out = io.StringIO()
    cli.run_chat(model, settings, io.StringIO('the cat sat\n/reset\nthe cat sat\n/reset\nthe cat sat\n'), out)
    return out.getvalue().split('\n')[:-1]

  replies = chat()
  assert len(replies) == 3 and len(set(replies)) > 1, 'the same message after /reset drew the same sample'
  assert chat() == replies


def test_chat_in_the_llama3_template(tiny, tmp_path):
  """auto picks llama3 from the tokenizer's special tokens; a turn's tokens are the official rendering's."""
  llama3 = ['<|begin_of_text|>', '<|start_header_id|>', '<|end_header_id|>', '<|eot_id|>']
  model = load_model(_checkpoint(tiny[3], tmp_path, llama3))
  template = cli._ChatTemplate(model, 'auto')
  assert template.name == 'llama3' and template.end_ids == (model.tokenizer.token_to_id('<|eot_id|>'),)
  tokens = template.start() + template.turn('user', ' the cat sat ') + template.reply_header()
  text = render_chat([{'from': 'human', 'value': ' the cat sat '}], template='llama3', add_generation_prompt=True)
  assert tokens == model.tokenizer.encode(text, add_special_tokens=False).ids
  out = io.StringIO()
  cli.run_chat(model, cli.Settings(max_new_tokens=4), io.StringIO('the cat sat\n'), out, chat_template='llama3')
  assert out.getvalue().count('\n') == 1
  with pytest.raises(ValueError, match=r"--chat_template chatml: the tokenizer of .* lacks \['<\|im_start\|>'"):
    cli._ChatTemplate(model, 'chatml')


def test_chat_mode_in_a_subprocess_answers_each_line_before_input_ends(checkpoint):
  messages = ['the cat sat', 'how are you']
  expected = _Recorder()
  cli.run_chat(load_model(checkpoint), cli.Settings(max_new_tokens=6),
                        io.StringIO(''.join(m + '\n' for m in messages)), expected)
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=str(ROOT))
  proc = subprocess.Popen([sys.executable, '-m', 'mmjax.generate.cli', '--checkpoint', str(checkpoint), '--chat',
                           '--max_new_tokens', '6'], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
  try:
    replies = []
    for message in messages:
      proc.stdin.write(message + '\n')
      proc.stdin.flush()
      replies.append(_read_line(proc, timeout=120))
      assert proc.poll() is None, 'chat mode must wait for the next message'
    proc.stdin.close()
    assert proc.wait(timeout=60) == 0, proc.stderr.read()
  finally:
    proc.kill()
  assert '\n'.join(replies) + '\n' == expected.getvalue()


def _read_line(proc: subprocess.Popen, timeout: float) -> str:
  """The next stdout line of a running process; fails after `timeout` seconds."""
  selector = selectors.DefaultSelector()
  selector.register(proc.stdout, selectors.EVENT_READ)
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if selector.select(timeout=1):
      return proc.stdout.readline().rstrip('\n')
    assert proc.poll() is None, proc.stderr.read()
  raise TimeoutError(f'no reply within {timeout} s')


def test_launch_py_generate_mode_runs_the_batch_cli(checkpoint, tmp_path):
  prompts = _write_jsonl(tmp_path / 'in.jsonl', [{'id': 'a', 'prompt': 'the cat sat on'},
                                                  {'id': 'b', 'prompt': 'hello world'}])
  args = ['--checkpoint', str(checkpoint), '--input', str(prompts), '--max_new_tokens', '5']
  assert cli.main(args + ['--output', str(tmp_path / 'direct.jsonl')]) == 0
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  proc = subprocess.run([sys.executable, 'launch.py', '--mode=generate', '--', *args,
                         '--output', str(tmp_path / 'launch.jsonl')], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  launched = (tmp_path / 'launch.jsonl').read_text()
  assert launched == (tmp_path / 'direct.jsonl').read_text()
  assert len(launched.splitlines()) == 2


def test_batch_mode_with_images_on_llava_onevision(tmp_path):
  """Records with one and two images (relative paths) and one without, split over two generate calls: each gets
  the tokens of one call over all records (the processor's images in prompt order)."""
  from tests.generate.test_llava import ONE, TEXT_ONLY, TWO, _ids, _images, save_tiny_llava
  from tests.models.test_llava_processor import _image
  save_tiny_llava(tmp_path / 'llava')
  for i, size in enumerate([(40, 90), (30, 50), (64, 32)]):
    _image(*size, i).save(tmp_path / f'{i}.png')
  records = [{'prompt': ONE, 'images': ['0.png']}, {'prompt': TEXT_ONLY},
             {'prompt': TWO, 'images': ['1.png', str(tmp_path / '2.png')]}]
  source = _write_jsonl(tmp_path / 'in.jsonl', records)
  assert cli.main(['--checkpoint', str(tmp_path / 'llava'), '--input', str(source), '--output',
                            str(tmp_path / 'out.jsonl'), '--max_new_tokens', '8', '--batch_size', '2']) == 0
  lines = [json.loads(line) for line in (tmp_path / 'out.jsonl').read_text().splitlines()]
  model = load_model(tmp_path / 'llava')
  inputs = model.processor([r['prompt'] for r in records], [[str(tmp_path / p) for p in r.get('images', [])]
                                                            for r in records])
  expected = generate(model.module, model.params, _ids(inputs), max_new_tokens=8, **_images(inputs))
  assert [line['images'] for line in lines if 'images' in line] == [['0.png'], ['1.png', str(tmp_path / '2.png')]]
  assert [line['tokens'] for line in lines] == [completion.tokens for (completion,) in expected]
  assert len({tuple(line['tokens']) for line in lines}) == 3
