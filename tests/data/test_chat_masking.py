"""ChatML and Llama-3 tokenization and both loss-masking modes on a character-level toy tokenizer;
Llama-3 against transformers' `apply_chat_template` with the official template."""
import re

import numpy as np
import pytest

from mmjax.data.chat_masking import (
  IGNORE_INDEX,
  MASKING_MODES,
  ROLE_NAMES,
  TEMPLATES,
  ChatTokenIds,
  Llama3TokenIds,
  chat_token_ids,
  render_chat,
  render_chatml,
  tokenize_conversation,
)

IDS = ChatTokenIds(im_start=1000, im_end=1001, newline=ord("\n"), image=1002, video=1003)
_SHOW = {1000: "<", 1001: ">", 1002: "I", 1003: "V", 11: "N"}


def char_tokenize(text):
  """One id per character, except that a run of two newlines is one token (id 11), like Qwen2."""
  return [11 if piece == "\n\n" else ord(piece) for piece in re.findall(r"\n\n|.|\n", text)]


def show(out):
  """(text, mask): the tokens as characters ('<' im_start, '>' im_end, 'I' image, 'N' double
  newline) and, per token, '^' where it is a target and '.' where masked."""
  ids, labels = out["input_ids"], out["labels"]
  assert ids.dtype == labels.dtype == np.int32 and ids.shape == labels.shape
  assert np.all((labels == IGNORE_INDEX) | (labels == ids))
  text = "".join(_SHOW.get(int(t), chr(t)) for t in ids)
  return text, "".join("^" if l != IGNORE_INDEX else "." for l in labels)


CONV = [{"from": "human", "value": "<image>\nHi"}, {"from": "gpt", "value": "Yo"}]
TEXT = ("<system\nS>\n"
        "<user\nI\nHi>\n"
        "<assistant\nYo>\n")


def test_assistant_mode_supervises_replies_and_im_end_only():
  text, mask = show(tokenize_conversation(CONV, char_tokenize, IDS, system_message="S"))
  assert text == TEXT
  assert mask == ("..........."
                  "............"
                  "...........^^^.")


def test_original_mode_matches_preprocess_qwen():
  text, mask = show(tokenize_conversation(CONV, char_tokenize, IDS, mode="original",
                                          system_message="S"))
  assert text == TEXT
  # Assistant turn fully supervised, header and trailing newline included; elsewhere only
  # <|im_start|>, <|im_end|> and lone newlines; never the image token.
  assert mask == ("^......^.^^"
                  "^....^.^..^^"
                  "^^^^^^^^^^^^^^^")


def test_multi_turn_with_own_system_message_and_double_newline():
  conv = [{"from": "system", "value": "Sys"}, {"from": "human", "value": "A\n\nB"},
          {"from": "gpt", "value": "x"}, {"from": "human", "value": "<image><video>?"},
          {"from": "gpt", "value": "y\nz"}]
  outs = {m: tokenize_conversation(conv, char_tokenize, IDS, mode=m) for m in
          ("assistant", "original")}
  np.testing.assert_array_equal(outs["assistant"]["input_ids"], outs["original"]["input_ids"])
  text, mask = show(outs["assistant"])
  assert text == "<system\nSys>\n<user\nANB>\n<assistant\nx>\n<user\nIV?>\n<assistant\ny\nz>\n"
  assert mask == ("." * 13 + "." * 11 + "." * 11 + "^^." + "." * 11 + "." * 11 + "^^^^.")
  _, mask = show(outs["original"])
  assert mask == ("^......^...^^" + "^....^...^^" + "^" * 14 + "^....^...^^" + "^" * 16)
  ids = outs["assistant"]["input_ids"]
  assert outs["original"]["labels"][ids == 1002] == IGNORE_INDEX
  assert outs["original"]["labels"][ids == 1003] == IGNORE_INDEX


def test_input_ids_spell_the_rendered_template():
  conv = [{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "B"}]
  rendered = render_chatml(conv)
  assert rendered == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                      "<|im_start|>user\n<image>\nWhat?<|im_end|>\n"
                      "<|im_start|>assistant\nB<|im_end|>\n")
  text, _ = show(tokenize_conversation(conv, lambda s: [ord(c) for c in s], IDS))
  expected = (rendered.replace("<|im_start|>", "<").replace("<|im_end|>", ">")
              .replace("<image>", "I"))
  assert text == expected
  assert render_chatml(conv[:1], add_generation_prompt=True).endswith(
      "<|im_end|>\n<|im_start|>assistant\n")


def test_errors():
  with pytest.raises(ValueError, match="unknown loss-masking mode 'all'"):
    tokenize_conversation(CONV, char_tokenize, IDS, mode="all")
  with pytest.raises(ValueError, match="starts with a 'gpt' turn"):
    tokenize_conversation(CONV[::-1], char_tokenize, IDS)
  with pytest.raises(ValueError, match="no video token id"):
    tokenize_conversation([{"from": "human", "value": "<video>"}], char_tokenize,
                          ChatTokenIds(im_start=1, im_end=2, newline=10, image=3))
  with pytest.raises(ValueError, match="turn 0 needs 'from'"):
    tokenize_conversation([{"from": "user", "value": "hi"}], char_tokenize, IDS)
  with pytest.raises(ValueError, match="conversation is empty"):
    tokenize_conversation([], char_tokenize, IDS)


