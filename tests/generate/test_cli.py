"""The generation CLI: batch mode (JSONL in/out, HF directory or mmjax workdir) and streaming chat mode."""
import io
import json
import os
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

from mmjax import cli_generate
from mmjax.generate import generate

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ['the cat sat on the mat', 'a dog ran in the park', 'hello world, how are you today',
          'tokens stream one by one', 'the quick brown fox jumps over the lazy dog'] * 4


@pytest.fixture(scope='module')
def checkpoint(tiny, tmp_path_factory):
  """The tiny model's HF directory plus a 128-token BPE tokenizer.json with ChatML special tokens."""
  _, _, _, source = tiny
  directory = tmp_path_factory.mktemp('cli_model')
  for name in os.listdir(source):
    shutil.copy(source / name, directory / name)
  tokenizer = tokenizers.Tokenizer(models.BPE(unk_token='[UNK]'))
  tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
  tokenizer.train_from_iterator(CORPUS, trainers.BpeTrainer(
      vocab_size=100, special_tokens=['[UNK]', '<|im_start|>', '<|im_end|>']))
  tokenizer.add_tokens([f'extra{i}' for i in range(128 - tokenizer.get_vocab_size())])
  assert tokenizer.get_vocab_size() == 128
  tokenizer.save(str(directory / 'tokenizer.json'))
  return directory


def _write_jsonl(path: Path, records: list[dict]) -> Path:
  path.write_text(''.join(json.dumps(r) + '\n' for r in records))
  return path


def test_batch_mode_writes_one_line_per_completion(checkpoint, tmp_path):
  model = cli_generate.load_model(checkpoint)
  records = [{'id': 'a', 'prompt': 'the cat sat on'}, {'prompt_ids': [5, 9, 33, 2, 70, 1, 8]},
             {'id': 'c', 'prompt': 'hello world , how are you'}]
  source = _write_jsonl(tmp_path / 'in.jsonl', records)
  assert cli_generate.main(['--checkpoint', str(checkpoint), '--input', str(source), '--output',
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
  model = cli_generate.load_model(checkpoint)
  params = {'step': jnp.int32(3), 'params': model.params}
  saver = Checkpointer(str(tmp_path / 'run' / 'checkpoints'), every=1, keep=1, async_save=False)
  saver.save(3, params, {}, {'note': 'test'})
  saver.close()
  source = _write_jsonl(tmp_path / 'in.jsonl', [{'prompt': 'the dog ran'}])
  for name, args in [('hf', ['--checkpoint', str(checkpoint)]),
                     ('run', ['--checkpoint', str(tmp_path / 'run'), '--base', str(checkpoint)])]:
    cli_generate.main([*args, '--input', str(source), '--output', str(tmp_path / f'{name}.jsonl'),
                       '--max_new_tokens', '6'])
  assert (tmp_path / 'run.jsonl').read_text() == (tmp_path / 'hf.jsonl').read_text()


def test_images_with_a_text_only_model_are_a_clear_error(checkpoint, tmp_path):
  source = _write_jsonl(tmp_path / 'in.jsonl', [{'prompt': 'the cat'}, {'prompt': 'a dog', 'images': ['x.png']}])
  with pytest.raises(ValueError, match=r'in.jsonl:2: the record has images, but .* text-only Qwen2ForCausalLM'):
    cli_generate.main(['--checkpoint', str(checkpoint), '--input', str(source), '--output',
                       str(tmp_path / 'out.jsonl')])


class _Recorder(io.StringIO):
  """A stdout that remembers every write."""

  def __init__(self):
    super().__init__()
    self.writes = []

  def write(self, text: str) -> int:
    self.writes.append(text)
    return super().write(text)


def test_chat_streams_the_reply_token_by_token(checkpoint):
  model = cli_generate.load_model(checkpoint)
  out = _Recorder()
  settings = cli_generate.Settings(max_new_tokens=6)
  cli_generate.run_chat(model, settings, io.StringIO('the cat sat\n/reset\nthe cat sat\nhello\n'), out)
  replies = out.getvalue().split('\n')[:-1]
  assert len(replies) == 3 and replies[0] == replies[1], '/reset must forget the conversation'
  first = out.writes[:out.writes.index('\n')]
  assert len([w for w in first if w]) >= 3, f'the reply must arrive in pieces, got {first}'
  assert ''.join(first) == replies[0]


def test_chat_mode_in_a_subprocess_answers_each_line_before_input_ends(checkpoint):
  messages = ['the cat sat', 'how are you']
  expected = _Recorder()
  cli_generate.run_chat(cli_generate.load_model(checkpoint), cli_generate.Settings(max_new_tokens=6),
                        io.StringIO(''.join(m + '\n' for m in messages)), expected)
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=str(ROOT))
  proc = subprocess.Popen([sys.executable, '-m', 'mmjax.cli_generate', '--checkpoint', str(checkpoint), '--chat',
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
  assert cli_generate.main(args + ['--output', str(tmp_path / 'direct.jsonl')]) == 0
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
  assert cli_generate.main(['--checkpoint', str(tmp_path / 'llava'), '--input', str(source), '--output',
                            str(tmp_path / 'out.jsonl'), '--max_new_tokens', '8', '--batch_size', '2']) == 0
  lines = [json.loads(line) for line in (tmp_path / 'out.jsonl').read_text().splitlines()]
  model = cli_generate.load_model(tmp_path / 'llava')
  inputs = model.processor([r['prompt'] for r in records], [[str(tmp_path / p) for p in r.get('images', [])]
                                                            for r in records])
  expected = generate(model.module, model.params, _ids(inputs), max_new_tokens=8, **_images(inputs))
  assert [line['images'] for line in lines if 'images' in line] == [['0.png'], ['1.png', str(tmp_path / '2.png')]]
  assert [line['tokens'] for line in lines] == [completion.tokens for (completion,) in expected]
  assert len({tuple(line['tokens']) for line in lines}) == 3
