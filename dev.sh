#!/usr/bin/env bash
# The repository's two commands (the README gives no others):
#
#   bash dev.sh book   set up .venv/, build the Jupyter Book into book/_build/html, run the demo
#   bash dev.sh test   set up .venv/, lint, unit tests, nbval over the notebooks, jupytext pairing
#
# Both create .venv/ on first use and reuse it afterwards. Everything runs through
# .venv/bin/python -m ..., so nothing needs activating.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

PY=.venv/bin/python
TORCH_VERSION=2.13.0
PYTORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu

step() { printf '\n==> %s\n' "$*"; }

usage() {
    cat >&2 <<'EOF'
usage: bash dev.sh book   build the book (HTML lands in book/_build/html)
       bash dev.sh test   lint, unit tests, and nbval over the notebooks
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

FAILED=()

# run NAME CMD...: run one step, remember it if it fails, and go on with the next one.
run() {
    local name=$1
    shift
    step "$name"
    if ! "$@"; then
        FAILED+=("$name")
    fi
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

cmd_test() {
    setup_venv dev
    run "ruff check" "$PY" -m ruff check .
    run "ruff format --check" "$PY" -m ruff format --check .
    # Serial on purpose: on 2 cores, torch's own threads make `-n 2` (pytest-xdist) slower.
    run "pytest tests" "$PY" -m pytest tests -q
    if compgen -G 'notebooks/*.ipynb' >/dev/null; then
        run "nbval over notebooks/" "$PY" -m pytest --nbval-lax notebooks/ -q
        run "jupytext pairing" check_jupytext_pairs
    else
        step "nbval over notebooks/: no notebooks/*.ipynb yet, nothing to run"
        step "jupytext pairing: no notebooks/*.ipynb yet, nothing to check"
    fi
    if ((${#FAILED[@]})); then
        printf '\nFAILED: %s\n' "${FAILED[@]}"
        exit 1
    fi
    printf '\nAll checks passed.\n'
}

cmd_book() {
    setup_venv dev,book
    step "jupyter-book build book/ (warnings are errors)"
    # jupyter-book 1.x has no `python -m` entry point; its console script lives in .venv/bin.
    # Sphinx builds incrementally: after editing references.bib or _config.yml, `rm -rf
    # book/_build` first, or a warning in an unchanged page can go unreported.
    .venv/bin/jupyter-book build book/ -n -W --keep-going
    if [[ -e hclib/__main__.py ]]; then
        step "python -m hclib"
        "$PY" -m hclib
    else
        step "python -m hclib: hclib/__main__.py does not exist yet, skipped"
    fi
    printf '\nThe book: %s/book/_build/html/index.html\n' "$PWD"
}

case "${1:-}" in
    book) cmd_book ;;
    test) cmd_test ;;
    *) usage ;;
esac
