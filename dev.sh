#!/usr/bin/env bash
# The repository's two commands (the README gives no others):
#
#   bash dev.sh book   set up .venv/, execute every chapter and build the Jupyter Book into
#                      book/_build/html (warnings are errors), run the demo
#   bash dev.sh test   set up .venv/ (and Chromium, where missing and allowed), then: lint ->
#                      unit tests -> kernel resources -> the wheel in a bare venv -> jupytext
#                      pairing -> nbval over the notebooks -> a chapter opened in JupyterLab ->
#                      the book built from the notebooks' committed outputs (no execution) ->
#                      every page checked in headless Chromium
#
# Both create .venv/ on first use and reuse it afterwards, with the `dev` extra (which brings
# `train` and `notebooks`: Lightning, JupyterLab, jupytext...) and the `book` extra. Everything
# runs through .venv/bin/..., so nothing needs activating; `.venv/bin/jupyter lab notebooks/`
# opens the chapters.
#
# `test` executes each chapter once (nbval, which also compares the outputs of the cells tagged
# `nbval-check-output` with the committed ones); `book` executes each chapter once more to render
# it. HCLIB_BOOK_SIZE=small|full (default small) sets the size of every experiment.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

# Notebooks run on the python3 kernel of .venv/, even where another python3 kernelspec exists.
export JUPYTER_PREFER_ENV_PATH=1

PY=.venv/bin/python
TORCH_VERSION=2.13.0
PYTORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu

step() { printf '\n==> %s\n' "$*"; }

usage() {
    cat >&2 <<'EOF'
usage: bash dev.sh book   execute every chapter and build the book (HTML in book/_build/html)
       bash dev.sh test   lint, unit tests, nbval over the notebooks, the book from the
                          committed outputs, and a headless-browser check of every page
EOF
    exit 2
}

