"""mmjax.generate: KV-cache decoding engine (sampling, beam search, scoring) for every mmjax decoder.

`prefill` opens a `Session` (extend, score, decode, select, logits_at) for search over the cache; `generate`,
`stream`, `beam_search` and `score` are built on it. Adapters for flax modules come from a registry
(`register_adapter`).

Its command line, `python -m mmjax.generate.cli` (batch JSONL and chat), is not imported here.
"""
from mmjax import lazy_exports
from mmjax.generate import llava  # noqa: F401  registers the LLaVA adapters that as_adapter looks up

# submodule -> the names it exports; a name's submodule is imported on its first use (mmjax.lazy_exports)
_EXPORTS = {
  'adapters': ('DecoderAdapter', 'Qwen2Adapter', 'as_adapter', 'register_adapter'),
  'beam_search': ('Hypothesis', 'beam_search'),
  'compiles': ('compile_counts',),
  'generate': ('Completion', 'generate', 'stream'),
  'llava': ('LlavaAdapter', 'LlavaOnevisionAdapter'),
  'score': ('score',),
  'session': ('Session', 'prefill'),
  'steps': ('NewStep', 'Paths', 'RoundCounts', 'StepGenerator'),
}
__all__ = [name for names in _EXPORTS.values() for name in names]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
