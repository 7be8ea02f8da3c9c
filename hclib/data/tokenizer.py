"""The two tokenizers of the corpora: UTF-8 bytes, and a small byte-level BPE.

* :class:`ByteTokenizer`: a token is one byte of the UTF-8 text, vocabulary 256. Nothing to
  train, nothing to store; the model has to learn spelling as well as language.
* :class:`BPETokenizer`: byte-level BPE from the ``tokenizers`` library, trained on the train
  split only (:func:`train_bpe`). Its alphabet is the same 256 bytes, so any text encodes and
  ``decode(encode(text)) == text``; the merges learned on top make a token about three
  characters of Shakespeare, so a context of ``T`` tokens sees three times as much text.

Training is deterministic: the same texts and settings give the same ``tokenizer.json``, byte
for byte, whatever the number of threads (the tests build twice and compare checksums).

Used in: notebooks/09_small_gpt.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from hclib.extras import require

__all__ = ["BPETokenizer", "ByteTokenizer", "load_bpe", "train_bpe"]

BYTE_VOCAB = 256


class ByteTokenizer:
    """UTF-8 bytes as tokens: ``encode("é") == [195, 169]``, vocabulary 256."""

    vocab_size = BYTE_VOCAB

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int]) -> str:
        """The text of the bytes ``ids``; a cut multi-byte character decodes to U+FFFD."""
        bad = [i for i in ids if not 0 <= i < BYTE_VOCAB]
        if bad:
            raise ValueError(f"byte token ids must be in 0..255, got {bad[:5]}")
        return bytes(ids).decode("utf-8", errors="replace")


class BPETokenizer:
    """A trained byte-level BPE (a ``tokenizers.Tokenizer``) behind ``encode``/``decode``."""

    def __init__(self, tokenizer) -> None:  # a tokenizers.Tokenizer
        self.tokenizer = tokenizer

    @property
    def vocab_size(self) -> int:
        """The number of tokens learned (256 bytes plus the merges)."""
        return self.tokenizer.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text).ids

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)

    def to_json(self) -> str:
        """The tokenizer as the JSON that ``tokenizers.Tokenizer.from_str`` reads back."""
        return self.tokenizer.to_str()


def train_bpe(
    texts: Iterable[str], vocab_size: int, min_frequency: int = 2, progress: bool = False
) -> BPETokenizer:
    """Train a byte-level BPE of at most ``vocab_size`` tokens on ``texts``.

    The vocabulary starts from the 256 byte symbols (so every text is encodable) and adds the
    most frequent adjacent pair, again and again, within words as the GPT-2 pre-tokenizer
    splits them, until it holds ``vocab_size`` tokens or no pair occurs ``min_frequency``
    times. There are no special tokens.

    Args:
        texts: the training texts (the train split's works, never the val split).
        vocab_size: the target vocabulary, 257..65535.
        min_frequency: the fewest occurrences a pair needs to be merged.
        progress: show the library's own progress bar.
    """
    tokenizers = require("tokenizers", "train", "training a BPE tokenizer")
    Tokenizer, decoders, models = tokenizers.Tokenizer, tokenizers.decoders, tokenizers.models
    pre_tokenizers, trainers = tokenizers.pre_tokenizers, tokenizers.trainers

    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int):
        raise TypeError(f"vocab_size must be an int, got {type(vocab_size).__name__}")
    if not BYTE_VOCAB < vocab_size <= 65535:
        raise ValueError(
            f"a byte-level BPE needs {BYTE_VOCAB} < vocab_size <= 65535 (256 byte symbols, "
            f"uint16 ids), got vocab_size={vocab_size}"
        )
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
        show_progress=progress,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return BPETokenizer(tokenizer)


def load_bpe(path: Path | str) -> BPETokenizer:
    """Read a ``tokenizer.json`` written by :func:`train_bpe`."""
    tokenizers = require("tokenizers", "train", "reading a BPE tokenizer")
    return BPETokenizer(tokenizers.Tokenizer.from_file(str(path)))
