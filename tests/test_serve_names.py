"""A served model whose long tail speaks by name (data.name_others), over real HTTP: a newcomer's
messages carry their name in the prompt, a guest message reads as the name the model wrote, and a
stream never shows that name as content. The checkpoint is a copy of the tests' tiny one with its
speaker map marked named (what `fizzbot prepare` writes by default): the rules are the map's."""

from __future__ import annotations

import shutil
import socket

import pytest
import requests

from fizzbot.chat.speakers import SpeakerMap
from fizzbot.config import load_config
from fizzbot.pipeline import wait_healthy


pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def named_server(ray_local, tiny_checkpoint, tmp_path_factory):
    from ray import serve

    from fizzbot.serve.app import run_server

    checkpoint = tmp_path_factory.mktemp("named") / "checkpoint"
    shutil.copytree(tiny_checkpoint, checkpoint)
    smap = SpeakerMap.load(checkpoint / "speaker_map.json")
    smap.other_named = True
    smap.save(checkpoint / "speaker_map.json")
    cfg = load_config(None, [f"serve.model_dir={checkpoint}", f"serve.port={free_port()}", "generate.device=cpu",
                             "serve.max_new_tokens=64", "serve.max_turns=4"])
    url = run_server(cfg, name="named", route_prefix="/named")
    wait_healthy(url)
    yield {"url": url, "map": smap, "names": [s.username for s in smap.speakers]}
    serve.shutdown()


def post(server, route, body):
    response = requests.post(server["url"] + route, json=body, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()


def test_a_newcomers_messages_carry_their_name_in_the_prompt(named_server):
    guest, names = named_server["map"].guest_token, named_server["names"]
    context = [{"username": "newbie_nat", "content": "hi all, first time here"}, {"username": names[0], "content": "welcome!"}]
    rendered = f"{guest} newbie_nat: hi all, first time here <EOT>\n<S0> welcome! <EOT>\n"
    body = {"turns": 2, "seed": 5, "eos_stop": False, "max_new_tokens": 24}
    served = post(named_server, "/v1/generate", {"context": context, **body})
    as_text = post(named_server, "/v1/generate", {"context": rendered, **body})  # raw text is taken as written
    assert (served["raw"], served["usage"]) == (as_text["raw"], as_text["usage"])
    faceless = post(named_server, "/v1/generate", {"context": rendered.replace("newbie_nat: ", ""), **body})
    assert faceless["usage"]["prompt_tokens"] < served["usage"]["prompt_tokens"]


def test_a_guest_message_reads_as_the_name_the_model_wrote(named_server):
    guest = named_server["map"].guest_token
    text = f"{guest} kim: thanks! <EOT>\n<S0> kim: welcome <EOT>\n{guest} no name here"
    messages = post(named_server, "/v1/decode", {"text": text})["messages"]
    assert [(m["username"], m["content"]) for m in messages] == [
        ("kim", "thanks!"), (named_server["names"][0], "kim: welcome"), ("(others)", "no name here")]


def test_a_forced_newcomer_streams_the_same_message_without_its_written_name(named_server):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=named_server["url"] + "/v1", api_key="unused")
    chat = [{"role": "user", "name": "kim", "content": "anyone up for a game?"}]
    for seed in range(3):
        kwargs = dict(model="fizzbot", messages=chat, seed=seed, max_tokens=24, extra_body={"speaker": "newbie_nat"})
        whole = client.chat.completions.create(**kwargs).choices[0].message
        chunks = list(client.chat.completions.create(stream=True, **kwargs))
        named = [c.choices[0].delta for c in chunks if c.choices and c.choices[0].delta.role]
        assert len(named) == 1 and named[0].model_extra["name"] == whole.name == "newbie_nat"
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (whole.content or "")