LLAMA3_IDS = Llama3TokenIds(begin_of_text=1004, start_header=1005, end_header=1006, eot=1007,
                            double_newline=11, image=1002, video=1003)
_SHOW.update({1004: "B", 1005: "[", 1006: "]", 1007: ">"})


def test_llama3_masks_only_the_replies_and_eot():
  conv = CONV + [{"from": "human", "value": " More? "}, {"from": "gpt", "value": "No\n"}]
  outs = {m: tokenize_conversation(conv, char_tokenize, LLAMA3_IDS, mode=m, system_message="S")
          for m in MASKING_MODES}
  text, mask = show(outs["assistant"])
  assert text == "B[system]NS>[user]NI\nHi>[assistant]NYo>[user]NMore?>[assistant]NNo>"
  assert mask == "." * 36 + "^^^" + "." * 25 + "^^^"
  # LLaVA-NeXT preprocess_llama3: whole assistant messages, and its special tokens anywhere.
  text, mask = show(outs["original"])
  assert mask == "^^......^^.^" + "^....^^....^" + "^" * 15 + "^....^^.....^" + "^" * 15
  assert show(tokenize_conversation(conv, char_tokenize, LLAMA3_IDS))[0].startswith("B[user]")


# Meta-Llama-3-8B-Instruct's tokenizer_config.json chat_template and pre-tokenizer pattern.
LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
    "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + "
    "'<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+"
                  r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


@pytest.fixture(scope="module")
def llama3_tokenizer():
  """(tokenizers.Tokenizer, transformers tokenizer with the official Llama-3 chat template): a small
  byte-level BPE with Llama-3's pre-tokenizer and special tokens."""
  tokenizers = pytest.importorskip("tokenizers")
  transformers = pytest.importorskip("transformers")
  from tests.hf_models import CORPUS
  tok = tokenizers.Tokenizer(tokenizers.models.BPE())
  tok.pre_tokenizer = tokenizers.pre_tokenizers.Sequence([
      tokenizers.pre_tokenizers.Split(tokenizers.Regex(LLAMA3_PATTERN), behavior="isolated"),
      tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
  tok.decoder = tokenizers.decoders.ByteLevel()
  trainer = tokenizers.trainers.BpeTrainer(
      vocab_size=300, initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
      show_progress=False)
  tok.train_from_iterator((CORPUS + ["\n\n"] * 8) * 4, trainer)
  tok.add_special_tokens(["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                          "<|eot_id|>", "<image>"])
  hf = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|begin_of_text|>",
                                            eos_token="<|eot_id|>")
  hf.chat_template = LLAMA3_TEMPLATE
  return tok, hf


@pytest.mark.parametrize("system", [None, "  You are a helpful assistant.\n"])
def test_llama3_equals_the_official_template(llama3_tokenizer, system):
  tok, hf = llama3_tokenizer
  conv = [{"from": "human", "value": "<image>\nWhat is shown in this image?"},
          {"from": "gpt", "value": " A red circle left of a blue square. "},
          {"from": "human", "value": "Which image has more circles?\n\nDescribe it."},
          {"from": "gpt", "value": "The 2nd image."}]
  if system is not None:
    conv = [{"from": "system", "value": system}] + conv
  messages = [{"role": ROLE_NAMES[t["from"]], "content": t["value"]} for t in conv]
  tokenize = lambda text: tok.encode(text, add_special_tokens=False).ids  # noqa: E731
  ids = chat_token_ids("llama3", tok.token_to_id, tokenize)
  assert isinstance(ids, Llama3TokenIds) and ids.video is None
  out = tokenize_conversation(conv, tokenize, ids)
  official = hf.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
  np.testing.assert_array_equal(out["input_ids"], official)
  for prompt in (False, True):
    assert render_chat(conv[:-1], template="llama3", add_generation_prompt=prompt) == \
        hf.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=prompt)
  # Targets: exactly each reply's tokens (as the tokenizer splits the rendered text) and its <|eot_id|>.
  replies = [tokenize(t["value"].strip()) + [ids.eot] for t in conv if t["from"] == "gpt"]
  assert out["labels"][out["labels"] != IGNORE_INDEX].tolist() == sum(replies, [])
  with pytest.raises(ValueError, match=r"lacks \['<\|im_start\|>', '<\|im_end\|>'\]"):
    chat_token_ids("chatml", tok.token_to_id, tokenize)


def test_template_names():
  assert TEMPLATES == ("chatml", "llama3")
  assert render_chat(CONV, template="chatml") == render_chatml(CONV)
  with pytest.raises(ValueError, match="unknown chat template 'vicuna'"):
    render_chat(CONV, template="vicuna")
