"""The Ray Serve application over real HTTP, on a local Ray, serving a checkpoint the tests trained."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time

import pytest
import requests

from fizzbot.config import load_config
from fizzbot.chat.speakers import OTHERS_NAME, SpeakerMap
from fizzbot.pipeline import wait_healthy

pytestmark = pytest.mark.slow
KEY = "test-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(ray_local, tiny_checkpoint):
    from ray import serve

    from fizzbot.serve.app import run_server

    port = free_port()
    smap = SpeakerMap.load(tiny_checkpoint / "speaker_map.json")
    names = [s.username for s in smap.speakers]
    cfg = load_config(None, [
        f"serve.model_dir={tiny_checkpoint}", f"serve.port={port}", f"serve.api_key={KEY}", "generate.device=cpu",
        "serve.max_new_tokens=64", "serve.max_turns=4", "serve.max_n=2", "serve.max_prompt_tokens=256",
    ])
    url = run_server(cfg)
    wait_healthy(url)
    # A second application on the same proxy: room for one request and no queue (the 503 test), and
    # strict about names (unknown speakers refused; unnamed OpenAI messages get configured names).
    strict = load_config(None, [
        f"serve.model_dir={tiny_checkpoint}", f"serve.port={port}", "generate.device=cpu", "serve.max_concurrent_requests=1",
        "serve.max_queued_requests=0", "serve.max_new_tokens=512", "serve.max_turns=8", "serve.unknown_speakers=reject",
        f"serve.default_username={names[1]}", f"serve.assistant_name={names[2]}",
    ])
    strict_url = run_server(strict, name="strict", route_prefix="/strict")
    wait_healthy(strict_url)
    yield {"url": url, "strict": strict_url, "names": names, "guest": smap.guest_token, "checkpoint": tiny_checkpoint}
    serve.shutdown()


def post(server, route, body, key=KEY, app="url", **kwargs):
    headers = {"Authorization": f"Bearer {key}"} if key and app == "url" else {}
    return requests.post(server[app] + route, json=body, headers=headers, timeout=120, **kwargs)


def error_of(response):
    body = response.json()
    assert set(body) == {"error"} and {"message", "type", "param"} <= set(body["error"]), body
    return body["error"]


# --- routes ----------------------------------------------------------------------------------------


def test_healthz_and_models(server):
    assert requests.get(server["url"] + "/healthz", timeout=10).json()["status"] == "ok"
    models = requests.get(server["url"] + "/v1/models", headers={"Authorization": f"Bearer {KEY}"}, timeout=10).json()
    assert models["object"] == "list" and models["data"][0]["id"] == "fizzbot"


def test_generate_returns_raw_and_decoded_messages(server):
    names = server["names"]
    response = post(server, "/v1/generate", {"context": [{"username": names[0], "content": "hey all"}], "turns": 3, "seed": 4, "eos_stop": False})
    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body["messages"]) == 3
    assert all(m["username"] in names + [OTHERS_NAME] and m["speaker"].startswith("<S") for m in body["messages"])
    assert body["raw"].count("<EOT>") == 3
    usage = body["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0
    raw_context = post(server, "/v1/generate", {"context": "<S0> hey all <EOT>\n", "turns": 1, "seed": 4, "eos_stop": False})
    assert raw_context.status_code == 200 and len(raw_context.json()["messages"]) == 1
    # min_new_tokens: no message ends sooner (what the bot asks for, so that it never posts nothing).
    for seed in range(4):
        long = post(server, "/v1/generate", {"context": [], "turns": 2, "seed": seed, "min_new_tokens": 5, "max_new_tokens": 8, "eos_stop": False}).json()
        assert len(long["messages"]) == 2 and all(m["content"].strip() for m in long["messages"]), long
        assert long["usage"]["completion_tokens"] >= 2 * (1 + 5 + 1), long


def test_forced_and_forbidden_speakers_over_http(server):
    names = server["names"]
    forced = post(server, "/v1/generate", {"context": [], "speaker": names[3], "turns": 1, "seed": 1}).json()
    assert forced["messages"][0]["username"] == names[3]
    banned = post(server, "/v1/generate", {"context": [], "forbid_speakers": names[:4], "turns": 4, "seed": 2}).json()
    assert not {m["username"] for m in banned["messages"]} & set(names[:4])


def test_decode_route(server):
    names = server["names"]
    body = post(server, "/v1/decode", {"text": "<S0> one <EOT>\n<S1> two"}).json()
    assert body["text"] == f"{names[0]}: one\n{names[1]}: two"


def test_completions_and_chat_with_the_openai_client(server):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=server["url"] + "/v1", api_key=KEY)
    names = server["names"]
    completion = client.completions.create(model="fizzbot", prompt="<S0> anyone here? <EOT>\n", max_tokens=16, seed=3, n=2)
    assert len(completion.choices) == 2 and completion.choices[0].text.startswith("<S")
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens
    chat = client.chat.completions.create(
        model="fizzbot", seed=5, max_tokens=20,
        messages=[{"role": "system", "content": "ignored"}, {"role": "user", "name": names[0], "content": "hey everyone"}],
    )
    message = chat.choices[0].message
    assert message.role == "assistant" and message.name in names + [OTHERS_NAME] and "<EOT>" not in (message.content or "")


def test_streams_join_to_the_non_streamed_text(server):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=server["url"] + "/v1", api_key=KEY)
    names = server["names"]
    messages = [{"role": "user", "name": names[1], "content": "what is everyone up to"}]
    whole = client.chat.completions.create(model="fizzbot", messages=messages, seed=11, max_tokens=24)
    chunks = list(client.chat.completions.create(model="fizzbot", messages=messages, seed=11, max_tokens=24, stream=True))
    assert len(chunks) > 2  # events, not one blob
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    prompt = "<S1> hello <EOT>\n"
    full = post(server, "/v1/completions", {"prompt": prompt, "seed": 8, "max_tokens": 24, "turns": 2}).json()
    raw = post(server, "/v1/completions", {"prompt": prompt, "seed": 8, "max_tokens": 24, "turns": 2, "stream": True}, stream=True)
    assert raw.headers["content-type"].startswith("text/event-stream")
    events = [line[6:] for line in raw.iter_lines(decode_unicode=True) if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    joined = "".join(json.loads(e)["choices"][0]["text"] for e in events[:-1])
    assert joined == full["choices"][0]["text"]


def test_cli_and_server_agree_for_the_same_seed(server):
    names = server["names"]
    cli = subprocess.run(
        [sys.executable, "-m", "fizzbot.cli", "generate", "--model-dir", str(server["checkpoint"]), "--speaker", names[2],
         "--content", "good morning", "--turns", "2", "--seed", "21", "--raw", "generate.device=cpu"],
        capture_output=True, text=True, check=True, timeout=300,
    ).stdout.strip()
    http = post(server, "/v1/generate", {"context": [{"username": names[2], "content": "good morning"}], "turns": 2, "seed": 21}).json()
    assert cli == http["raw"]


# --- the chat contract over HTTP: newcomers, OpenAI conversations, the checkpoint's context budget ----


def test_a_newcomer_takes_the_guest_token_and_the_answer_names_them(server):
    names, guest = server["names"], server["guest"]
    context = [{"username": "newbie_nat", "content": "hi all, first time here"}, {"username": names[0], "content": "welcome!"}]
    body = post(server, "/v1/generate", {"context": context, "speaker": "newbie_nat", "turns": 3, "seed": 3}).json()
    assert body["raw"].startswith(guest + " ")  # a forced unknown speaker speaks with the guest token
    first = body["messages"][0]
    assert (first["username"], first["speaker"]) == ("newbie_nat", guest)
    # The conversation's one newcomer: every guest-token message is theirs.
    assert all(m["username"] == "newbie_nat" for m in body["messages"] if m["speaker"] == guest)
    # Two newcomers: the guest token is no one in particular, except the forced first message.
    two = context + [{"username": "other_newbie", "content": "same here"}]
    body = post(server, "/v1/generate", {"context": two, "speaker": "newbie_nat", "turns": 4, "seed": 3, "eos_stop": False}).json()
    assert body["messages"][0]["username"] == "newbie_nat"
    assert all(m["username"] == OTHERS_NAME for m in body["messages"][1:] if m["speaker"] == guest)
    body = post(server, "/v1/generate", {"context": two, "speaker": guest, "turns": 1, "seed": 3}).json()
    assert body["messages"][0]["username"] == OTHERS_NAME
    # Forbidding a newcomer forbids the guest token (the only one they could speak with).
    for seed in range(3):
        banned = post(server, "/v1/generate", {"context": context, "forbid_speakers": ["newbie_nat"], "turns": 4, "seed": seed}).json()
        assert guest not in banned["raw"]


def test_contexts_are_trimmed_by_the_checkpoints_own_budget(server):
    """The fixture's data was prepared with data.max_context_messages=6: so is every served context."""
    names = server["names"]
    context = [{"username": names[i % 3], "content": f"short message {i}"} for i in range(10)]
    body = post(server, "/v1/generate", {"context": context, "turns": 1, "seed": 0}).json()
    assert body["dropped_messages"] == 4
    recent = post(server, "/v1/generate", {"context": context[4:], "turns": 1, "seed": 0}).json()
    assert recent["dropped_messages"] == 0
    assert (recent["raw"], recent["usage"]) == (body["raw"], body["usage"])


