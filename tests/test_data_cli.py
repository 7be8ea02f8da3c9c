"""python -m hclib.data: `info --corpus all` lists every corpus, a vocabulary that disagrees
with the tokenizer is corruption, and `--vocab-size` for a byte corpus is an error."""

import json

import numpy as np
import pytest

from hclib.data import CorpusCorruptError, load_corpus, write_corpus
from hclib.data import __main__ as cli
from hclib.data.tokenizer import train_bpe

TEXT = "To be, or not to be, that is the question. " * 40


def byte_corpus(root, name="shakespeare-byte"):
    ids = np.frombuffer(TEXT.encode(), dtype=np.uint8)
    return write_corpus(root, name, ids[:1500], ids[1500:], 256, {"what": "synthetic"})


def bpe_corpus(root, name="shakespeare-bpe", vocab_size=300):
    tokenizer = train_bpe([TEXT], vocab_size)
    ids = tokenizer.encode(TEXT)
    return write_corpus(
        root,
        name,
        ids[:300],
        ids[300:],
        vocab_size,
        {"what": "synthetic"},
        tokenizer_json=tokenizer.to_json(),
    )


def edit_manifest(corpus, change):
    path = corpus.path / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


def test_info_all_lists_every_corpus_as_not_built_with_its_build_command(tmp_path, capsys):
    assert cli.main(["info", "--corpus", "all", "--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for name in ("shakespeare-bpe", "shakespeare-byte"):
        assert f"{name}  (not built)" in out
        assert f"python -m hclib.data build --corpus {name}" in out


def test_info_all_shows_the_built_corpus_and_the_one_not_built(tmp_path, capsys):
    byte_corpus(tmp_path)
    assert cli.main(["info", "--corpus", "all", "--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "shakespeare-bpe  (not built)" in out
    assert "shakespeare-byte  (" in out and "vocabulary  256 (UTF-8 bytes)" in out


def test_info_all_reports_a_corrupt_corpus_with_the_rebuild_command_and_exit_1(tmp_path, capsys):
    byte_corpus(tmp_path)
    bpe = bpe_corpus(tmp_path)
    edit_manifest(bpe, lambda m: m.update(vocab_size=260))
    assert cli.main(["info", "--corpus", "all", "--root", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "shakespeare-bpe  (corrupt)" in out and "--force" in out
    assert "vocabulary  256 (UTF-8 bytes)" in out  # the good one is still described


def _set_vocab(value):
    def change(manifest):
        manifest["vocab_size"] = value
        manifest["tokenizer"]["vocab_size"] = value

    return change


# (corpus maker, manifest change, message)
MISMATCHES = [
    (bpe_corpus, _set_vocab(260), r"tokenizer has 2\d\d tokens, more than .* vocab_size 260"),
    (bpe_corpus, lambda m: m.update(vocab_size=400), "disagrees with its tokenizer entry's 300"),
    (byte_corpus, _set_vocab(300), "a byte-level corpus has 256 tokens"),
    (byte_corpus, lambda m: m.update(vocab_size="256"), "expected an int >= 1"),
    (
        lambda root: write_corpus(root, "ids", np.arange(50), np.arange(50), 50, {}),
        _set_vocab(40),
        "holds token id 49 >= vocab_size 40",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("make", "change", "message"), MISMATCHES)
def test_a_vocabulary_that_disagrees_with_the_tokenizer_is_caught_as_corruption(
    tmp_path, make, change, message
):
    corpus = make(tmp_path)
    edit_manifest(corpus, change)
    with pytest.raises(CorpusCorruptError, match=message) as caught:
        load_corpus(corpus.name, tmp_path)
    assert f"rebuild with: python -m hclib.data build --corpus {corpus.name}" in str(caught.value)
    assert str(caught.value).endswith("--force")


def test_info_of_a_corpus_with_a_vocabulary_mismatch_is_one_error_line(tmp_path, capsys):
    edit_manifest(bpe_corpus(tmp_path), _set_vocab(260))
    assert cli.main(["info", "--corpus", "shakespeare-bpe", "--root", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "--force" in err


@pytest.mark.parametrize("corpus", ["shakespeare-byte"])
def test_vocab_size_for_a_byte_corpus_is_an_error(tmp_path, capsys, corpus):
    argv = ["build", "--corpus", corpus, "--root", str(tmp_path), "--vocab-size", "300"]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: --vocab-size applies to BPE corpora")
    assert "vocabulary 256" in err and "shakespeare-bpe" in err
    assert not any(tmp_path.iterdir()), "nothing may be built or downloaded"
