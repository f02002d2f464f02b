"""The API under hostile input, over real HTTP to a real Serve endpoint: schemathesis fuzzing driven
by the app's own OpenAPI schema (every field valid, and every field mistyped), the API key on every
route but /healthz, bodies over the limit, contexts of 100,000 messages and 10 MB strings, odd
Unicode. Nothing may answer 5xx; every error is JSON of the documented shape.

Figures (requests tried, statuses) are printed, and written to $FIZZBOT_RELIABILITY_OUT/fuzz.json
when that is set (docs/RELIABILITY.md).
"""

from __future__ import annotations

import collections
import json
import os
import socket
import time
from pathlib import Path

import pytest
import requests

pytestmark = pytest.mark.slow
schemathesis = pytest.importorskip("schemathesis")

KEY = "fuzz-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
APP = "guarded"
STATUSES: collections.Counter = collections.Counter()
TRIED: collections.Counter = collections.Counter()
HUGE: dict[str, dict] = {}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def replica_rss(app: str) -> int:
    """Resident memory of the application's replica process (Ray titles it `ray::ServeReplica:<app>:...`)."""
    import psutil

    for proc in psutil.process_iter(["cmdline"]):
        title = (proc.info["cmdline"] or [""])[0]
        if title.startswith(f"ray::ServeReplica:{app}:"):
            return proc.memory_info().rss
    raise AssertionError(f"no replica process of {app}")


@pytest.fixture(scope="module")
def guarded(ray_local, tiny_checkpoint):
    from ray import serve

    from fizzbot.config import load_config
    from fizzbot.pipeline import wait_healthy
    from fizzbot.serve.app import run_server

    port = free_port()
    cfg = load_config(None, [
        f"serve.model_dir={tiny_checkpoint}", f"serve.port={port}", f"serve.api_key={KEY}", "generate.device=cpu",
        "serve.max_new_tokens=16", "serve.max_turns=2", "serve.max_n=2", "serve.max_prompt_tokens=256",
    ])
    serve.shutdown()  # a Serve an earlier test left would keep its own port: ours must apply
    url = run_server(cfg, name=APP)
    wait_healthy(url)
    yield url
    serve.shutdown()
    out = os.environ.get("FIZZBOT_RELIABILITY_OUT")
    summary = {"requests": sum(TRIED.values()), "by_operation": dict(TRIED), "statuses": {str(k): v for k, v in STATUSES.items()},
               "huge": HUGE}
    print(f"\nfuzzing: {json.dumps(summary)}")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "fuzz.json").write_text(json.dumps(summary, indent=2) + "\n")


def error_of(response: requests.Response) -> dict:
    assert response.headers.get("content-type", "").startswith("application/json"), (response.status_code, response.text[:300])
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) >= {"message", "type", "param"}, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body["error"]


# --- the API key ---------------------------------------------------------------------------------------


def test_every_route_but_healthz_needs_the_key_docs_and_schema_included(guarded):
    assert requests.get(guarded + "/healthz", timeout=10).status_code == 200
    routes = [("get", "/docs"), ("get", "/redoc"), ("get", "/openapi.json"), ("get", "/docs/oauth2-redirect"),
              ("get", "/v1/models"), ("post", "/v1/generate"), ("post", "/v1/decode"), ("post", "/v1/completions"),
              ("post", "/v1/chat/completions"), ("get", "/v1/no-such-route"), ("options", "/v1/generate"), ("head", "/docs")]
    wrong = [{}, {"Authorization": "Bearer"}, {"Authorization": f"Bearer {KEY[:-1]}"}, {"Authorization": f"Bearer {KEY}x"},
             {"Authorization": KEY}, {"Authorization": f"bearer {KEY}"}, {"Authorization": f"Bearer {KEY[:-1]}é".encode()}]
    for method, route in routes:
        for headers in wrong:
            response = requests.request(method, guarded + route, headers=headers, json={} if method == "post" else None, timeout=10)
            assert response.status_code == 401, (method, route, headers, response.status_code)
            if method != "head":
                assert error_of(response)["type"] == "authentication_error"
    # With the key: the docs and the schema are there (the fuzzing below reads the schema this way).
    assert requests.get(guarded + "/docs", headers=AUTH, timeout=10).status_code == 200
    schema = requests.get(guarded + "/openapi.json", headers=AUTH, timeout=10).json()
    assert "/v1/generate" in schema["paths"] and "Error" in schema["components"]["schemas"]