def test_openai_multi_turn_chat_with_the_official_client(server):
    """A standard client sends unnamed user messages and its earlier answers as unnamed assistant
    messages: both are accepted, over a conversation of several turns."""
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=server["url"] + "/v1", api_key=KEY)
    names, guest = server["names"], server["guest"]
    messages = [{"role": "system", "content": "You are the channel."}, {"role": "user", "content": "hi, anyone around?"}]
    for turn in range(3):
        reply = client.chat.completions.create(model="fizzbot", messages=messages, seed=turn, max_tokens=16)
        message = reply.choices[0].message
        assert message.role == "assistant" and message.name in names + [OTHERS_NAME], message
        messages += [{"role": "assistant", "content": message.content}, {"role": "user", "content": f"and then {turn}?"}]

    # How they were rendered: unnamed user and assistant turns as the guest token (the answer is
    # exactly what /v1/generate gives for that context), or, with `speaker`, the assistant turns as
    # the forced speaker, who then answers.
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hey"}, {"role": "user", "content": "how are you?"}]
    as_guest = [{"speaker": guest, "content": "hi"}, {"speaker": guest, "content": "hey"}, {"speaker": guest, "content": "how are you?"}]
    reply = client.chat.completions.create(model="fizzbot", messages=chat, seed=9, max_tokens=16)
    same = post(server, "/v1/generate", {"context": as_guest, "seed": 9, "max_new_tokens": 16, "turns": 1}).json()
    assert reply.choices[0].message.content == same["messages"][0]["content"]
    forced = client.chat.completions.create(model="fizzbot", messages=chat, seed=9, max_tokens=16, extra_body={"speaker": names[2]})
    as_forced = [as_guest[0], {"username": names[2], "content": "hey"}, as_guest[2]]
    same = post(server, "/v1/generate", {"context": as_forced, "speaker": names[2], "seed": 9, "max_new_tokens": 16, "turns": 1}).json()
    assert forced.choices[0].message.name == names[2]
    assert forced.choices[0].message.content == same["messages"][0]["content"]
    # A newcomer forced to answer is named in the stream's first chunk.
    chunks = list(client.chat.completions.create(model="fizzbot", messages=chat, seed=2, max_tokens=8, stream=True,
                                                 extra_body={"speaker": "newbie_nat"}))
    assert next(c.choices[0].delta for c in chunks if c.choices and c.choices[0].delta.role).model_extra["name"] == "newbie_nat"


