"""ChatML tokenization and both loss-masking modes on a character-level toy tokenizer."""
import re

import numpy as np
import pytest

from mmjax.data.chat_masking import IGNORE_INDEX, ChatTokenIds, render_chatml, tokenize_conversation

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
