"""--mode generate: CoverBench with a tiny random Qwen2 and MMIU with a tiny random LLaVA-OneVision, end to end through
launch.py, and resuming an interrupted run without answering finished examples again."""
import json
import os
import subprocess
import sys
import time

import pytest

from configs.coverbench import get_config as coverbench_config
from configs.mmiu import get_config as mmiu_config
from experiments.coverbench import experiment as coverbench
from experiments.coverbench.synthetic import write_synthetic_coverbench
from experiments.mmiu import experiment as mmiu
from experiments.mmiu.synthetic import write_synthetic_mmiu
from mmjax.evals.programs import model_responder, run_generate
from mmjax.evals.prompt import Prompt
from tests.hf_models import WIDE, save_llava_folder, save_qwen2, save_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MMIU_KEYS = ('forensic_detection_blink', 'spot_the_diff', 'temporal_ordering', 'jigsaw_puzzle_solving')
# Small enough that CoverBench contexts are cut from the left (and exercise truncation).
COVERBENCH_WINDOW = 448


@pytest.fixture(scope='module')
def qwen2_dir(tmp_path_factory):
  directory = tmp_path_factory.mktemp('qwen2_chat')
  tokenizer = save_tokenizer(directory)
  save_qwen2(directory, **WIDE, vocab_size=tokenizer.get_vocab_size(), eos_token_id=tokenizer.token_to_id('<|im_end|>'))
  return str(directory)


@pytest.fixture(scope='module')
def llava_dir(tmp_path_factory):
  directory = tmp_path_factory.mktemp('llava_ov')
  save_llava_folder(directory)
  return str(directory)


@pytest.fixture(scope='module')
def coverbench_file(tmp_path_factory):
  return write_synthetic_coverbench(str(tmp_path_factory.mktemp('cb') / 'eval.jsonl'), n=8, seed=3, filler=2)


@pytest.fixture(scope='module')
def mmiu_file(tmp_path_factory):
  return write_synthetic_mmiu(str(tmp_path_factory.mktemp('mmiu')), per_key=1, keys=MMIU_KEYS, seed=4)


