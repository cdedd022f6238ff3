"""mmjax.generate: KV-cache decoding engine (sampling, beam search, scoring) for every mmjax decoder.

`prefill` opens a `Session` (extend, score, decode, select, logits_at) for search over the cache; `generate`,
`stream`, `beam_search` and `score` are built on it. Adapters for flax modules come from a registry
(`register_adapter`).

Its command line, `python -m mmjax.generate.cli` (batch JSONL and chat), is not imported here.
"""
from mmjax.generate.adapters import DecoderAdapter, Qwen2Adapter, as_adapter, register_adapter
from mmjax.generate.beam_search import Hypothesis, beam_search
from mmjax.generate.compiles import compile_counts
from mmjax.generate.generate import Completion, generate, stream
from mmjax.generate.llava import LlavaAdapter, LlavaOnevisionAdapter
from mmjax.generate.score import score
from mmjax.generate.session import Session, prefill

__all__ = ['Completion', 'DecoderAdapter', 'Hypothesis', 'LlavaAdapter', 'LlavaOnevisionAdapter', 'Qwen2Adapter',
           'Session', 'as_adapter', 'beam_search', 'compile_counts', 'generate', 'prefill', 'register_adapter', 'score',
           'stream']
