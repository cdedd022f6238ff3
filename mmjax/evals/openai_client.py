"""An OpenAI-compatible chat client over urllib, shared by the papers that generate data with a remote model.

`OpenAIChatGenerator(url, model)` is a callable `prompts -> completions` (the same signature as a local model wrapped
around mmjax.generate): POST <url>/chat/completions with one user message per prompt. Transient failures (a
connection error, a timeout, HTTP 408/429/5xx, a reply without choices[0].message.content) are retried with a
doubling backoff and end as None; any other HTTP error (a wrong URL, model or key) raises one clear line at once.
"""
from __future__ import annotations

import concurrent.futures
import json
import time
import urllib.error
import urllib.request
from collections.abc import Sequence

__all__ = ['OpenAIChatGenerator']


class OpenAIChatGenerator:
  """A generator over any OpenAI-compatible endpoint: POST <url>/chat/completions, one user message per prompt.

  url: the API base (e.g. http://localhost:8000/v1) or the full .../chat/completions address. A connection error,
  timeout, HTTP 408/429/5xx or a reply without choices[0].message.content is retried `retries` times (waiting
  backoff_s, doubling), then gives None; any other HTTP error (a wrong URL, model or key) raises at once.
  `concurrency` requests run in parallel threads; temperature 0 asks for greedy replies (a judge).
  """

  def __init__(self, url: str, model: str, *, api_key: str = '', temperature: float = 0.8, max_tokens: int = 1024,
               timeout_s: float = 120.0, retries: int = 2, backoff_s: float = 1.0, concurrency: int = 1):
    url = url.rstrip('/')
    self.endpoint = url if url.endswith('/chat/completions') else url + '/chat/completions'
    self.model, self.api_key, self.temperature, self.max_tokens = model, api_key, temperature, max_tokens
    self.timeout_s, self.retries, self.backoff_s, self.concurrency = timeout_s, retries, backoff_s, concurrency

  def __call__(self, prompts: Sequence[str]) -> list[str | None]:
    if self.concurrency <= 1:
      return [self.complete(p) for p in prompts]
    with concurrent.futures.ThreadPoolExecutor(self.concurrency) as pool:
      return list(pool.map(self.complete, prompts))

  def complete(self, prompt: str) -> str | None:
    """The completion of one prompt, or None when every attempt failed."""
    body = json.dumps({'model': self.model, 'messages': [{'role': 'user', 'content': prompt}],
                       'temperature': self.temperature, 'max_tokens': self.max_tokens}).encode()
    headers = {'Content-Type': 'application/json'}
    if self.api_key:
      headers['Authorization'] = f'Bearer {self.api_key}'
    for attempt in range(self.retries + 1):
      if attempt:
        time.sleep(self.backoff_s * 2 ** (attempt - 1))
      request = urllib.request.Request(self.endpoint, data=body, headers=headers, method='POST')
      try:
        with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
          content = json.load(response)['choices'][0]['message']['content']
      except urllib.error.HTTPError as e:
        if e.code not in (408, 429) and e.code < 500:
          raise RuntimeError(f'{self.endpoint}: HTTP {e.code} {e.reason}; check the URL, the model name '
                             f'({self.model!r}) and the API key') from None
        continue
      except (urllib.error.URLError, OSError, ValueError, KeyError, IndexError, TypeError):
        continue
      if isinstance(content, str):
        return content
    return None