def test_unnamed_openai_messages_take_the_configured_names(server):
    """serve.default_username (user) and serve.assistant_name (assistant), on the strict server."""
    names = server["names"]
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hey"}, {"role": "user", "content": "how are you?"}]
    reply = post(server, "/v1/chat/completions", {"messages": chat, "seed": 4, "max_tokens": 16}, app="strict")
    assert reply.status_code == 200, reply.text
    named = [{"username": names[1], "content": "hi"}, {"username": names[2], "content": "hey"}, {"username": names[1], "content": "how are you?"}]
    same = post(server, "/v1/generate", {"context": named, "seed": 4, "max_new_tokens": 16, "turns": 1}, app="strict").json()
    assert reply.json()["choices"][0]["message"]["content"] == same["messages"][0]["content"]


# --- errors ----------------------------------------------------------------------------------------


def test_api_key_required_everywhere_but_healthz(server):
    url = server["url"]
    assert requests.get(url + "/healthz", timeout=10).status_code == 200
    for method, route, body in [
        ("get", "/v1/models", None), ("post", "/v1/generate", {"context": []}), ("post", "/v1/decode", {"text": "x"}),
        ("post", "/v1/completions", {"prompt": "x"}), ("post", "/v1/chat/completions", {"messages": []}),
    ]:
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            response = getattr(requests, method)(url + route, json=body, headers=headers, timeout=10)
            assert response.status_code == 401, (route, response.text)
            assert error_of(response)["type"] == "authentication_error"


