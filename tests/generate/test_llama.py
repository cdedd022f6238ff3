"""A Llama-3.1 decoder (GQA, llama3 RoPE scaling) generates through the same engine as Qwen2: greedy tokens equal
transformers `generate(do_sample=False)`."""
from mmjax.generate import generate
from mmjax.models import LlamaForCausalLM
from mmjax.weights import from_pretrained
from tests.generate.reference import hf_generate
from tests.hf_models import LLAMA3_ROPE, WIDE, save_llama
from tests.numerics import assert_close_torch


def test_llama_greedy_matches_transformers(tmp_path, prompts):
  hf = save_llama(tmp_path, num_key_value_heads=2, rope_parameters=LLAMA3_ROPE, **WIDE)
  module, params, _ = from_pretrained(tmp_path)
  assert isinstance(module, LlamaForCausalLM)
  want, out = hf_generate(hf, prompts, max_new_tokens=12, do_sample=False, output_logits=True)
  want_logprobs = hf.compute_transition_scores(out.sequences, out.logits, normalize_logits=True).numpy()
  got = generate(module, params, prompts, max_new_tokens=12)
  for i, (completion,) in enumerate(got):
    assert completion.tokens == want[i].tolist()
    assert_close_torch(completion.logprobs, want_logprobs[i])
  assert len({tuple(c.tokens) for (c,) in got}) == 3
