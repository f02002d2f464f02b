"""Several communities on one base: LoRA adapters served unmerged, chosen per request, each with its own speakers."""

from __future__ import annotations

import pytest
import requests

from fizzbot.chat.conversation import encode_conversation
from fizzbot.chat.speakers import SpeakerMap
from fizzbot.config import load_config
from fizzbot.infer.engine import Request, SamplingParams, engine_from_checkpoint


def speaker_map(checkpoint) -> SpeakerMap:
    return SpeakerMap.load(checkpoint / "speaker_map.json")


def requests_for(checkpoint, adapter=None, n=4):
    smap = speaker_map(checkpoint)
    names = [s.username for s in smap.speakers]
    return [Request(encode_conversation([{"username": names[i % len(names)], "content": f"hi there {i}"}], smap).text,
                    SamplingParams(turns=2, seed=i, max_new_tokens=16, temperature=0.0 if i % 2 else 0.8), adapter=adapter) for i in range(n)]


@pytest.fixture(scope="module")
def shared(two_adapters):
    from fizzbot.infer.lora import engine_from_adapters

    return engine_from_adapters(two_adapters, device="cpu", max_batch_size=8, max_prompt_tokens=200, max_adapters=4)


def test_the_two_adapters_differ_in_their_speakers(two_adapters):
    a, b = speaker_map(two_adapters["a"]), speaker_map(two_adapters["b"])
    assert len(a.tokens) != len(b.tokens)


def test_each_adapter_on_the_shared_base_decodes_as_its_merged_checkpoint(two_adapters, shared):
    """Unmerged on one base (per-token LoRA deltas, per-adapter chat-token rows) = merged into the base."""
    for name, checkpoint in two_adapters.items():
        merged = engine_from_checkpoint(checkpoint, device="cpu", max_batch_size=8, max_prompt_tokens=200)
        assert [r.text for r in shared.generate(requests_for(checkpoint, name))] == [r.text for r in merged.generate(requests_for(checkpoint))]


def test_rows_of_both_adapters_share_a_batch(two_adapters, shared):
    alone = {name: [r.text for r in shared.generate(requests_for(ckpt, name))] for name, ckpt in two_adapters.items()}
    mixed = requests_for(two_adapters["a"], "a") + requests_for(two_adapters["b"], "b")
    texts = [r.text for r in shared.generate(mixed[::2] + mixed[1::2])]
    together = texts[: len(mixed) // 2 + len(mixed) % 2], texts[len(mixed) // 2 + len(mixed) % 2:]
    by_request = dict(zip([id(r) for r in mixed[::2] + mixed[1::2]], texts))
    assert [by_request[id(r)] for r in mixed] == alone["a"] + alone["b"]
    assert together  # both halves ran in the same steps


def test_an_unknown_adapter_is_refused(shared):
    from fizzbot.infer.engine import EngineError

    with pytest.raises(EngineError, match="unknown model 'c'"):
        shared.submit(Request("", SamplingParams(), adapter="c"))


# --- over HTTP ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def app(ray_local, two_adapters):
    from ray import serve

    from fizzbot.pipeline import wait_healthy
    from fizzbot.serve.app import run_server
    from test_serve import free_port

    port = free_port()
    overrides = [f"serve.port={port}", "generate.device=cpu", "serve.num_cpus=0.5", f"serve.adapters.a={two_adapters['a']}",
                 f"serve.adapters.b={two_adapters['b']}"]
    url = run_server(load_config(None, overrides), name="communities", route_prefix="/communities")
    wait_healthy(url)
    yield {"url": url, "overrides": overrides}
    serve.shutdown()


def test_one_app_serves_both_communities_chosen_by_model(app, two_adapters):
    url = app["url"]
    models = requests.get(url + "/v1/models", timeout=10).json()
    assert [m["id"] for m in models["data"]] == ["a", "b"]
    for name, checkpoint in two_adapters.items():
        names = {s.username for s in speaker_map(checkpoint).speakers}
        own = sorted(names)[0]
        body = {"model": name, "context": [{"username": own, "content": "hello"}], "turns": 4, "seed": 1, "max_new_tokens": 12}
        response = requests.post(url + "/v1/generate", json=body, timeout=120)
        assert response.status_code == 200, response.text
        said = {m["username"] for m in response.json()["messages"]}
        assert said and said <= names | {"(others)"}
    # A name only community a knows is one of a's own speakers there, and a newcomer to community b
    # (its guest token: the request succeeds, and b's answer can only name b's people or the newcomer).
    only_a = sorted({s.username for s in speaker_map(two_adapters["a"]).speakers} - {s.username for s in speaker_map(two_adapters["b"]).speakers})
    assert only_a
    forced = {"context": [{"username": only_a[0], "content": "hey"}], "speaker": only_a[0], "max_new_tokens": 8, "seed": 2}
    in_a = requests.post(url + "/v1/generate", json={**forced, "model": "a"}, timeout=120).json()["messages"][0]
    in_b = requests.post(url + "/v1/generate", json={**forced, "model": "b"}, timeout=120).json()["messages"][0]
    assert in_a["speaker"] == speaker_map(two_adapters["a"]).lookup(only_a[0])
    assert in_b["speaker"] == speaker_map(two_adapters["b"]).other_token and in_b["username"] == only_a[0]
    missing = requests.post(url + "/v1/completions", json={"model": "c", "prompt": "x"}, timeout=60)
    assert missing.status_code == 404 and missing.json()["error"]["param"] == "model"


def test_an_adapter_added_to_the_running_app_is_served_without_a_restart(app, two_adapters):
    from fizzbot.pipeline import wait_healthy
    from fizzbot.serve.app import run_server

    url = app["url"]
    before = requests.get(url + "/healthz", timeout=10).json()["replica"]
    run_server(load_config(None, app["overrides"] + [f"serve.adapters.c={two_adapters['b']}"]), name="communities", route_prefix="/communities")
    wait_healthy(url)
    deadline = __import__("time").monotonic() + 60
    while __import__("time").monotonic() < deadline:
        ids = [m["id"] for m in requests.get(url + "/v1/models", timeout=10).json()["data"]]
        if "c" in ids:
            break
    assert ids == ["a", "b", "c"]
    assert requests.get(url + "/healthz", timeout=10).json()["replica"] == before
    body = {"model": "c", "prompt": "<S0> hi <EOT>\n", "max_tokens": 8, "seed": 3}
    assert requests.post(url + "/v1/completions", json=body, timeout=120).status_code == 200
