"""Tokenizers: the speaker tokens and <EOT> as special tokens, and the BPE tokenizer of the tiny model.

Every speaker token and <EOT> must be exactly one token id: the model predicts "who speaks next" as
one token, and decoding splits on them. `add_chat_tokens` adds them; `check_chat_tokens` refuses a
tokenizer that would split them.
"""

from __future__ import annotations

from typing import Iterable

from fizzbot.chat.tokens import EOT

TINY_PAD, TINY_BOS, TINY_EOS = "<pad>", "<s>", "</s>"


class TokenizerError(ValueError):
    pass


def train_tiny_tokenizer(texts: Iterable[str], vocab_size: int):
    """A byte-level BPE tokenizer trained on the corpus (any byte is representable: no unknowns)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[TINY_PAD, TINY_BOS, TINY_EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token=TINY_BOS, eos_token=TINY_EOS, pad_token=TINY_PAD, clean_up_tokenization_spaces=False
    )


def add_chat_tokens(tokenizer, speaker_tokens: list[str]) -> list[int]:
    """Add the speaker tokens and <EOT> as special tokens (and a pad token if there is none).

    Returns the ids of the chat tokens, in order (speakers, then <EOT>).
    """
    wanted = list(speaker_tokens) + [EOT]
    # Tokens already in the vocabulary are re-registered as special, so the tokenizer never splits
    # them; the model's own extra special tokens (chat markers) are kept.
    tokenizer.add_special_tokens({"additional_special_tokens": wanted}, replace_extra_special_tokens=False)
    if tokenizer.pad_token is None:
        # A pad token of its own keeps padding out of <EOT>/EOS statistics; its embedding row is never trained.
        tokenizer.add_special_tokens({"pad_token": "<pad>"})
    check_chat_tokens(tokenizer, speaker_tokens)
    return tokenizer.convert_tokens_to_ids(wanted)


def check_chat_tokens(tokenizer, speaker_tokens: list[str]) -> None:
    """Refuse a tokenizer that splits a speaker token or <EOT> into several ids."""
    for token in list(speaker_tokens) + [EOT]:
        ids = tokenizer(token, add_special_tokens=False)["input_ids"]
        if len(ids) != 1 or ids[0] == tokenizer.unk_token_id:
            raise TokenizerError(
                f"the tokenizer splits {token} into {len(ids)} ids {ids}; it must be one special token. "
                "Use the tokenizer saved with the checkpoint (or pass --tokenizer-model / generate.tokenizer_model "
                "pointing at one that has the speaker tokens)"
            )