@pytest.mark.parametrize(
    "route,body,status,param",
    [
        ("/v1/generate", {"context": 5}, 422, "context"),
        ("/v1/generate", {"context": [], "temperature": -1}, 422, "temperature"),
        ("/v1/generate", {"context": [], "max_new_tokens": "lots"}, 422, "max_new_tokens"),
        ("/v1/generate", {"context": [{"username": "<S99>", "content": "hi"}]}, 400, "messages"),
        ("/v1/generate", {"context": [{"content": "who am i"}]}, 400, "messages"),
        ("/v1/generate", {"context": [], "speaker": "<S99>"}, 400, "speaker"),
        ("/v1/generate", {"context": [], "forbid_speakers": ["<S99>"]}, 400, "forbid_speakers"),
        ("/v1/generate", {"context": [], "turns": 50}, 400, "turns"),
        ("/v1/generate", {"context": [], "max_new_tokens": 10_000}, 400, "max_new_tokens"),
        ("/v1/generate", {"context": [], "max_new_tokens": 4, "min_new_tokens": 5}, 400, "min_new_tokens"),
        ("/v1/completions", {"prompt": "<S0> hi <EOT>\n", "n": 9}, 400, "n"),
        ("/v1/completions", {"prompt": "<S0> " + "word " * 600 + "<EOT>\n"}, 400, "prompt"),
        ("/v1/completions", {}, 422, "prompt"),
        ("/v1/decode", {"txt": "x"}, 422, "text"),
    ],
)
def test_bad_requests_get_json_errors_with_the_right_status(server, route, body, status, param):
    response = post(server, route, body)
    assert response.status_code == status, response.text
    error = error_of(response)
    assert error["param"] == param
    assert error["message"]


def test_unknown_speakers_refused_where_configured_and_the_error_lists_the_valid_ones(server):
    response = post(server, "/v1/generate", {"context": [{"username": "nobody-at-all", "content": "hi"}]}, app="strict")
    assert response.status_code == 400
    error = error_of(response)
    assert error["param"] == "messages" and "unknown speaker 'nobody-at-all'" in error["message"]
    assert all(name in error["message"] for name in server["names"][:5])
    forced = post(server, "/v1/generate", {"context": [], "speaker": "nobody-at-all"}, app="strict")
    assert forced.status_code == 400 and error_of(forced)["param"] == "speaker"


