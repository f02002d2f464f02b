"""Ray Data side of training data: JSONL rows -> tokenised row chunks, in parallel, once per run."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from fizzbot.train.data import RowTokenizer, TokenizedRows


class TokenizeBatch:
    """map_batches callable: a batch of {context, target} rows -> one pickled TokenizedRows chunk."""

    def __init__(self, tokenizer, max_seq_len: int, speaker_ids: list[int], source: str):
        self.tokenize = RowTokenizer(tokenizer, max_seq_len, speaker_ids)
        self.source = source

    def __call__(self, batch: dict) -> dict:
        rows = self.tokenize(list(batch["context"]), list(batch["target"]), where=self.source)
        return {"rows": np.array([pickle.dumps(rows, protocol=pickle.HIGHEST_PROTOCOL)], dtype=object)}


def unpack_rows(chunks: list[bytes]) -> TokenizedRows:
    return TokenizedRows.concat([pickle.loads(c) for c in chunks])


def tokenized_dataset(path: str, tokenizer, max_seq_len: int, speaker_ids: list[int]):
    """A materialised Ray Dataset of tokenised chunks (every worker reads all of it: see data.py)."""
    import ray.data

    from fizzbot.ray_utils import quiet_ray_data

    quiet_ray_data()
    # The driver's own copy (a URI's data was fetched, a single JSONL split): `local://` reads it on
    # the driver's node, and the tokenised blocks travel to the workers wherever they run.
    source = path if "://" in path else f"local://{Path(path).resolve()}"
    ds = ray.data.read_json(source, lines=True).select_columns(["context", "target"])
    ds = ds.map_batches(
        TokenizeBatch,
        fn_constructor_kwargs={"tokenizer": tokenizer, "max_seq_len": max_seq_len, "speaker_ids": speaker_ids, "source": path},
        batch_size=2048,
        batch_format="numpy",
        concurrency=(1, 2),
        num_cpus=1,
    )
    return ds.materialize()

