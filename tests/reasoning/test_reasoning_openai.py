"""The OpenAI-compatible backend (the official ``openai`` client) against a scripted HTTP server on
127.0.0.1. The real server (vLLM's) is in test_reasoning_vllm_cpu_server.py (opt-in tier)."""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from mllmrec.reasoning import run_reasoning
from mllmrec.reasoning.backends.base import (
    BackendError,
    BackendUnavailable,
    ImagePart,
    Message,
    Request,
    Sampling,
)
from mllmrec.reasoning.backends.openai_backend import OpenAIBackend

from reasoning_helpers import tiny_overrides


class Script:
    """What the server answers: ``chat(n, body) -> (status, payload, headers, delay_s)``; a status
    of 0 drops the connection without an answer."""

    def __init__(self) -> None:
        self.models: tuple[int, dict] = (200, {"data": [{"id": "gemma3:4b"}, {"id": "other"}]})
        self.chat: Callable[[int, dict], tuple[int, dict, dict, float]] = ok_answer
        self.bodies: list[dict] = []
        self.auth: list[str | None] = []
        self.lock = threading.Lock()
        self.active = 0
        self.max_active = 0


def ok_answer(n: int, body: dict) -> tuple[int, dict, dict, float]:
    content = body["messages"][-1]["content"]
    text = "described image" if isinstance(content, list) else f"profile {len(content)}"
    return 200, {"choices": [{"message": {"content": text}, "finish_reason": "stop"}],
                 "usage": {"completion_tokens": 2}}, {}, 0.0


@pytest.fixture
def server() -> Iterator[tuple[str, Script]]:
    script = Script()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # keep the test output clean
            pass

        def _send(self, status: int, payload: dict, headers: dict | None = None) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            try:
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client timed out and left

        def do_GET(self) -> None:
            if self.path == "/v1/models":
                self._send(*script.models)
            else:
                self._send(404, {"error": "not found"})

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with script.lock:
                script.bodies.append(body)
                script.auth.append(self.headers.get("Authorization"))
                n = len(script.bodies)
                script.active += 1
                script.max_active = max(script.max_active, script.active)
            try:
                status, payload, headers, delay = script.chat(n, body)
                time.sleep(delay)
                if status == 0:
                    self.close_connection = True  # a server that died mid-request
                    return
                self._send(status, payload, headers)
            finally:
                with script.lock:
                    script.active -= 1

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1", script
    httpd.shutdown()
    httpd.server_close()


def backend(url: str, **kwargs) -> OpenAIBackend:
    defaults = {"identity": "google/gemma-3-4b-it@main", "candidates": ["gemma3:4b", "google/gemma-3-4b-it"],
                "timeout_s": 5.0, "max_retries": 2}
    return OpenAIBackend(url, **{**defaults, **kwargs})


def text_request(text: str = "hello") -> Request:
    return Request((Message("user", text),), Sampling(max_tokens=16, seed=3))


def test_pipeline_through_the_server_sends_images_as_data_urls(server, tiny_root, reason_cfg) -> None:
    url, script = server
    cfg = reason_cfg(*tiny_overrides(tiny_root, "mllm=gemma3_4b", "reason.backend=openai",
                                     f"reason.openai.base_url={url}"))
    result = run_reasoning(cfg)
    images = [b for b in script.bodies if isinstance(b["messages"][-1]["content"], list)]
    assert len(images) == 3 and len(script.bodies) == 6
    body = images[0]
    assert body["model"] == "gemma3:4b"  # the Ollama tag, found in the served list
    assert body["max_tokens"] == 160 and body["seed"] == 0 and body["temperature"] == 0.0
    image_part, text_part = body["messages"][0]["content"]
    prefix = "data:image/png;base64,"
    assert image_part["type"] == "image_url" and image_part["image_url"]["url"].startswith(prefix)
    sent = base64.b64decode(image_part["image_url"]["url"][len(prefix):])
    assert sent in {(tiny_root / "images" / f"{i}.png").read_bytes() for i in range(3)}
    assert text_part["text"].startswith("Please convert the given image")
    assert result.tables["image_descriptions"]["status"].tolist()[:3] == ["ok"] * 3
    assert result.summary["context"]["token_counting"].startswith("estimate")


def test_429_then_success_honours_retry_after(server) -> None:
    url, script = server
    # 1.2 s: far above the client's own first delay (0.5 s minus jitter), so waiting it proves the header won
    script.chat = lambda n, body: ((429, {"error": "slow down"}, {"Retry-After": "1.2"}, 0.0)
                                   if n == 1 else ok_answer(n, body))
    t0 = time.perf_counter()
    out = backend(url).generate([text_request()])
    elapsed = time.perf_counter() - t0
    assert out[0].ok and out[0].text == "profile 5" and out[0].n_tokens == 2
    assert len(script.bodies) == 2 and 1.2 <= elapsed < 4.0


