"""Serving under failure, over real HTTP: every request gets an answer, and one request's failure is its own.

Failures are injected in the replica through FIZZBOT_INJECT_FAULTS (fizzbot/infer/faults.py): a
prompt holding a marker makes its prefill or its decode step raise.
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from fizzbot.config import load_config
from fizzbot.pipeline import wait_healthy
from test_serve import free_port

pytestmark = pytest.mark.slow
PREFILL_FAULT, STEP_FAULT, SLOW = "kaboom-in-prefill", "kaboom-in-step", "sloooow"
FAULTS = {"env_vars": {"FIZZBOT_INJECT_FAULTS": f"prefill={PREFILL_FAULT},step={STEP_FAULT},slow={SLOW}"}}


@pytest.fixture(scope="module")
def apps(ray_local, tiny_checkpoint):
    from ray import serve

    from fizzbot.serve.app import run_server

    port = free_port()
    common = [f"serve.model_dir={tiny_checkpoint}", f"serve.port={port}", "generate.device=cpu", "serve.num_cpus=0.5"]
    main = run_server(load_config(None, common + ["serve.max_new_tokens=512", "serve.max_concurrent_requests=8"]), name="main", route_prefix="/main",
                      runtime_env=FAULTS)
    tight = run_server(load_config(None, common + ["serve.max_concurrent_requests=1", "serve.max_queued_requests=0", "serve.max_new_tokens=512"]),
                       name="tight", route_prefix="/tight")
    quick = run_server(load_config(None, common + ["serve.request_timeout_s=0.25", "serve.max_new_tokens=512", "generate.kv_cache_tokens=400"]),
                       name="quick", route_prefix="/quick", runtime_env=FAULTS)
    for url in (main, tight, quick):
        wait_healthy(url)
    from fizzbot.chat.speakers import SpeakerMap

    tokens = SpeakerMap.load(tiny_checkpoint / "speaker_map.json").tokens
    yield {"main": main, "tight": tight, "quick": quick, "common": common, "tokens": tokens}
    serve.shutdown()


def generate(url, prompt, seed, **body):
    return requests.post(url + "/v1/completions", json={"prompt": prompt, "seed": seed, "max_tokens": 24, **body}, timeout=120)


def events_of(response) -> list[str]:
    return [line[6:] for line in response.iter_lines(decode_unicode=True) if line.startswith("data: ")]


def error_of(response) -> dict:
    body = response.json()
    assert set(body) == {"error"}, body
    return body["error"]


def in_flight(url) -> int:
    return requests.get(url + "/healthz", timeout=10).json()["in_flight"]


NORMAL = [f"<S{i % 4}> message number {i} <EOT>\n" for i in range(4)]


def alone(url) -> list[str]:
    return [generate(url, p, seed=i, turns=2).json()["choices"][0]["text"] for i, p in enumerate(NORMAL)]


@pytest.mark.parametrize("marker", [PREFILL_FAULT, STEP_FAULT])
def test_a_failing_request_fails_alone(apps, marker):
    """A prefill or a decode step that raises for one request: that request gets a JSON 500, the requests
    batched with it finish with exactly the text they give alone, and the server then serves normally."""
    url = apps["main"]
    expected = alone(url)
    bad = f"<S0> {marker} <EOT>\n"
    with ThreadPoolExecutor(8) as pool:
        good = [pool.submit(generate, url, p, i, turns=2) for i, p in enumerate(NORMAL)]
        failing = [pool.submit(generate, url, bad, 99, turns=2) for _ in range(2)]
        good = [f.result() for f in good]
        failing = [f.result() for f in failing]
    assert [r.status_code for r in good] == [200] * 4
    assert [r.json()["choices"][0]["text"] for r in good] == expected
    for response in failing:
        assert response.status_code == 500
        error = error_of(response)
        assert error["type"] == "server_error" and "injected" in error["message"]
    assert alone(url) == expected
    assert in_flight(url) == 0


def test_an_error_mid_stream_is_an_error_event_then_done(apps):
    response = requests.post(apps["main"] + "/v1/completions", json={"prompt": f"<S1> {STEP_FAULT} <EOT>\n", "stream": True, "seed": 1},
                             stream=True, timeout=120)
    assert response.status_code == 200
    events = events_of(response)
    assert events[-1] == "[DONE]"
    last = json.loads(events[-2])
    assert last["error"]["type"] == "server_error"


def test_requests_past_the_timeout_get_an_error_and_free_their_slot(apps):
    url = apps["quick"]
    # Every decode step of this request takes 50 ms more (the `slow` fault): it cannot finish in 0.25 s.
    long_body = {"prompt": f"<S0> {SLOW} <EOT>\n", "max_tokens": 20, "turns": 6, "seed": 3}
    started = time.monotonic()
    response = requests.post(url + "/v1/completions", json=long_body, timeout=60)
    assert response.status_code == 504 and error_of(response)["type"] == "timeout_error"
    assert time.monotonic() - started < 10
    streamed = requests.post(url + "/v1/completions", json={**long_body, "stream": True}, stream=True, timeout=60)
    events = events_of(streamed)
    assert events[-1] == "[DONE]" and json.loads(events[-2])["error"]["type"] == "timeout_error"
    short = requests.post(url + "/v1/completions", json={"prompt": "<S0> hi <EOT>\n", "max_tokens": 1, "seed": 1}, timeout=60)
    assert short.status_code == 200
    assert in_flight(url) == 0


def test_requests_that_cannot_fit_are_refused_at_admission(apps):
    """The quick app's KV cache holds 400 tokens: a request whose worst case needs more is a 400 before
    it joins a batch (not a failure of the batch later); so is one that forbids every speaker."""
    url = apps["quick"]
    too_big = requests.post(url + "/v1/completions", json={"prompt": "<S0> hi <EOT>\n", "max_tokens": 200, "turns": 2}, timeout=60)
    assert too_big.status_code == 400 and "KV cache" in error_of(too_big)["message"]
    nobody = requests.post(url + "/v1/generate", json={"context": [], "forbid_speakers": apps["tokens"], "max_new_tokens": 1}, timeout=60)
    assert nobody.status_code == 400 and "every speaker" in error_of(nobody)["message"]


def test_a_client_that_disconnects_frees_its_slot(apps):
    """With room for one request, a stream the client abandons must not hold the room."""
    url = apps["tight"]
    body = {"prompt": "<S0> go on <EOT>\n", "max_tokens": 512, "turns": 8, "stream": True, "seed": 5}
    response = requests.post(url + "/v1/completions", json=body, stream=True, timeout=60)
    lines = response.iter_lines(decode_unicode=True)
    assert next(line for line in lines if line.startswith("data: "))
    response.close()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and in_flight(url) != 0:
        time.sleep(0.1)
    assert in_flight(url) == 0
    follow = requests.post(url + "/v1/completions", json={"prompt": "<S0> hi <EOT>\n", "max_tokens": 4, "seed": 1}, timeout=60)
    assert follow.status_code == 200


@pytest.mark.parametrize("seed", range(10))
def test_streams_equal_whole_answers_under_stop_strings(apps, seed):
    url = apps["main"]
    stop_lists = [["e"], ["<EOT>"], [" t", "\n<S"], ["ing", "a", "zz"], ["<EOT>\n<S1>"]]
    for stops in stop_lists:
        body = {"prompt": NORMAL[seed % 4], "seed": seed, "max_tokens": 24, "turns": 3, "stop": stops}
        whole = requests.post(url + "/v1/completions", json=body, timeout=120).json()["choices"][0]
        events = events_of(requests.post(url + "/v1/completions", json={**body, "stream": True}, stream=True, timeout=120))
        assert events[-1] == "[DONE]"
        chunks = [json.loads(e)["choices"][0] for e in events[:-1]]
        assert "".join(c["text"] for c in chunks).encode() == whole["text"].encode(), stops
        assert chunks[-1]["finish_reason"] == whole["finish_reason"]
        assert not any(stop in whole["text"] for stop in stops)


def test_shutdown_drains_requests_in_flight(apps):
    """Deleting the application lets the requests in flight finish: every client gets its answer."""
    from ray import serve

    from fizzbot.serve.app import run_server

    url = run_server(load_config(None, apps["common"] + ["serve.max_new_tokens=512"]), name="drain", route_prefix="/drain")
    wait_healthy(url)
    body = {"prompt": "<S0> a long story <EOT>\n", "max_tokens": 200, "turns": 2, "eos_stop": False}
    with ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(requests.post, url + "/v1/completions", json={**body, "seed": i}, timeout=120) for i in range(3)]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and in_flight(url) < 3:
            time.sleep(0.05)
        deleting = threading.Thread(target=serve.delete, args=("drain",))
        deleting.start()
        responses = [f.result() for f in futures]
        deleting.join(timeout=120)
    for response in responses:
        assert response.status_code == 200, response.text
        assert response.json()["usage"]["completion_tokens"] > 0