def test_keys_are_compared_in_constant_time(monkeypatch):
    """The comparison is hmac.compare_digest's (its time does not depend on where the strings differ)."""
    import hmac

    from fizzbot.serve import guard

    calls = []
    real = hmac.compare_digest
    monkeypatch.setattr(hmac, "compare_digest", lambda a, b: calls.append((a, b)) or real(a, b))
    assert guard.key_matches(b"Bearer k3y", "k3y") and not guard.key_matches("Bearer k3z", "k3y")
    assert not guard.key_matches(None, "k3y") and not guard.key_matches("Bearer k3yé", "k3y")
    assert calls == [(b"Bearer k3y", b"Bearer k3y"), (b"Bearer k3z", b"Bearer k3y"), ("Bearer k3yé".encode(), b"Bearer k3y")]


# --- sizes -------------------------------------------------------------------------------------------------


def test_a_body_over_the_limit_gets_413_declared_or_streamed(guarded):
    from fizzbot.config import ServeConfig

    limit = ServeConfig().max_body_bytes
    big = b'{"context": "' + b"x" * limit + b'"}'
    response = requests.post(guarded + "/v1/generate", data=big, headers={**AUTH, "Content-Type": "application/json"}, timeout=60)
    assert response.status_code == 413 and "serve.max_body_bytes" in error_of(response)["message"]

    def chunks():  # no Content-Length: chunked transfer, counted as it arrives
        yield b'{"context": "'
        for _ in range(limit // (1 << 20) + 2):
            yield b"y" * (1 << 20)
        yield b'"}'

    response = requests.post(guarded + "/v1/completions", data=chunks(), headers={**AUTH, "Content-Type": "application/json"}, timeout=60)
    assert response.status_code == 413, response.text[:300]
    error_of(response)
    assert requests.post(guarded + "/v1/decode", json={"text": "<S0> fine <EOT>"}, headers=AUTH, timeout=30).status_code == 200


@pytest.mark.parametrize(
    "route,body,param",
    [
        ("/v1/generate", {"context": [{"username": "a", "content": "hi"}] * 100_000}, "context"),
        ("/v1/generate", {"context": [{"username": "a", "content": "x" * 10_000_000}]}, "context.0.content"),
        ("/v1/generate", {"context": "<S0> " + "x" * 10_000_000}, "context"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}] * 100_000}, "messages"),
        ("/v1/completions", {"prompt": ["<S0> hi <EOT>\n"] * 100_000}, "prompt"),
        ("/v1/completions", {"prompt": "é" * 5_000_000}, "prompt"),  # 10 MB of UTF-8
        ("/v1/decode", {"text": "x" * 10_000_000}, "text"),
        ("/v1/generate", {"context": [], "forbid_speakers": ["a"] * 100_000}, "forbid_speakers"),
    ],
    ids=["100k-messages", "10MB-message", "10MB-raw-context", "100k-chat-messages", "100k-prompts", "10MB-prompt",
         "10MB-decode", "100k-forbidden"],
)
def test_huge_contexts_get_400_before_anything_reads_them(guarded, route, body, param):
    before = replica_rss(APP)
    started = time.perf_counter()
    data = json.dumps(body, ensure_ascii=False).encode("utf-8")
    response = requests.post(guarded + route, data=data, headers={**AUTH, "Content-Type": "application/json"}, timeout=120)
    took = time.perf_counter() - started
    print(f"{route} {param}: {response.status_code} in {took:.2f}s")
    HUGE[f"{route} {param} ({len(data):,} bytes)"] = {"bytes": len(data), "status": response.status_code, "seconds": round(took, 2),
                                "replica_rss_growth_mb": round((replica_rss(APP) - before) / 2**20, 1)}
    assert response.status_code == 400, response.text[:300]
    error = error_of(response)
    assert error["param"] == param and ("serve.max_request" in error["message"]), error
    # Refused by the guard, not after building 100,000 objects or tokenising 10 MB.
    assert replica_rss(APP) - before < 200 * 2**20
    assert requests.get(guarded + "/healthz", timeout=10).status_code == 200


# --- odd text ------------------------------------------------------------------------------------------------

ODD = [
    "\ud800", "a\udfffb", "\x00", "nul\x00inside", "\ufeffbom", "\u202eright-to-left", "e\u0301\u0301\u0301", "🦜" * 50,
    "\U0010ffff", "<S0>", "<EOT>", "<S99> <S0><EOT>", "\n\n\n", " ", "", "\t\r\x0b\x0c", "ᚠᛇᚻ", "\u200b" * 100, "％Ｓ０",
    "' OR 1=1 --", "{{7*7}}", "${jndi:ldap://x}", "\\", "\"", "a" * 5000,
]