def test_5xx_retries_with_backoff_then_records_the_failure(server) -> None:
    url, script = server
    script.chat = lambda n, body: (503, {"error": "overloaded"}, {}, 0.0)
    t0 = time.perf_counter()
    out = backend(url, max_retries=2).generate([text_request()])
    elapsed = time.perf_counter() - t0
    assert not out[0].ok and "gave up after 3 tries" in out[0].error and "503" in out[0].error
    assert len(script.bodies) == 3
    # exponential backoff: 0.5 s then 1 s, each minus up to 25 % jitter
    assert 0.75 * (0.5 + 1.0) <= elapsed < 4.0


def test_timeout_is_retried(server) -> None:
    url, script = server
    script.chat = lambda n, body: (*ok_answer(n, body)[:3], 1.5 if n == 1 else 0.0)
    out = backend(url, timeout_s=0.5).generate([text_request()])
    assert out[0].ok and len(script.bodies) == 2


def test_dropped_connection_is_retried(server) -> None:
    url, script = server
    script.chat = lambda n, body: (0, {}, {}, 0.0) if n == 1 else ok_answer(n, body)
    out = backend(url).generate([text_request()])
    assert out[0].ok and out[0].text == "profile 5" and len(script.bodies) == 2


def test_server_gone_mid_run_stops_the_run_with_a_clear_error(server) -> None:
    url, script = server
    b = backend(url, max_retries=1, concurrency=4)
    assert b.generate([text_request()])[0].ok
    with socket.socket() as s:  # the server's port closes: every connection is refused from now on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    gone = backend(dead, max_retries=1, concurrency=4, probe=False, model="gemma3:4b")
    t0 = time.perf_counter()
    with pytest.raises(BackendUnavailable, match="stopped answering.*restart the server and rerun"):
        gone.generate([text_request(str(k)) for k in range(40)])
    # requests not yet sent are cancelled, not each retried against the dead server
    assert time.perf_counter() - t0 < 10.0


def test_client_errors_fail_at_once(server) -> None:
    url, script = server
    script.chat = lambda n, body: (400, {"error": "context length exceeded"}, {}, 0.0)
    out = backend(url).generate([text_request()])
    assert not out[0].ok and "HTTP 400" in out[0].error and "context length" in out[0].error
    assert len(script.bodies) == 1


def test_malformed_answer_is_a_failure(server) -> None:
    url, script = server
    script.chat = lambda n, body: (200, {"unexpected": True}, {}, 0.0)
    out = backend(url).generate([text_request()])
    assert not out[0].ok and "malformed" in out[0].error


def test_concurrency_is_limited_and_order_kept(server) -> None:
    url, script = server
    script.chat = lambda n, body: (*ok_answer(n, body)[:3], 0.1)
    requests = [text_request("x" * k) for k in range(1, 13)]
    out = backend(url, concurrency=4).generate(requests)
    assert [g.text for g in out] == [f"profile {k}" for k in range(1, 13)]
    assert 1 < script.max_active <= 4


def test_unreachable_server_is_one_clear_error_before_any_work(tiny_root, reason_cfg) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    cfg = reason_cfg(*tiny_overrides(tiny_root, "mllm=gemma3_4b", "reason.backend=openai",
                                     f"reason.openai.base_url={url}"))
    with pytest.raises(BackendUnavailable, match=f"cannot reach the OpenAI-compatible server at {url}/models"):
        run_reasoning(cfg)


def test_bad_key_and_unserved_model_are_clear(server) -> None:
    url, script = server
    script.models = (401, {"error": "bad key"})
    with pytest.raises(BackendUnavailable, match="OPENAI_API_KEY"):
        backend(url)
    script.models = (200, {"data": [{"id": "llama3"}]})
    with pytest.raises(BackendError, match=r"none of \['gemma3:4b', 'google/gemma-3-4b-it'\] is served"):
        backend(url)


def test_api_key_is_sent_as_bearer_and_explicit_model_wins(server) -> None:
    url, script = server
    b = backend(url, api_key="sk-test", model="other")
    assert b.generate([text_request()])[0].ok
    assert script.bodies[0]["model"] == "other" and script.auth == ["Bearer sk-test"]


def test_image_payload_keeps_the_original_bytes() -> None:
    part = ImagePart(data=b"\xff\xd8jpeg-bytes", mime="image/jpeg", sha256="0" * 64)
    b = OpenAIBackend("http://127.0.0.1:9/v1", identity="m", model="m", probe=False)
    payload = b.payload(Request((Message("user", "describe", part),), Sampling(max_tokens=4)))
    url = payload["messages"][0]["content"][0]["image_url"]["url"]
    assert url == "data:image/jpeg;base64," + base64.b64encode(b"\xff\xd8jpeg-bytes").decode()