# setup_venv EXTRAS: make .venv/ hold torch and `pip install -e .[EXTRAS]`.
setup_venv() {
    local extras=$1
    if [[ ! -x $PY ]]; then
        step "create .venv/"
        python3 -m venv .venv
    fi
    if ! "$PY" -c 'import torch' >/dev/null 2>&1; then
        if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
            step "install torch (GPU present: the stock build)"
            "$PY" -m pip install torch
        else
            step "install torch $TORCH_VERSION (no GPU: a CPU build)"
            # 1. a local wheel from pip's configured find-links (this machine, CI), fully offline;
            # 2. the same local wheel, with its dependencies from the configured index;
            # 3. PyTorch's own CPU index.
            if ! "$PY" -m pip install --no-index "torch==$TORCH_VERSION"; then
                echo "(not all of torch's dependencies are local: trying the local wheel plus the index)"
                if ! { "$PY" -m pip install --no-index --no-deps "torch==$TORCH_VERSION" &&
                    "$PY" -m pip install "torch==$TORCH_VERSION"; }; then
                    echo "(no local torch wheel: using PyTorch's CPU index)"
                    "$PY" -m pip install "torch==$TORCH_VERSION" --index-url "$PYTORCH_CPU_INDEX"
                fi
            fi
        fi
    fi
    # Reinstall only when pyproject.toml changed or these extras were never installed
    # (a stamp for more extras, e.g. dev+book, also covers dev).
    local sha stamp have extra
    sha=$(sha256sum pyproject.toml | cut -d' ' -f1)
    for stamp in .venv/.stamp-"$sha"-*; do
        [[ -e $stamp ]] || continue
        have="+${stamp##*-}+"
        for extra in ${extras//,/ }; do
            [[ $have == *"+$extra+"* ]] || continue 2
        done
        return 0
    done
    step "pip install -e '.[$extras]'"
    "$PY" -m pip install -e ".[$extras]"
    touch ".venv/.stamp-$sha-${extras//,/+}"
}

# JupyterLab opens a chapter's .py as a notebook (through jupytext) when double-clicked: the
# settings in notebooks/jupyterlab-overrides.json are merged into .venv's application settings.
JUPYTERLAB_OVERRIDES=notebooks/jupyterlab-overrides.json
MERGE_JUPYTERLAB_SETTINGS='import json, sys
from pathlib import Path
source, target = map(Path, sys.argv[1:])
settings = json.loads(target.read_text()) if target.exists() else {}
for plugin, values in json.loads(source.read_text()).items():
    settings.setdefault(plugin, {}).update(values)
target.parent.mkdir(parents=True, exist_ok=True)
target.write_text(json.dumps(settings, indent=2) + "\n")'

install_jupyterlab_settings() {
    [[ -e $JUPYTERLAB_OVERRIDES ]] || return 0
    "$PY" -c "$MERGE_JUPYTERLAB_SETTINGS" "$JUPYTERLAB_OVERRIDES" \
        .venv/share/jupyter/lab/settings/overrides.json
}

# The browser checks (tests/test_jupyterlab.py, tests/test_book_render.py) need Debian's
# chromium. Install it where it is missing and we may: as root, with apt-get, unless
# HCLIB_INSTALL_CHROMIUM=0. Without it those tests skip and say why.
ensure_chromium() {
    local browser
    for browser in chromium chromium-browser google-chrome; do  # what the tests look for
        command -v "$browser" >/dev/null 2>&1 && return 0
    done
    if [[ ${HCLIB_INSTALL_CHROMIUM:-1} != 0 && $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
        step "apt-get install chromium (for the browser checks)"
        if ! { apt-get update -q && DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -q --no-install-recommends chromium; }; then
            echo "WARNING: could not install chromium; the browser checks will skip"
        fi
    else
        echo "WARNING: chromium is missing and cannot be installed here (needs root and" \
            "apt-get); the browser checks will skip"
    fi
}

FAILED=()

# run NAME CMD...: run one step, remember it if it fails, and go on with the next one.
run() {
    local name=$1 start=$SECONDS
    shift
    step "$name"
    if ! "$@"; then
        FAILED+=("$name")
    fi
    printf -- '--- %s: %ds\n' "$name" $((SECONDS - start))
}

# Every notebooks/*.py with a jupytext header has its .ipynb beside it, and converting that
# .ipynb back to py:percent gives the .py (up to the jupytext_version/format_version lines).
# (`jupytext --to py:percent --output -` drops the `formats:` pairing line; the API keeps it.)
AS_PY_PERCENT='import sys, jupytext
sys.stdout.write(jupytext.writes(jupytext.read(sys.argv[1]), fmt="py:percent"))'

check_jupytext_pairs() {
    local py nb status=0
    for py in notebooks/*.py; do
        [[ -e $py ]] || continue
        head -n 5 "$py" | grep -q '^#   jupytext:' || continue
        nb=${py%.py}.ipynb
        if [[ ! -e $nb ]]; then
            echo "$py has a jupytext header but no paired $nb (run: jupytext --sync $py)"
            status=1
            continue
        fi
        if ! diff -u \
            <(grep -vE '^#[[:space:]]+(jupytext_version|format_version):' "$py") \
            <("$PY" -c "$AS_PY_PERCENT" "$nb" |
                grep -vE '^#[[:space:]]+(jupytext_version|format_version):') \
            --label "$py" --label "$nb (as py:percent)"; then
            echo "$py and $nb differ (edit the .py, then: jupytext --sync $py)"
            status=1
        fi
    done
    [[ $status -eq 0 ]] && echo "every paired notebook matches its .py"
    return $status
}

# The book's HTML and the notebooks' execution by Jupyter Book: removed before every build, so
# that Sphinx re-reads every page and reports every warning (an incremental build stays quiet
# about pages it does not re-read). Screenshots of the render test stay.
clean_book_build() {
    rm -rf book/_build/html book/_build/.doctrees book/_build/jupyter_execute
}

# build_book [CONFIG]: jupyter-book build book/, warnings are errors.
build_book() {
    clean_book_build
    # jupyter-book 1.x has no `python -m` entry point; its console script lives in .venv/bin.
    .venv/bin/jupyter-book build book/ -n -W --keep-going ${1:+--config "$1"}
}

# A copy of book/_config.yml with execute_notebooks "off": the test command renders the outputs
# committed in the .ipynb files (which nbval has just checked) instead of executing every chapter
# a second time. Paths of local extensions are made absolute, because the copy lives in
# book/_build/; everything else (references.bib, the toc) is read relative to book/ as usual.
NO_EXECUTE_CONFIG=book/_build/_config.no-execute.yml
WRITE_NO_EXECUTE_CONFIG='import sys
from pathlib import Path
import yaml
book = Path("book").resolve()
config = yaml.safe_load((book / "_config.yml").read_text())
config["execute"]["execute_notebooks"] = "off"
extensions = config.get("sphinx", {}).get("local_extensions") or {}
for name, path in extensions.items():
    extensions[name] = str((book / path).resolve())
out = Path(sys.argv[1])
out.parent.mkdir(parents=True, exist_ok=True)
header = "# Written by `bash dev.sh test` from book/_config.yml; execute_notebooks is off.\n"
out.write_text(header + yaml.safe_dump(config, sort_keys=False))'

build_book_from_committed_outputs() {
    "$PY" -c "$WRITE_NO_EXECUTE_CONFIG" "$NO_EXECUTE_CONFIG" && build_book "$NO_EXECUTE_CONFIG"
}

cmd_test() {
    local start=$SECONDS
    ensure_chromium
    setup_venv dev,book
    install_jupyterlab_settings
    run "ruff check" "$PY" -m ruff check .
    run "ruff format --check" "$PY" -m ruff format --check .
    # Serial on purpose: on 2 cores, torch's own threads make `-n 2` (pytest-xdist) slower.
    # The tests marked `wheel`, `jupyterlab` and `book` run as their own steps below.
    run "pytest tests (unit)" "$PY" -m pytest tests -q -m "not book and not wheel and not jupyterlab"
    if [[ -e benchmarks/kernel_resources.py ]]; then
        run "kernel resources (sm_90, sm_80)" "$PY" benchmarks/kernel_resources.py --arch 90 --arch 80
    fi
    # sdist -> wheel -> a fresh venv with torch and the wheel, no extras: import hclib, run the
    # README's examples, and check that commands needing an extra name it.
    run "the wheel in a bare venv (no extras)" "$PY" -m pytest tests/test_wheel.py -q -m wheel -rs \
        -p no:cacheprovider
    if compgen -G 'notebooks/*.ipynb' >/dev/null; then
        run "jupytext pairing" check_jupytext_pairs
        # --nbval-lax: run every cell, compare only the outputs of cells tagged
        # nbval-check-output (after the sanitizing regexes of notebooks/nbval_sanitize.cfg).
        # Two notebooks at a time (-n 2; --dist loadscope keeps each notebook's cells on one
        # worker and kernel): most chapters use one torch thread, and this nearly halves the
        # longest step on CI's 2 cores. --durations: the slowest cells, for CI's time budget.
        run "nbval over notebooks/" "$PY" -m pytest notebooks/ -q -p no:cacheprovider \
            -n 2 --dist loadscope \
            --nbval-lax --nbval-current-env --nbval-cell-timeout=600 \
            --nbval-sanitize-with notebooks/nbval_sanitize.cfg --durations=10
    else
        step "jupytext pairing: no notebooks/*.ipynb yet, nothing to check"
        step "nbval over notebooks/: no notebooks/*.ipynb yet, nothing to run"
    fi
    run "JupyterLab opens a chapter (headless Chromium)" "$PY" -m pytest tests/test_jupyterlab.py \
        -q -m jupyterlab -rs -p no:cacheprovider
    run "book from the committed outputs (no execution)" build_book_from_committed_outputs
    if [[ " ${FAILED[*]} " == *" book from the committed outputs (no execution) "* ]]; then
        step "browser render test: skipped, the book did not build"
        FAILED+=("browser render test (not run)")
    else
        run "browser render test" "$PY" -m pytest tests/test_book_render.py -q -m book -rs
    fi
    printf '\nTotal: %ds\n' $((SECONDS - start))
    if ((${#FAILED[@]})); then
        printf '\nFAILED: %s\n' "${FAILED[@]}"
        exit 1
    fi
    printf '\nAll checks passed.\n'
}

cmd_book() {
    local start=$SECONDS
    setup_venv dev,book
    install_jupyterlab_settings
    step "jupyter-book build book/: execute every chapter (warnings are errors)"
    build_book
    if [[ -e hclib/__main__.py ]]; then
        step "python -m hclib"
        "$PY" -m hclib
    else
        step "python -m hclib: hclib/__main__.py does not exist yet, skipped"
    fi
    printf '\nTotal: %ds\n' $((SECONDS - start))
    printf '\nThe book: %s/book/_build/html/index.html\n' "$PWD"
    printf 'The chapters in JupyterLab: .venv/bin/jupyter lab notebooks/\n'
}

case "${1:-}" in
    book) cmd_book ;;
    test) cmd_test ;;
    *) usage ;;
esac