def _launch(config, workdir, *overrides):
  start = time.perf_counter()
  out = subprocess.run([sys.executable, 'launch.py', '--config', config, '--workdir', str(workdir), *overrides,
                        '--config.progress_bar=False'], cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
  assert out.returncode == 0, out.stderr[-3000:]
  return json.load(open(os.path.join(workdir, 'summary.json'))), time.perf_counter() - start


def _reports(workdir):
  for name in ('summary.md', 'summary.png', 'responses.jsonl', 'run_info.json'):
    assert os.path.getsize(os.path.join(workdir, name)) > 0, name
  with open(os.path.join(workdir, 'summary.png'), 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'


def test_coverbench_generate_through_launch(qwen2_dir, coverbench_file, tmp_path):
  s, seconds = _launch('configs/coverbench.py', tmp_path, '--mode=generate', f'--config.data_file={coverbench_file}',
                       f'--config.checkpoint={qwen2_dir}', '--config.batch_size=4', '--config.max_new_tokens=8',
                       f'--config.context_tokens={COVERBENCH_WINDOW}')
  assert {'macro_f1', 'per_source', 'n', 'unparsed', 'reprompted', 'truncated', 'throughput'} <= set(s)
  assert s['n'] == 8 and set(s['per_source']) == {'FinQA', 'TabFact', 'ContractNLI'}
  assert 0 <= s['macro_f1'] <= 100 and s['truncated'] > 0
  assert s['throughput']['generated'] == 8 and s['throughput']['examples_per_s'] > 0
  _reports(tmp_path)
  print(f"coverbench tiny qwen2: {s['throughput']['examples_per_s']:.2f} examples/s "
        f"({s['throughput']['seconds']:.1f} s generating, {seconds:.1f} s with launch)")


def test_mmiu_generate_through_launch(llava_dir, mmiu_file, tmp_path):
  s, seconds = _launch('configs/mmiu.py', tmp_path, f'--config.data_file={mmiu_file}',
                       f'--config.checkpoint={llava_dir}', '--config.batch_size=2', '--config.max_new_tokens=8')
  assert {'overall', 'per_task', 'per_relation', 'n', 'unmatched', 'throughput'} <= set(s)
  assert s['n'] == 4 and len(s['per_task']) == 4 and 0 <= s['overall'] <= 100
  assert s['throughput']['generated'] == 4 and s['throughput']['examples_per_s'] > 0
  _reports(tmp_path)
  print(f"mmiu tiny llava-ov: {s['throughput']['examples_per_s']:.2f} examples/s "
        f"({s['throughput']['seconds']:.1f} s generating, {seconds:.1f} s with launch)")


class _Counting:
  """Wraps a responder: records the prompts it answers; with `stop_after`, a call that asks about new examples
  (prompts without an assistant prefix, i.e. not re-prompts) once `stop_after` were asked is interrupted."""

  def __init__(self, responder, stop_after=None):
    self.responder, self.stop_after = responder, stop_after
    self.max_context_tokens = responder.max_context_tokens
    self.answered: list[Prompt] = []
    self.examples = 0

  def count_tokens(self, prompt):
    return self.responder.count_tokens(prompt)

  def respond(self, prompts):
    fresh = sum(not p.assistant_prefix for p in prompts)
    if self.stop_after is not None and fresh and self.examples >= self.stop_after:
      raise KeyboardInterrupt('simulated interruption')
    self.examples += fresh
    self.answered += prompts
    return self.responder.respond(prompts)


def _resume(task, config, tmp_path, stop_after):
  """(uninterrupted summary, resumed summary, the resumed run's responder, records before resuming)."""
  responder = model_responder(task, config)
  whole = run_generate(task, config, str(tmp_path / 'whole'), responder=_Counting(responder))
  with pytest.raises(KeyboardInterrupt):
    run_generate(task, config, str(tmp_path / 'cut'), responder=_Counting(responder, stop_after))
  assert not os.path.exists(tmp_path / 'cut' / 'summary.json')
  with open(tmp_path / 'cut' / 'responses.jsonl') as f:
    done = [json.loads(line)['id'] for line in f]
  counter = _Counting(responder)
  resumed = run_generate(task, config, str(tmp_path / 'cut'), responder=counter)
  for s in (whole, resumed):
    s.pop('throughput')
  return whole, resumed, counter, done


def test_coverbench_resume_answers_only_the_missing_examples(qwen2_dir, coverbench_file, tmp_path):
  config = coverbench_config()
  config.data_file, config.checkpoint = coverbench_file, qwen2_dir
  config.batch_size, config.max_new_tokens, config.context_tokens = 4, 8, COVERBENCH_WINDOW
  config.progress_bar = False
  whole, resumed, counter, done = _resume(coverbench.TASK, config, tmp_path, stop_after=4)
  # The cut run finished batch 0-3 (with its re-prompts); the rerun asks only about 4-7 (and their re-prompts),
  # with the same prompts as the uninterrupted run.
  assert done == [0, 1, 2, 3]
  bench = coverbench.load(config, coverbench_file)
  expected = [bench.prompt(i, counter)[0] for i in range(4, 8)]
  assert counter.answered[:4] == expected
  reprompts = counter.answered[4:]
  assert all(p.assistant_prefix for p in reprompts) and len(reprompts) <= 4
  assert resumed == whole
  with open(tmp_path / 'whole' / 'responses.jsonl') as f:
    a = sorted(f.read().splitlines())
  with open(tmp_path / 'cut' / 'responses.jsonl') as f:
    assert sorted(f.read().splitlines()) == a


def test_mmiu_resume_answers_only_the_missing_questions(llava_dir, mmiu_file, tmp_path):
  config = mmiu_config()
  config.data_file, config.checkpoint = mmiu_file, llava_dir
  config.batch_size, config.max_new_tokens, config.progress_bar = 2, 8, False
  whole, resumed, counter, done = _resume(mmiu.TASK, config, tmp_path, stop_after=2)
  assert done == [0, 1]
  bench = mmiu.load(config, mmiu_file)
  assert counter.answered == [bench.prompt(i, counter)[0] for i in (2, 3)]
  assert resumed == whole
  # The token count the benchmark fits prompts with is the processor's, for several images and for one (AnyRes).
  responder = counter.responder
  for prompt in (counter.answered[0], Prompt('Which?', counter.answered[0].images[:1])):
    assert responder.count_tokens(prompt) == responder.model_inputs(prompt)['input_ids'].shape[1]


def test_clear_errors(qwen2_dir, coverbench_file, tmp_path):
  generate = coverbench.PROGRAMS['generate']
  config = coverbench_config()
  config.data_file, config.checkpoint = str(tmp_path / 'missing.jsonl'), qwen2_dir
  with pytest.raises(FileNotFoundError, match='missing.jsonl: no such data file'):
    generate(config, str(tmp_path / 'a'))
  config.data_file, config.checkpoint = coverbench_file, str(tmp_path / 'no_model')
  with pytest.raises(FileNotFoundError, match='no_model: no such directory'):
    generate(config, str(tmp_path / 'b'))
  config.checkpoint = ''
  with pytest.raises(ValueError, match='set --config.checkpoint'):
    generate(config, str(tmp_path / 'c'))
  with pytest.raises(ValueError, match="variant must be one of default, smoke, got 'train'"):
    coverbench_config('variant=train')


def test_chat_responder_renders_chatml_and_counts_its_tokens(qwen2_dir):
  from mmjax.evals.responders import ChatResponder
  responder = ChatResponder(qwen2_dir, max_new_tokens=4, context_tokens=64)
  prompt = Prompt('Is it correct?', assistant_prefix='No.\nFinal answer (correct or incorrect):')
  text = responder.render(prompt)
  assert text == ('<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nIs it correct?'
                  '<|im_end|>\n<|im_start|>assistant\nNo.\nFinal answer (correct or incorrect):')
  assert responder.count_tokens(prompt) == len(responder.tokenizer.encode(text).ids)
  assert responder.max_context_tokens == 60
  assert responder.eos_token_id == (responder.tokenizer.token_to_id('<|im_end|>'),)
  one, = responder.respond([prompt])
  assert responder.respond([Prompt('x'), prompt, Prompt('y')])[1] == one  # batching does not change the answer
  with pytest.raises(ValueError, match=r"no \['<\|begin_of_text\|>'.* so it has no llama3 template"):
    ChatResponder(qwen2_dir, max_new_tokens=4, context_tokens=64, chat_template='llama3')
  with pytest.raises(ValueError, match="unknown chat_template 'vicuna'"):
    ChatResponder(qwen2_dir, max_new_tokens=4, context_tokens=64, chat_template='vicuna')
