"""`fizzbot update`: a model trained on the first part of the demo corpus, updated with the second
part (later days, a newcomer, and a day both parts hold): the speaker map grows without moving anyone,
what was seen is skipped, the new checkpoint is better on the new messages, and the decision is
written and honoured by --latest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fizzbot.chat.speakers import SpeakerMap
from fizzbot.config import load_config

DAY = 86400.0


def split_corpus(corpus: Path, first: Path, second: Path, cut_day: int, overlap_days: int = 1) -> None:
    """The demo's channel files cut by time: `first` up to the cut, `second` from a day before it on
    (that day is in both: overlapping exports), plus a newcomer in `second`."""
    first.mkdir(parents=True)
    second.mkdir(parents=True)
    start = None
    for path in sorted(corpus.iterdir()):
        rows = json.loads(path.read_text()) if path.suffix == ".json" else [json.loads(l) for l in path.read_text().splitlines() if l.strip()]
        stamps = [_ts(r["timestamp"]) for r in rows]
        start = min(stamps) if start is None else min(start, min(stamps))
    for path in sorted(corpus.iterdir()):
        rows = json.loads(path.read_text()) if path.suffix == ".json" else [json.loads(l) for l in path.read_text().splitlines() if l.strip()]
        cut = start + cut_day * DAY
        early = [r for r in rows if _ts(r["timestamp"]) < cut]
        late = [r for r in rows if _ts(r["timestamp"]) >= cut - overlap_days * DAY]
        for folder, part in ((first, early), (second, late)):
            (folder / (path.stem + ".jsonl")).write_text("".join(json.dumps(r) + "\n" for r in part))
    newcomer_start = start + (cut_day + 0.5) * DAY
    (second / "welcome.jsonl").write_text("".join(
        json.dumps({"username": "zz_newbie" if i % 2 else "pixelpaws", "content": f"welcome round {i}, glad to be here",
                    "timestamp": newcomer_start + 30 * i}) + "\n"
        for i in range(400)
    ))


def _ts(value) -> float:
    import datetime as dt

    if isinstance(value, (int, float)):
        return float(value) / (1000.0 if value > 1e11 else 1.0)
    return dt.datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()


TINY = [
    "model.base=tiny", "model.method=full", "model.tiny.vocab_size=512", "model.tiny.hidden_size=64", "model.tiny.num_layers=2",
    "model.tiny.num_heads=2", "model.tiny.num_kv_heads=2", "model.tiny.intermediate_size=128",
    "model.tiny.max_position_embeddings=512", "training.num_workers=1", "training.batch_size=16", "training.max_seq_len=192",
    "training.learning_rate=3e-3", "training.warmup_steps=5", "training.eval_max_batches=4", "training.log_steps=20",
]


@pytest.fixture(scope="module")
def first_model(tmp_path_factory):
    from fizzbot.data.demo import write_demo_corpus
    from fizzbot.data.pipeline import prepare
    from fizzbot.train.trainer import train

    root = tmp_path_factory.mktemp("update")
    write_demo_corpus(root / "corpus", seed=3, days=8)
    split_corpus(root / "corpus", root / "part1", root / "part2", cut_day=5)
    cfg = load_config(None, [f"data.inputs=[{root / 'part1'}]", f"data.output={root / 'prepared1'}", "data.max_speakers=16"]
                      + TINY + [f"data.path={root / 'prepared1'}", f"run.dir={root / 'runs'}", "run.name=chan",
                                "training.max_steps=60", "training.eval_steps=60", "training.save_steps=60"])
    prepare(cfg.data, use_ray=False, report=False)
    result = train(cfg, use_ray=False)
    return {"root": root, "checkpoint": result.best_checkpoint, "cfg": cfg}


def test_update_grows_the_map_skips_what_was_seen_learns_the_new_and_promotes(first_model):
    from fizzbot.artifacts.checkpoint import find_latest
    from fizzbot.update import run_update

    root, old = first_model["root"], Path(first_model["checkpoint"])
    cfg = load_config(None, [f"run.dir={root / 'runs'}", "update.max_steps=40", "update.learning_rate=2e-3"])
    result = run_update(cfg, old, [str(root / "part2")], use_ray=False)
    report = result.report

    before = SpeakerMap.load(old / "speaker_map.json")
    after = SpeakerMap.load(Path(result.new_checkpoint) / "speaker_map.json")
    assert before.diff(after, grown=True) is None  # every old token keeps its person
    assert after.other_token == before.other_token
    assert "zz_newbie" in [s.username for s in after.speakers]
    assert before.lookup("zz_newbie") is None

    data = report["data"]
    assert data["duplicates_skipped"] > 0  # the day both parts hold
    assert data["new_train"] > 0 and data["replayed"] == round(0.5 * data["new_train"])
    losses = report["validation_loss"]
    assert losses["new_messages"]["new"] < losses["new_messages"]["old"]
    assert report["promoted"] is True, report["reason"]
    written = json.loads((result.run_dir / "fizzbot_update.json").read_text())
    assert written["promoted"] is True and written["new_checkpoint"] == str(result.new_checkpoint)
    assert Path(find_latest(root / "runs")) == Path(result.new_checkpoint)


def test_an_unpromoted_update_is_passed_over_by_latest(first_model, tmp_path):
    """An update that wrecks the model (a learning rate far too high) is not promoted: the run is kept,
    its decision written, and --latest still gives the model in use."""
    import shutil

    from fizzbot.artifacts.checkpoint import find_latest
    from fizzbot.update import run_update

    root, old = first_model["root"], Path(first_model["checkpoint"])
    runs = tmp_path / "runs"
    run_folder = old.parent  # the first model's run only (not the update the other test made)
    shutil.copytree(run_folder, runs / run_folder.relative_to(root / "runs"))
    shutil.copy2(run_folder.parent / ".fizzbot", runs / run_folder.parent.name / ".fizzbot")  # fizzbot's folder, moved
    old_here = runs / old.relative_to(root / "runs")
    assert Path(find_latest(runs)) == old_here
    cfg = load_config(None, [f"run.dir={runs}", "update.max_steps=6", "update.warmup_steps=0", "update.learning_rate=5.0",
                             "update.replay_share=0"])
    result = run_update(cfg, old_here, [str(root / "part2")], use_ray=False)
    assert result.promoted is False and result.report["reason"]
    assert json.loads((result.run_dir / "fizzbot_update.json").read_text())["promoted"] is False
    assert Path(find_latest(runs)) == old_here


def test_update_of_inputs_the_model_has_seen_says_so(first_model):
    from fizzbot.errors import InputError
    from fizzbot.update import run_update

    root, old = first_model["root"], Path(first_model["checkpoint"])
    cfg = load_config(None, [f"run.dir={root / 'runs-none'}", "update.max_steps=2"])
    with pytest.raises(InputError, match="no new messages"):
        run_update(cfg, old, [str(root / "part1")], use_ray=False)


@pytest.mark.slow
def test_promotion_swaps_the_served_model_while_requests_keep_being_answered(first_model, ray_local, tmp_path):
    """The endpoint serves the first model; `fizzbot update ... update.serve_app=APP` promotes the new
    one into it while clients keep asking: every request is answered, and afterwards the endpoint
    serves the new checkpoint (with the newcomer's own token)."""
    import shutil
    import socket
    import threading

    import requests
    from ray import serve

    from fizzbot.pipeline import wait_healthy
    from fizzbot.serve.app import run_server
    from fizzbot.update import run_update

    root, old = first_model["root"], Path(first_model["checkpoint"])
    runs = tmp_path / "runs"
    shutil.copytree(old.parent, runs / old.parent.relative_to(root / "runs"))
    shutil.copy2(old.parent.parent / ".fizzbot", runs / old.parent.parent.name / ".fizzbot")
    old_here = runs / old.relative_to(root / "runs")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = run_server(load_config(None, [f"serve.model_dir={old_here}", f"serve.port={port}", "generate.device=cpu"]),
                     name="promoted", route_prefix="/promoted")
    wait_healthy(url)
    statuses: list[int] = []
    stop = threading.Event()

    def ask_forever() -> None:
        body = {"context": [{"username": "pixelpaws", "content": "anyone around?"}], "max_new_tokens": 8, "seed": 1}
        while not stop.is_set():
            try:
                statuses.append(requests.post(f"{url}/v1/generate", json=body, timeout=120).status_code)
            except requests.RequestException:
                statuses.append(-1)

    clients = [threading.Thread(target=ask_forever, daemon=True) for _ in range(2)]
    for client in clients:
        client.start()
    try:
        cfg = load_config(None, [f"run.dir={runs}", "update.max_steps=30", "update.learning_rate=2e-3", "update.serve_app=promoted"])
        result = run_update(cfg, old_here, [str(root / "part2")], use_ray=False)
    finally:
        stop.set()
        for client in clients:
            client.join(timeout=150)
    try:
        assert result.promoted, result.report["reason"]
        assert result.report["serve"]["model_dir"] == str(Path(result.new_checkpoint).resolve())
        assert len(statuses) > 5 and set(statuses) == {200}, statuses
        models = requests.get(f"{url}/v1/models", timeout=30).json()["data"]
        assert models[0]["root"] == str(Path(result.new_checkpoint).resolve())
        answer = requests.post(f"{url}/v1/generate", json={"context": [], "speaker": "zz_newbie", "max_new_tokens": 8}, timeout=60).json()
        new_token = SpeakerMap.load(Path(result.new_checkpoint) / "speaker_map.json").lookup("zz_newbie")
        assert answer["messages"][0]["speaker"] == new_token  # its own token now, not the old model's guest token
    finally:
        serve.delete("promoted")


def test_the_old_model_sees_newcomers_as_its_guest_by_name():
    """Validation rows of the new data, rendered with the grown map, as the old checkpoint's server
    would give them: a token it does not know becomes its guest token, carrying the newcomer's name
    where its long tail speaks by name (data.name_others), and bare where it does not."""
    import dataclasses
    from collections import Counter

    from fizzbot.chat.speakers import build_speaker_map
    from fizzbot.update import as_seen_by

    old = build_speaker_map(Counter(a=5, b=3), {"a": "alice", "b": "bob"}, 8, name_others=True)  # <S2> the guest
    new = build_speaker_map(Counter(a=5, b=3, c=9), {"a": "alice", "b": "bob", "c": "cy"}, 8, previous=old, name_others=True)
    assert new.token_for_author("c") == "<S3>"
    rows = [{"context": "<S0> hi <EOT>\n<S3> yo <EOT>\n", "target": "<S2> zz: ok <EOT>"}]
    assert as_seen_by(rows, old, new) == [{"context": "<S0> hi <EOT>\n<S2> cy: yo <EOT>\n", "target": "<S2> zz: ok <EOT>"}]
    faceless = dataclasses.replace(old, other_named=False)
    assert as_seen_by(rows, faceless, new)[0]["context"] == "<S0> hi <EOT>\n<S2> yo <EOT>\n"
