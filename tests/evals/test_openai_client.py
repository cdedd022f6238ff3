"""OpenAIChatGenerator against a local scripted server: the request it sends, retries on 408/429/5xx and on a reply
without a completion, None once the retries are spent, an immediate error on another HTTP status, the order of
concurrent replies."""
import http.server
import json
import threading

import pytest

from mmjax.evals.openai_client import OpenAIChatGenerator


def _server(script):
  """A server answering POSTs from `script` (a list of (status, body) or a callable request -> (status, body));
  returns (server, requests seen)."""
  seen, lock = [], threading.Lock()

  class Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
      body = json.loads(self.rfile.read(int(self.headers['Content-Length'])))
      with lock:
        seen.append((self.path, dict(self.headers), body))
        status, reply = script(body) if callable(script) else script.pop(0)
      data = json.dumps(reply).encode()
      self.send_response(status)
      self.send_header('Content-Type', 'application/json')
      self.send_header('Content-Length', str(len(data)))
      self.end_headers()
      self.wfile.write(data)

    def log_message(self, *args):
      del args

  server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
  threading.Thread(target=server.serve_forever, daemon=True).start()
  return server, seen


def _chat(text):
  return 200, {'choices': [{'message': {'role': 'assistant', 'content': text}}]}


def test_request_retries_and_errors():
  script = [_chat('first'), (429, {}), (503, {}), _chat('second'), (408, {}), (200, {'choices': []}),
            (500, {}), (404, {'error': 'no such model'})]
  server, seen = _server(script)
  url = f'http://127.0.0.1:{server.server_port}'
  try:
    gen = OpenAIChatGenerator(url + '/v1/', 'tiny', api_key='k', temperature=0.0, max_tokens=7, retries=2,
                              backoff_s=0.0)
    assert gen(['a', 'b']) == ['first', 'second']  # b: 429, 503, then a reply
    assert gen.complete('c') is None  # 408, no choices, 500: the retries are spent
    with pytest.raises(RuntimeError, match=r"/v1/chat/completions: HTTP 404 .*model name \('tiny'\)"):
      gen.complete('d')
  finally:
    server.shutdown()
  assert not script and len(seen) == 8
  path, headers, body = seen[0]
  assert path == '/v1/chat/completions' and headers['Authorization'] == 'Bearer k'
  assert body == {'model': 'tiny', 'messages': [{'role': 'user', 'content': 'a'}], 'temperature': 0.0,
                  'max_tokens': 7}
  assert OpenAIChatGenerator(url + '/v1/chat/completions', 'm').endpoint == url + '/v1/chat/completions'


def test_concurrent_replies_keep_the_prompt_order():
  server, seen = _server(lambda body: _chat(body['messages'][0]['content'].upper()))
  try:
    gen = OpenAIChatGenerator(f'http://127.0.0.1:{server.server_port}/v1', 'm', concurrency=4)
    prompts = [f'p{i}' for i in range(12)]
    assert gen(prompts) == [p.upper() for p in prompts]
  finally:
    server.shutdown()
  assert len(seen) == 12 and 'Authorization' not in seen[0][1]
  dead = OpenAIChatGenerator('http://127.0.0.1:9', 'm', retries=1, backoff_s=0.0, timeout_s=2.0)
  assert dead(['x']) == [None]  # connection refused: retried, then None