def test_odd_unicode_in_every_text_field_is_a_200_or_a_json_4xx(guarded):
    seen = collections.Counter()
    for text in ODD:
        bodies = [
            ("/v1/generate", {"context": [{"username": text, "content": text}], "turns": 1, "max_new_tokens": 4, "seed": 0}),
            ("/v1/generate", {"context": [{"speaker": text, "content": "hi"}], "turns": 1, "max_new_tokens": 4}),
            ("/v1/generate", {"context": text, "speaker": text, "forbid_speakers": [text], "max_new_tokens": 4}),
            ("/v1/decode", {"text": text}),
            ("/v1/completions", {"prompt": text, "stop": [text], "max_tokens": 4}),
            ("/v1/completions", {"prompt": text, "max_tokens": 4, "stream": True}),
            ("/v1/chat/completions", {"messages": [{"role": "user", "name": text, "content": text}], "speaker": text, "max_tokens": 4}),
            ("/v1/chat/completions", {"messages": [{"role": "user", "content": text}], "max_tokens": 4, "stream": True}),
        ]
        for route, body in bodies:
            response = requests.post(guarded + route, data=json.dumps(body), headers={**AUTH, "Content-Type": "application/json"}, timeout=60)
            seen[response.status_code] += 1
            assert response.status_code < 500, (route, body, response.status_code, response.text[:300])
            if response.status_code >= 400:
                error_of(response)
            elif body.get("stream"):
                events = [line for line in response.text.splitlines() if line.startswith("data: ")]
                assert events[-1] == "data: [DONE]", events[-3:]
    STATUSES.update({f"odd:{k}": v for k, v in seen.items()})
    TRIED["odd unicode"] += sum(seen.values())
    assert seen[200] > 0 and seen[400] > 0  # both paths were taken: answered, and refused with a reason


# --- schemathesis: generated from the app's own OpenAPI schema ------------------------------------------------
# Driven through schemathesis's Python API (operation strategies under hypothesis), not its pytest
# plugin, which does not load under pytest 9.

FUZZ_EXAMPLES = int(os.environ.get("FIZZBOT_FUZZ_EXAMPLES", "60"))


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_no_generated_request_gets_a_5xx_and_every_error_has_the_documented_shape(guarded, mode):
    """Every operation of /openapi.json, FUZZ_EXAMPLES requests each: schema-valid bodies (positive),
    or bodies with fields missing, mistyped or out of range (negative)."""
    from hypothesis import HealthCheck, Phase, given, settings
    from schemathesis import GenerationMode
    from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance

    schema = schemathesis.openapi.from_url(guarded + "/openapi.json", headers=AUTH)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {f"{op.method.upper()} {op.path}" for op in operations} >= {
        "POST /v1/generate", "POST /v1/decode", "POST /v1/completions", "POST /v1/chat/completions", "GET /v1/models", "GET /healthz"}
    session = requests.Session()

    def check(case) -> None:
        response = case.call(session=session, headers=AUTH, timeout=120)
        TRIED[f"{mode} {case.method} {case.path}"] += 1
        STATUSES[response.status_code] += 1
        shown = f"{case.method} {case.path} {case.body!r:.300} -> {response.status_code} {response.content[:300]!r}"
        assert response.status_code < 500, shown
        if response.status_code >= 400:
            content_type = response.headers.get("content-type") or [""]
            assert (content_type if isinstance(content_type, str) else content_type[0]).startswith("application/json"), shown
            body = response.json()
            assert set(body) == {"error"} and {"message", "type", "param"} <= set(body["error"]), shown
        case.validate_response(response, checks=[status_code_conformance, response_schema_conformance])

    generation = GenerationMode.POSITIVE if mode == "positive" else GenerationMode.NEGATIVE
    for operation in operations:
        if generation == GenerationMode.NEGATIVE and operation.method.upper() == "GET":
            continue  # no parameters to break
        run = settings(max_examples=FUZZ_EXAMPLES, deadline=None, derandomize=True, database=None,
                       suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])(
            given(operation.as_strategy(generation_mode=generation))(check))
        run()
    assert requests.get(guarded + "/healthz", timeout=10).status_code == 200