def test_malformed_bodies_are_client_errors_never_500(server):
    url, headers = server["url"], {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    for route in ("/v1/generate", "/v1/completions", "/v1/chat/completions", "/v1/decode"):
        for data in (b"", b"{not json", b"[1, 2]", b'"text"', json.dumps({"context": [{"content": 1}]}).encode()):
            response = requests.post(url + route, data=data, headers=headers, timeout=30)
            assert 400 <= response.status_code < 500, (route, data, response.status_code, response.text)
            error_of(response)
    missing = requests.get(url + "/v1/nothing-here", headers=headers, timeout=10)
    assert missing.status_code == 404 and error_of(missing)


def test_full_queue_answers_503_at_once(server):
    """With room for one request and no queue, a second request while one is decoding gets 503."""
    tight = server["strict"]
    slow_body = {"context": [], "turns": 8, "max_new_tokens": 512, "eos_stop": False, "seed": 0}
    slow: dict = {}

    def hold():
        slow["response"] = requests.post(tight + "/v1/generate", json=slow_body, timeout=600)

    thread = threading.Thread(target=hold)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # wait until the slow request is in flight
            if requests.get(tight + "/healthz", timeout=10).json()["in_flight"] == 1:
                break
            time.sleep(0.05)
        else:
            pytest.fail("the slow request never started")
        rejected = requests.post(tight + "/v1/generate", json={"context": [], "turns": 1}, timeout=60)
        assert thread.is_alive(), "the slow request finished before the second arrived: make it slower"
        assert rejected.status_code == 503
        assert error_of(rejected)["type"] == "overloaded_error"
    finally:
        thread.join(timeout=600)
    assert slow["response"].status_code == 200
    assert requests.post(tight + "/v1/generate", json={"context": [], "turns": 1}, timeout=60).status_code == 200


def test_message_content_stays_out_of_the_logs(server, ray_local):
    import glob
    import os

    secret = "zebra-quokka-unlikely-phrase"
    names = server["names"]
    assert post(server, "/v1/generate", {"context": [{"username": names[0], "content": secret}], "turns": 1}).status_code == 200
    time.sleep(1.0)
    session = ray_local._private.worker.global_worker.node.get_session_dir_path()
    logs = glob.glob(os.path.join(session, "logs", "**", "*"), recursive=True)
    assert logs
    for path in logs:
        if os.path.isfile(path):
            with open(path, "rb") as fh:
                assert secret.encode() not in fh.read(), path


def test_prometheus_metrics_are_exported(server, ray_local):
    """Queue depth, running rows, batch sizes, tokens, time to first token, time per token and requests
    by status reach the node's Prometheus endpoint (what README.md tells an operator to scrape)."""
    names = server["names"]
    for seed in range(3):
        assert post(server, "/v1/generate", {"context": [{"username": names[0], "content": "hi"}], "turns": 2, "seed": seed}).status_code == 200
    assert post(server, "/v1/generate", {"context": [], "turns": 50}).status_code == 400
    port = ray_local._private.worker.global_worker.node.metrics_export_port
    wanted = ["ray_fizzbot_tokens_generated_total", "ray_fizzbot_batch_size_bucket", "ray_fizzbot_time_to_first_token_seconds_bucket",
              "ray_fizzbot_time_per_output_token_seconds_bucket", "ray_fizzbot_queue_depth", "ray_fizzbot_running_rows", 'status="200"']
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        if all(w in text for w in wanted):
            break
        time.sleep(2)
    missing = [w for w in wanted if w not in text]
    assert not missing, missing
    tokens = [line for line in text.splitlines() if line.startswith("ray_fizzbot_tokens_generated_total{")]
    assert tokens and float(tokens[0].rsplit(" ", 1)[1]) > 0
