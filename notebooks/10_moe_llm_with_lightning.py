# ---
# jupyter:
#   jupytext:
#     cell_metadata_filter: tags,-all
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # An MoE language model trained with Lightning
#
# *Goal: train a small mixture-of-experts GPT from a recipe through the Lightning command line,
# with the Pre-Norm residual, HC, FC and mHC joining its sublayers; read the logs back (loss,
# expert load, router statistics); judge the papers' MoE claims; and work out what changes when
# the same recipe runs on many GPUs.*
#
# [![Open In Colab](figures/colab-badge.svg)](https://colab.research.google.com/github/hclib-book/hclib/blob/main/notebooks/10_moe_llm_with_lightning.ipynb)
#
# **Prerequisites:** Chapters 2 and 3 (HC), 5 (FC) and 6 (mHC); Chapter 8 (paired seeds and the
# three verdicts); Chapter 9 (the GPT on Shakespeare and its training loop). Background: the
# feed-forward layer of a transformer; for the last sections, what a GPU cluster and a batch
# scheduler are.
#
# The papers' largest results come from mixtures of experts. The hyper-connections paper
# {cite:p}`zhu2024hyperconnections` reports that OLMoE-1B-7B with four dynamic streams converges
# 1.8 times faster than without them; the frac-connections paper
# {cite:p}`zhu2025fracconnections` runs its ablations on OLMoE models; every model in the mHC
# paper {cite:p}`xie2025mhc` is a DeepSeek-V3-style MoE. In an MoE model the feed-forward layer
# of a block is replaced by $E$ experts and a router that sends each token to $k$ of them, so the
# model holds about $E/k$ times the feed-forward parameters of a dense model at the same
# arithmetic per token. This chapter trains such a model the way a practitioner would: a
# recipe file, the command line, logs on disk. It then reads the logs as data, and ends with
# the recipe for a cluster.

# %% tags=["remove-input"]
import os
import subprocess
import sys

if "google.colab" in sys.modules:  # the chapter needs the repository's configs/ and scripts/
    repo_url = "https://github.com/hclib-book/hclib"
    subprocess.run(["git", "clone", "-q", "--depth", "1", repo_url, "/content/hclib"], check=True)
    package = "/content/hclib[notebooks,train]"  # the clone, with this chapter's extras
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", package], check=True)
    subprocess.run([sys.executable, "-m", "hclib.data", "build", "--corpus", "all"], check=True)
    os.chdir("/content/hclib/notebooks")

# %%
# ruff: noqa: E402  (the imports follow the Colab install cell)
import contextlib
import csv
import datetime
import io
import json
import logging
import math
import platform
import shlex
import shutil
import time
import warnings
from dataclasses import fields
from pathlib import Path
from unittest import mock

import matplotlib.pyplot as plt
import numpy as np
import torch
import yaml

# Lightning (imported by the training code below) imports tqdm.auto, which warns once
# in Jupyter without ipywidgets; the chapter's own progress bars are plain text
warnings.filterwarnings("ignore", message="IProgress not found")

import hclib
from hclib.book import book_size, scaled
from hclib.data import CORPORA, ensure_corpus
from hclib.models import GPT, GPTConfig
from hclib.models.moe import MoE
from hclib.plotting import PALETTE, color, use_book_style
from hclib.stats import (
    VERDICTS,
    compare_seeds,
    markdown_table,
    multiplicity,
    records_from_rows,
    write_verdicts,
)
from hclib.traffic import hc_activation_elements
from hclib.training.cli import main as train_cli
from hclib.training.flops import active_params, flops_per_token

use_book_style()
# The models here are small: one thread avoids the thread start-up cost that dominates small
# operations on a CPU, and makes the runs bit-for-bit reproducible on a given machine.
torch.set_num_threads(1)
REPO = Path("..").resolve()  # the chapter runs in notebooks/

# %% [markdown]
# At the default size the chapter trains eight small models on one CPU core, a few minutes in
# all (the training cell prints its time). `HCLIB_BOOK_SIZE=full` trains the GPU recipe
# `configs/moe-small.yaml` instead, with three seeds per connection; the section on the full
# size says how its results are kept.

# %%
SIZE = book_size()
CONNECTIONS = ("residual", "hc", "fc", "mhc")
LABELS = {"residual": "Pre-Norm", "hc": "HC n=4", "fc": "FC m=4", "mhc": "mHC n=4"}
COLORS = {c: color("pre-norm" if c == "residual" else c) for c in CONNECTIONS}
SEEDS = scaled(small=[0, 1], full=[0, 1, 2])
RECIPE = REPO / "configs" / scaled(small="moe-tiny.yaml", full="moe-small.yaml")
RUN_DIR = Path("runs") / "10_moe_llm_with_lightning" / SIZE  # ignored by git (runs/)
if SIZE == "full" and not torch.cuda.is_available():
    raise RuntimeError(
        "HCLIB_BOOK_SIZE=full trains configs/moe-small.yaml, which asks for a GPU "
        "(trainer.accelerator: gpu), and none is available here; run the default size instead"
    )
CORPUS = yaml.safe_load(RECIPE.read_text())["data"]["corpus"]
CORPUS = scaled(small="shakespeare-byte", full=CORPUS)  # the small overlay below trains on bytes
ensure_corpus(CORPUS)  # builds it on first use (python -m hclib.data build --corpus ...)
print(f"book size: {SIZE}, recipe: {RECIPE.relative_to(REPO)}, corpus: {CORPUS}, seeds: {SEEDS}")

# %% [markdown]
# ## The recipe
#
# Chapter 9 wrote its training loop out by hand. PyTorch Lightning splits the same loop into
# three objects: a `LightningModule`, here `hclib.training.GPTModule` (the GPT, its loss,
# AdamW with the papers' weight-decay rule and the warmup-cosine schedule); a `DataModule`,
# here `hclib.training.CorpusDataModule` (Chapter 9's windows, drawn from the seed and the
# step, and split across GPUs); and Lightning's `Trainer`, which runs the loop, validates,
# logs, saves checkpoints and handles devices and precision. `python -m hclib.train` is a
# `LightningCLI` over the first two: a *recipe*, a YAML file, holds `GPTModule`'s arguments
# under `model:`, `CorpusDataModule`'s under `data:`, the `Trainer`'s under `trainer:`, and one
# section for each callback hclib always adds (`throughput`, `nan_guard`, `diagnostics`,
# `checkpoint`, and `preemption`, which saves a checkpoint when the job is told to stop and
# which the recipes leave at its defaults). Every key carries a comment with its meaning and,
# in brackets, the value it would take if the line were deleted. This is the chapter's GPU
# recipe, `configs/moe-small.yaml`, in full:

# %%
print((REPO / "configs" / "moe-small.yaml").read_text())

# %% [markdown]
# Its model is the six-block, 384-wide GPT of `configs/gpt-small.yaml` with the feed-forward
# layer of blocks 1 to 5 replaced by a mixture of 8 experts, each token routed to 2 of them.
# The first block stays dense, as in DeepSeek-V3 and the mHC paper's models ("leading dense"
# layers). Each expert is a SwiGLU layer half as wide as the dense one (`moe_hidden: 512`
# against 1024), so a token's two experts cost what one dense feed-forward layer costs.
#
# The CPU recipe `configs/moe-tiny.yaml` is the same file with smaller values. The keys in
# which the two differ:


# %%
def flat_keys(tree, prefix=""):
    """A nested recipe as {"model.d_model": 384, ...}."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and key not in ("init_args",):
            out.update(flat_keys(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


tiny = flat_keys(yaml.safe_load((REPO / "configs" / "moe-tiny.yaml").read_text()))
small = flat_keys(yaml.safe_load((REPO / "configs" / "moe-small.yaml").read_text()))
print(f"{'key':<28} {'moe-tiny':>14} {'moe-small':>14}")
for key in small:
    if key in tiny and tiny[key] != small[key] and key != "trainer.logger":
        print(f"{key:<28} {str(tiny[key]):>14} {str(small[key]):>14}")

# %% [markdown]
# ## What eight experts cost
#
# A mixture of experts trades memory for arithmetic. Count both for the GPU recipe and for a
# dense GPT of the same shape (`configs/gpt-small.yaml`). The models are built on PyTorch's
# `meta` device, which records shapes and allocates nothing, so even the large models of the
# cluster section can be counted this way. *Active* parameters are the weights one token
# multiplies by: the routed experts count $k/E$ of theirs
# (`hclib.training.flops.active_params`).

# %%
CONFIG_FIELDS = {f.name for f in fields(GPTConfig)}


def recipe_model(name, **changes):
    """The GPT of a recipe in configs/, on the meta device (shapes only), and the recipe."""
    recipe = yaml.safe_load((REPO / "configs" / name).read_text())
    values = {k: v for k, v in recipe["model"].items() if k in CONFIG_FIELDS}
    values["vocab_size"] = CORPORA[recipe["data"]["corpus"]].vocab_size
    values["block_size"] = recipe["data"]["block_size"]
    values.update(changes)
    with torch.device("meta"):
        model = GPT(GPTConfig(**values))
    return model, recipe


def n_params(model):
    return sum(p.numel() for p in model.parameters())


# %% tags=["nbval-check-output"]
dense, _ = recipe_model("gpt-small.yaml")
moe_small, moe_recipe = recipe_model("moe-small.yaml")
T_small = moe_recipe["data"]["block_size"]
print(f"{'model':<10} {'parameters':>12} {'active':>12} {'training FLOPs/token':>22}")
for name, model in (("gpt-small", dense), ("moe-small", moe_small)):
    print(
        f"{name:<10} {n_params(model) / 1e6:>11.2f}M {active_params(model) / 1e6:>11.2f}M"
        f" {flops_per_token(model, T_small) / 1e6:>21.1f}M"
    )
embedding = moe_small.embed.weight.numel()
ratio_all = n_params(moe_small) / n_params(dense)
ratio_body = (n_params(moe_small) - embedding) / (n_params(dense) - embedding)
print(f"moe-small / gpt-small: {ratio_all:.2f}x the parameters ({ratio_body:.2f}x without the")
print(f"embedding), {flops_per_token(moe_small, T_small) / flops_per_token(dense, T_small):.3f}x")
print("the FLOPs per token")

# %% [markdown]
# The same count by hand: an MoE layer holds a router ($d \times E$) and $E$ experts of three
# $d \times h_e$ matrices (gate, up, down), where a dense SwiGLU layer holds three
# $d \times h$ matrices. Five of the six blocks swap one for the other.

# %% tags=["nbval-check-output"]
cfg = moe_small.cfg
d, E, k, h_e, h = cfg.d_model, cfg.n_experts, cfg.top_k, cfg.moe_hidden, cfg.mlp_hidden
moe_layer, dense_layer = d * E + E * 3 * d * h_e, 3 * d * h
by_hand = n_params(dense) + len(cfg.moe_layers) * (moe_layer - dense_layer)
print(f"d={d}, E={E}, top-{k}, expert width {h_e}, dense width {h}")
print(f"MoE layer {moe_layer:,} parameters, dense layer {dense_layer:,}")
counted = n_params(moe_small)
print(f"by hand: {by_hand:,}, counted: {counted:,}, equal: {by_hand == counted}")

# %% [markdown]
# So the mixture holds about 2.5 times the parameters (2.7 times outside the embedding table)
# at the arithmetic of the dense model: the router's $d \times E$ product is all it adds per
# token.

# %% [markdown]
# ## What the router statistics measure
#
# `hclib.models.moe.MoE` routes by *token choice*: each token's router logits $z \in
# \mathbb{R}^E$ become probabilities $p = \mathrm{softmax}(z)$, and the token goes to its $k$
# most probable experts, weighted by their renormalised probabilities. Nothing in that rule keeps
# the experts equally busy, so two auxiliary losses are added to the training loss, and the
# module keeps both after every forward pass (with the weights of `model.aux_loss_coef` and
# `model.z_loss_coef` in the recipe):
#
# * the **load-balancing loss** of the Switch Transformer {cite:p}`fedus2022switch`,
#   $E \sum_e f_e P_e$, where $f_e$ is the fraction of the $N k$ assignments of a batch of $N$
#   tokens that went to expert $e$ (its *load*) and $P_e$ the mean router probability of $e$.
#   It is 1 when both are uniform and grows as load concentrates: if every token went to the
#   same $k$ experts with probability $1/k$ each, it would be $E/k$;
# * the **router z-loss** of ST-MoE {cite:p}`zoph2022stmoe`, the mean of
#   $(\log \sum_e e^{z_e})^2$, which keeps the logits small.
#
# The training logs also carry every expert's load $f_e$ and the busiest expert's load times
# $E$ (1 when balanced, at most $E/k$). Here are all of them from scratch, on random tokens,
# against the module:

# %% tags=["nbval-check-output"]
torch.manual_seed(0)
layer = MoE(dim=64, hidden=88, n_experts=8, top_k=2)
x = torch.randn(512, 64)  # (N, d)
y = layer(x)

logits = x @ layer.router.weight.T  # (N, E)
probs = logits.softmax(-1)
chosen = probs.topk(2, dim=-1).indices  # (N, k): each token's two experts
f = torch.bincount(chosen.flatten(), minlength=8) / chosen.numel()  # load of each expert
aux = 8 * (f * probs.mean(0)).sum()
z = torch.logsumexp(logits, -1).pow(2).mean()
torch.testing.assert_close(f, layer.expert_load)
torch.testing.assert_close(aux, layer.aux_loss)
torch.testing.assert_close(z, layer.z_loss)
print(f"loads {[round(v, 3) for v in f.tolist()]} (sum {f.sum():.0f})")
print(f"load-balancing loss {aux:.4f}, z-loss {z:.4f}, busiest expert x E {f.max() * 8:.3f}")
print("the module's statistics equal the ones computed here")

# %% [markdown]
# The layer's output is built the same way, in a few lines. *Dispatch*: sort the $N k$
# (token, expert) assignments by expert, so that each expert multiplies one contiguous block of
# the tokens sent to it. *Combine*: weight each expert's outputs by the token's renormalised
# probability and add them back into the token's row (`index_add_`). The loop runs over the $E$
# experts, not over the tokens:

# %% tags=["nbval-check-output"]
weights, chosen = probs.topk(2, dim=-1)  # (N, k)
weights = weights / weights.sum(-1, keepdim=True)  # renormalised over the k chosen
order = chosen.flatten().argsort(stable=True)  # dispatch: assignments grouped by expert
token = order // 2  # the token of each sorted assignment
counts = torch.bincount(chosen.flatten(), minlength=8).tolist()  # (E,)
combined = torch.zeros_like(x)  # (N, d)
for e, rows in enumerate(token.split(counts)):  # expert e's tokens, in one block
    h = torch.nn.functional.silu(x[rows] @ layer.w_gate[e]) * (x[rows] @ layer.w_up[e])
    w = weights.flatten()[order].split(counts)[e]  # their weights for expert e
    combined.index_add_(0, rows, w[:, None] * (h @ layer.w_down[e]))  # combine
torch.testing.assert_close(combined, y)
print(f"tokens per expert {counts}; dispatch and combine from scratch equal MoE's output")

# %% [markdown]
# A freshly initialised router is nearly balanced: its logits are small, so every expert gets
# about $1/E$ of the tokens and the load-balancing loss sits near 1. What training does to that
# balance is what the logs will show.

# %% [markdown]
# ## Training through the command line
#
# The chapter trains each connection with two seeds (three at full size). At the default size
# it starts from `configs/moe-tiny.yaml` and shrinks it further with a second recipe file,
# which the chapter writes into its run folder. Given after the first one on the command line,
# it changes only the keys it names:

# %%
shutil.rmtree(RUN_DIR, ignore_errors=True)  # the chapter's own scratch folder, fresh every run
RUN_DIR.mkdir(parents=True)
OVERLAY = RUN_DIR / f"ch10-{SIZE}.yaml"
OVERLAY_TEXT = {
    "small": f"""\
# Chapter 10's CPU default: configs/moe-tiny.yaml made smaller, tens of seconds per run.
model:
  d_model: 64  # model width d (moe-tiny: 128)
  n_head: 4  # heads of width 16
  moe_layers: [1, 2, 3]  # every block but the first is an MoE (moe-tiny: [1, 3])
  n_experts: 8  # routed experts, as in moe-small (moe-tiny: 4)
  top_k: 2  # experts per token
  moe_hidden: 88  # half the dense SwiGLU's 176: top-2 costs one dense layer
  warmup_steps: 20  # of 120 steps (moe-tiny: 50 of 600)
data:
  corpus: shakespeare-byte  # bytes: a 256-row output layer instead of 4096 (moe-tiny: BPE)
  block_size: 64  # tokens per window T (moe-tiny: 128)
  batch_size: 8  # windows per step: 512 tokens (moe-tiny: 16)
  val_batches: 4  # the same 32 validation windows for every run
trainer:
  accelerator: cpu  # the numbers below are checked on a CPU
  max_steps: 120  # optimizer steps (moe-tiny: 600)
  val_check_interval: 12  # validate every 12 steps: ten points per curve
  log_every_n_steps: 1  # every step's router statistics reach the log
  enable_progress_bar: false  # no bar in the chapter's output
  enable_model_summary: false  # no parameter table either
  logger:  # one CSV file per run: {RUN_DIR}/<connection>/seed<s>/metrics.csv
    class_path: pytorch_lightning.loggers.CSVLogger
    init_args:
      save_dir: {RUN_DIR}  # the chapter's run folder
      name: run  # replaced by the connection on the command line
  callbacks: []  # no learning-rate monitor
diagnostics:
  every_n_steps: 0  # no connection probes (Chapter 9 shows them)
checkpoint:
  every_n_train_steps: null  # no periodic checkpoints...
  save_last: false  # ...and no last one: nothing to resume here
  save_top_k: 0  # keep none
""",
    "full": f"""\
# Chapter 10's full size: configs/moe-small.yaml unchanged, logging into the chapter's folder.
trainer:
  enable_progress_bar: false  # no bar in the chapter's output
  enable_model_summary: false  # no parameter table either
  logger:  # one CSV file per run: {RUN_DIR}/<connection>/seed<s>/metrics.csv
    class_path: pytorch_lightning.loggers.CSVLogger
    init_args:
      save_dir: {RUN_DIR}  # the chapter's run folder
      name: run  # replaced by the connection on the command line
checkpoint:
  save_top_k: 1  # keep only the newest periodic checkpoint of each run (disk space)
""",
}[SIZE]
OVERLAY.write_text(OVERLAY_TEXT)
print(OVERLAY.read_text())

# %% [markdown]
# One run is one command. For the HC model with seed 0, from the `notebooks/` folder:


# %%
def cli_args(connection, seed):
    """The command line of one run: recipe, overlay, connection, seed, and where it logs."""
    return [
        "fit",
        "--config", os.path.relpath(RECIPE),
        "--config", str(OVERLAY),
        "--model.connection", connection,
        "--seed_everything", str(seed),  # the initial weights
        "--data.seed", str(seed),  # the order of the training windows
        "--trainer.logger.init_args.name", connection,
        "--trainer.logger.init_args.version", f"seed{seed}",
    ]  # fmt: skip


print("python -m hclib.train " + shlex.join(cli_args("hc", 0)))

# %% [markdown]
# The seed sets both the initial weights and the order of the training windows, and the
# connections consume the random stream alike, so under one seed the four models share their
# embedding, attention and expert weights at the start and see the same batches: as in
# Chapter 8, the seeds are *paired*, and what differs at the end, the connection did.
#
# The chapter could run that command with `subprocess`; instead it calls the same entry point
# in-process, `hclib.training.cli.main(args)`, which `python -m hclib.train` calls too. This saves
# starting Python and importing PyTorch and Lightning for every run (several seconds each),
# and lets the chapter quiet Lightning's start-up messages, which go to the standard error
# stream.

# %%
for name in ("lightning.pytorch", "lightning.fabric", "pytorch_lightning", "lightning_fabric"):
    logging.getLogger(name).setLevel(logging.ERROR)  # "GPU available: False", tips, ...


def train(connection, seed):
    """Run the CLI in-process for one connection and seed; return the run's log folder."""
    messages = io.StringIO()
    with (
        mock.patch.object(sys, "argv", ["hclib.train"]),  # not the Jupyter kernel's arguments
        warnings.catch_warnings(),
        contextlib.redirect_stderr(messages),
    ):
        warnings.simplefilter("ignore")
        try:
            train_cli(cli_args(connection, seed))
        except BaseException:
            print(messages.getvalue())
            raise
    return RUN_DIR / connection / f"seed{seed}"


start = time.perf_counter()
folders, seconds = {}, {}
for seed in SEEDS:
    for connection in CONNECTIONS:
        t0 = time.perf_counter()
        folders[connection, seed] = train(connection, seed)
        seconds[connection, seed] = time.perf_counter() - t0
print(f"{len(folders)} runs in {time.perf_counter() - start:.0f} s")
for connection in CONNECTIONS:
    mean = np.mean([seconds[connection, s] for s in SEEDS])
    print(f"  {LABELS[connection]:<9} {mean:5.1f} s per run")

# %% [markdown]
# mHC is the slowest on a CPU: each of its connections runs twenty Sinkhorn-Knopp iterations
# forward and backward, a few dozen tiny operations where the residual adds two tensors
# (Chapter 7 fuses them on a GPU).
#
# ## Reading the logs back
#
# Lightning's `CSVLogger` writes one `metrics.csv` per run, with one row per logged step and one
# column per logged name; a cell is empty where a name was not logged at that step. Beside it
# the CLI saves `config.yaml`, the complete recipe the run used (both files merged, every
# command-line value applied), which is what to keep with a result.

# %% tags=["nbval-check-output"]
run = folders["hc", 0]
print(sorted(p.name for p in run.iterdir()))
with open(run / "metrics.csv", newline="") as f:
    header = next(csv.reader(f))
moe_names = [name for name in header if name.startswith("moe/")]
print(f"{len(header)} columns, {len(moe_names)} of them moe/*:")
print("  " + ", ".join(n for n in header if not n.startswith("moe/")))
print("  " + ", ".join(n for n in moe_names if "/expert" not in n))
print(f"  and moe/load/block<b>/expert<e> for {len(moe_names) - 6} (block, expert) pairs")

# %% [markdown]
# The saved recipe is enough to rebuild the model that was trained, here on the meta device
# to count its parameters:


# %%
def run_model(folder):
    """The GPT of a finished run, rebuilt on the meta device from its saved config.yaml."""
    config = yaml.safe_load((Path(folder) / "config.yaml").read_text())
    values = {k: v for k, v in config["model"].items() if k in CONFIG_FIELDS}
    values["vocab_size"] = CORPORA[config["data"]["corpus"]].vocab_size  # linked from the data
    with torch.device("meta"):
        return GPT(GPTConfig(**values))


# %% tags=["nbval-check-output"]
for c in CONNECTIONS:
    model = run_model(folders[c, SEEDS[0]])
    print(f"{LABELS[c]:<9} {n_params(model):>9,} parameters, {active_params(model):>9,} active")


# %% [markdown]
# `train/loss` is what the optimizer minimises (cross-entropy plus the weighted auxiliary
# losses), `train/ce` its cross-entropy part, `val/loss` the cross-entropy on the fixed
# validation windows, `tokens_per_s` the throughput (timing, so it differs from run to run). A
# small reader turns a file into one series per name:


# %%
def read_log(folder):
    """Every series of one run's metrics.csv: {name: (steps, values)} as NumPy arrays."""
    with open(Path(folder) / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    series = {}
    for name in rows[0]:
        points = [(int(r["step"]), float(r[name])) for r in rows if r[name] not in ("", None)]
        if points and name not in ("step", "epoch"):
            steps, values = zip(*points, strict=True)
            series[name] = (np.array(steps), np.array(values))
    return series


def moe_blocks(log):
    """The blocks whose router statistics a log holds."""
    return sorted({int(n.split("block")[1].split("/")[0]) for n in log if n.startswith("moe/")})


logs = {key: read_log(folder) for key, folder in folders.items()}

# %% [markdown]
# Validation runs after every 12th step. Lightning numbers the steps from 0, so the value
# logged at step 11 is measured after 12 updates. The final validation losses:

# %% tags=["nbval-check-output"]
print(f"{'seed':<5}" + "".join(f"{LABELS[c]:>10}" for c in CONNECTIONS))
for seed in SEEDS:
    finals = [logs[c, seed]["val/loss"][1][-1] for c in CONNECTIONS]
    print(f"{seed:<5}" + "".join(f"{v:>10.3f}" for v in finals))

# %% [markdown]
# ## Loss curves


# %%
def tokens_per_step(folder):
    """Training tokens per optimizer step, from the run's saved config.yaml."""
    config = yaml.safe_load((Path(folder) / "config.yaml").read_text())
    windows = config["data"]["batch_size"] * config["trainer"]["accumulate_grad_batches"]
    return windows * config["data"]["block_size"]


def loss_figure(logs, seeds, per_step, title):
    """Validation loss per connection, and each connection's paired difference from Pre-Norm."""
    fig, (ax, ax_diff) = plt.subplots(1, 2, figsize=(10, 3.8))
    steps = logs["residual", seeds[0]]["val/loss"][0]
    scale, unit = (1e6, "millions") if steps[-1] * per_step > 1e6 else (1e3, "thousands")
    tokens = (steps + 1) * per_step / scale
    for c in CONNECTIONS:
        curves = np.array([logs[c, s]["val/loss"][1] for s in seeds])
        base = np.array([logs["residual", s]["val/loss"][1] for s in seeds])
        ax.plot(tokens, curves.mean(0), color=COLORS[c], label=LABELS[c])
        if c == "residual":
            ax_diff.axhline(0, color=COLORS[c], lw=1.5, label="Pre-Norm (zero)")
            continue
        for diff in curves - base:
            ax_diff.plot(tokens, diff, color=COLORS[c], lw=0.7, alpha=0.5)
        ax_diff.plot(tokens, (curves - base).mean(0), color=COLORS[c], lw=2, label=LABELS[c])
    ax.set_xlabel(f"training tokens ({unit})")
    ax.set_ylabel("validation loss (nats per token)")
    ax.set_title(title)
    ax.legend()
    ax_diff.set_xlabel(f"training tokens ({unit})")
    ax_diff.set_ylabel("minus Pre-Norm's, same seed (nats)")
    ax_diff.set_title(f"paired differences: {len(seeds)} seeds (thin) and their mean")
    ax_diff.legend(fontsize=8)
    fig.tight_layout()
    return fig


SMALL_SETTING = "d=64, 4 blocks (3 MoE, 8 experts, top-2), 120 steps of 512 bytes"
loss_figure(logs, SEEDS, tokens_per_step(folders["residual", 0]), f"default size: {SMALL_SETTING}")
plt.show()

# %% [markdown]
# **Figure 10.1.** Left: validation loss of each connection against the training tokens (mean of
# the seeds). Right: the difference from the Pre-Norm model trained with the same seed, for
# every seed (thin) and on average (thick); below zero is better than Pre-Norm. At this size
# the four curves lie on top of each other. The paired differences are a few hundredths of a
# nat, about as large as the differences the papers report, and they move by as much from one
# validation to the next and from one seed to the other.

# %% [markdown]
# ## Expert load
#
# How evenly does each router spread its tokens? The logs hold every expert's load at every
# step. Experts are interchangeable (expert 3 of one run has nothing to do with expert 3 of
# another), so for each run and block the loads are averaged over the last third of training
# and then sorted, busiest first; the profiles are then averaged over the seeds.


# %%
def expert_loads(log, block):
    """The logged steps and the loads of one block's experts at those steps, (steps, E)."""
    names = sorted(
        (n for n in log if n.startswith(f"moe/load/block{block}/expert")),
        key=lambda n: int(n.rsplit("expert", 1)[1]),
    )
    return log[names[0]][0], np.stack([log[n][1] for n in names], axis=1)


def load_profile(log, block, since):
    """Expert loads of one block, averaged over the logged steps >= since, busiest first."""
    steps, loads = expert_loads(log, block)
    return np.sort(loads[steps >= since].mean(0))[::-1]  # (E,)


def load_figure(logs, seeds, title):
    some = logs[CONNECTIONS[0], seeds[0]]
    blocks, last = moe_blocks(some), some["train/loss"][0][-1]
    fig, axes = plt.subplots(1, len(blocks), figsize=(3.4 * len(blocks), 3.4), sharey=True)
    for ax, block in zip(np.atleast_1d(axes), blocks, strict=True):
        for i, c in enumerate(CONNECTIONS):
            profile = np.mean([load_profile(logs[c, s], block, last * 2 / 3) for s in seeds], 0)
            rank = np.arange(1, len(profile) + 1) + (i - 1.5) * 0.08
            ax.plot(rank, profile, "o-", ms=4, color=COLORS[c], label=LABELS[c])
        ax.axhline(1 / len(profile), color=PALETTE["reference"], ls="--", label="balanced, 1/E")
        ax.set_xticks(range(1, len(profile) + 1))
        ax.set_xlabel("expert, busiest first")
        ax.set_title(f"block {block}")
    np.atleast_1d(axes)[0].set_ylabel("fraction of assignments")
    np.atleast_1d(axes)[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


load_figure(logs, SEEDS, f"expert load over the last third of training ({SMALL_SETTING})")
plt.show()

# %% [markdown]
# **Figure 10.2.** The load of each expert (fraction of the token-to-expert assignments it
# receives) in each MoE block, sorted from the busiest to the idlest and averaged over the last
# third of training and over the seeds; the dashed line is a perfectly balanced router,
# $1/E = 0.125$. By the end of training every expert is in use, the busiest receiving about
# one and a half times its balanced share, and the profiles of the four connections are alike.

# %% [markdown]
# The same in numbers, per batch rather than averaged over the steps first: the two auxiliary
# losses, the busiest expert's load times $E$ (1 for a balanced router, at most $E/k = 4$),
# and the entropy of the loads divided by its largest value $\ln E$ (1 for a balanced router,
# $\ln k / \ln E = 1/3$ if every token went to the same two experts). Each is averaged over
# the last third of training, the MoE blocks and the seeds.


# %%
def router_summary(log, since):
    """Per-batch router statistics of one run, averaged over steps >= since and its blocks."""
    per_block = []
    for b in moe_blocks(log):
        steps, loads = expert_loads(log, b)
        late = loads[steps >= since]  # (late steps, E)
        entropy = -(late * np.log(np.clip(late, 1e-12, None))).sum(1) / np.log(late.shape[1])

        def mean_after(name):
            steps, values = log[name]
            return values[steps >= since].mean()

        per_block.append(
            [
                mean_after(f"moe/aux_loss/block{b}"),
                mean_after(f"moe/z_loss/block{b}"),
                mean_after(f"moe/load_max/block{b}"),
                entropy.mean(),
            ]
        )
    return dict(zip(("aux", "z", "max_load", "entropy"), np.mean(per_block, 0), strict=True))


def print_router_table(logs, seeds):
    last = logs[CONNECTIONS[0], seeds[0]]["train/loss"][0][-1]
    print(f"{'':<9} {'balancing loss':>15} {'z-loss':>8} {'busiest x E':>12} {'entropy/ln E':>13}")
    for c in CONNECTIONS:
        rows = [router_summary(logs[c, s], last * 2 / 3) for s in seeds]
        mean = {key: np.mean([r[key] for r in rows]) for key in rows[0]}
        print(
            f"{LABELS[c]:<9} {mean['aux']:>15.3f} {mean['z']:>8.3f} {mean['max_load']:>12.2f}"
            f" {mean['entropy']:>13.3f}"
        )


# %% tags=["nbval-check-output"]
print_router_table(logs, SEEDS)

# %% [markdown]
# ## Router statistics during training
#
# Figure 10.3 follows the auxiliary losses and the busiest expert through training. Each logged
# value comes from a single batch of 512 tokens, so the curves are averaged over the MoE blocks
# and the seeds and smoothed with a running mean over 10 steps.


# %%
def running_mean(values, width):
    kernel = np.ones(width) / width
    return np.convolve(values, kernel, mode="valid")


def router_figure(logs, seeds, title, width=10):
    some = logs[CONNECTIONS[0], seeds[0]]
    blocks = moe_blocks(some)
    panels = [
        ("moe/aux_loss", "load-balancing loss (1: balanced)"),
        ("moe/z_loss", "router z-loss"),
        ("moe/load_max", "busiest expert's load x E"),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.4))
    for ax, (prefix, ylabel) in zip(axes, panels, strict=True):
        for c in CONNECTIONS:
            steps = logs[c, seeds[0]][f"{prefix}/block{blocks[0]}"][0]
            values = np.mean(
                [logs[c, s][f"{prefix}/block{b}"][1] for s in seeds for b in blocks], axis=0
            )
            w = min(width, len(values))
            ax.plot(
                running_mean(steps, w), running_mean(values, w), color=COLORS[c], label=LABELS[c]
            )
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


router_figure(logs, SEEDS, f"router statistics, mean of the MoE blocks ({SMALL_SETTING})")
plt.show()

# %% [markdown]
# **Figure 10.3.** The load-balancing loss (left), the router z-loss (middle) and the busiest
# expert's load times $E$ (right) during training, averaged over the three MoE blocks and the
# seeds, running mean over 10 steps. Around the end of the learning-rate warmup (step 20) the
# routers of all four connections send almost every token to one and the same expert, whose
# load times $E$ nears its ceiling $E/k = 4$; over the next hundred steps the load spreads out
# again. The load-balancing loss hardly registers the episode.

# %% [markdown]
# The numbers behind the episode, per step (averaged over blocks and seeds, not smoothed):


# %%
def mean_series(logs, seeds, connection, prefix):
    """One router statistic per logged step, averaged over the MoE blocks and the seeds."""
    blocks = moe_blocks(logs[connection, seeds[0]])
    steps = logs[connection, seeds[0]][f"{prefix}/block{blocks[0]}"][0]
    values = [logs[connection, s][f"{prefix}/block{b}"][1] for s in seeds for b in blocks]
    return steps, np.mean(values, axis=0)


# %% tags=["nbval-check-output"]
E_small = len(load_profile(logs["residual", SEEDS[0]], 1, 0))
print(f"(ln E)^2 = {math.log(E_small) ** 2:.2f}; the busiest expert's load x E is at most E/k = 4")
columns = ("", "z-loss at step 0", "peak busiest x E", "at step", "balancing loss there")
print("{:<9}{:>18}{:>18}{:>9}{:>22}".format(*columns))
for c in CONNECTIONS:
    steps, busiest = mean_series(logs, SEEDS, c, "moe/load_max")
    aux = mean_series(logs, SEEDS, c, "moe/aux_loss")[1]
    z = mean_series(logs, SEEDS, c, "moe/z_loss")[1]
    i = int(np.argmax(busiest))
    row = (LABELS[c], f"{z[0]:.2f}", f"{busiest[i]:.2f}", steps[i], f"{aux[i]:.3f}")
    print("{:<9}{:>18}{:>18}{:>9}{:>22}".format(*row))

# %% [markdown]
# At its peak the busiest expert takes part in nearly every token's top 2, yet the
# load-balancing loss stays within a few per cent of 1. The loss multiplies each expert's load
# $f_e$ by its mean probability $P_e$, and early in training the router's probabilities are
# still close to uniform: with $P_e = 1/E$ the loss is exactly $E \sum_e f_e / E = 1$,
# whatever the loads. A logit slightly larger for every token is enough to put one expert in
# every token's top 2 while barely moving its mean probability (Exercise 1 has a router whose
# loss is even below 1). The loads themselves, which the logs also hold, are the direct
# measure of balance. The z-loss starts at $(\ln E)^2$, its value for logits near zero, where
# $\log \sum_e e^{z_e} = \ln E$, and falls as training moves that log-sum-exp towards zero.

# %% [markdown]
# ## The papers' MoE claims
#
# Each claim of the papers about MoE models becomes a row: what the paper says, where, what we
# compared, what we measured, and the verdict of Chapter 8's paired test
# (`hclib.stats.compare_seeds`: the mean over seeds of the paired difference, with a Student-$t$
# 95% interval; "reproduces" if the interval lies on the claim's side of zero, "does not
# reproduce at this scale" if it lies on the other side, "inconclusive: within seed spread" if
# it contains zero).
#
# Two claims are about *speed*: HC reaches a loss in fewer tokens. For two runs of one seed we
# measure it as a ratio: take the worse of their two final validation losses, which both runs
# reach, find the step at which each first reaches it (interpolating linearly between
# validations), and divide the baseline's step by the other run's. A ratio of 1.8 means the
# other run needs 1.8 times fewer steps; below 1, it is slower. Ratios are averaged over the
# seeds on a logarithmic scale (a geometric mean, so that 2 and 1/2 cancel), and their interval
# is computed there too.


# %%
def steps_to_reach(steps, losses, target):
    """The first step, interpolated between validations, at which the loss falls to target."""
    i = int(np.argmax(losses <= target))
    if losses[i] > target:
        return np.nan
    if i == 0:
        return float(steps[0])
    s0, s1, l0, l1 = steps[i - 1], steps[i], losses[i - 1], losses[i]
    return float(s0 + (s1 - s0) * (l0 - target) / (l0 - l1))


def speedup(log_a, log_b):
    """How many times fewer steps run a needs than run b to reach the worse final loss."""
    steps, loss_a = log_a["val/loss"]
    loss_b = log_b["val/loss"][1]
    target = max(loss_a[-1], loss_b[-1])
    return steps_to_reach(steps + 1, loss_b, target) / steps_to_reach(steps + 1, loss_a, target)


# %% [markdown]
# The claims, with the papers' numbers from their MoE experiments (HC: OLMoE-1B-7B trained on
# 500B tokens; FC: OLMoE-1.3B and OLMoE-7B; mHC: DeepSeek-V3-style MoEs up to 27B parameters):

# %%
CLAIMS = [  # claim, paper and figure, measure, a, b, kind of claim about a vs b
    ("HC converges faster than the baseline",
     "HC Figure 1 (OLMoE-1B-7B, DHC×4): 1.8× faster", "speedup", "hc", "residual", "higher"),
    ("HC lowers the loss", "HC Figure 1, Table 6: training loss −0.027, C4-en val −0.028",
     "loss", "hc", "residual", "lower"),
    ("FC lowers the loss",
     "FC Figure 4 (OLMoE-1.3B, DFC×4): −0.014; FC Figure 5 (OLMoE-7B): −0.012",
     "loss", "fc", "residual", "lower"),
    ("HC converges faster than FC", "FC Figure 5 (OLMoE-7B, DHC×4 vs DFC×4)",
     "speedup", "hc", "fc", "higher"),
    ("mHC lowers the loss", "mHC Figure 5 (27B MoE): training loss −0.021",
     "loss", "mhc", "residual", "lower"),
]  # fmt: skip


def reproduction_rows(logs, seeds, setting):
    """One dict per claim: claim, paper and figure, our setting, our number, verdict."""
    table = []
    for claim, paper, measure, a, b, kind in CLAIMS:
        if measure == "speedup":
            log_ratios = [math.log(speedup(logs[a, s], logs[b, s])) for s in seeds]
            c = compare_seeds(log_ratios, [0.0] * len(seeds), claim=kind)
            compared = f"steps to the same validation loss, {b} over {a}"
            number = f"{math.exp(c.mean):.2f}× [{math.exp(c.low):.2f}, {math.exp(c.high):.2f}]"
        else:
            final_a = [logs[a, s]["val/loss"][1][-1] for s in seeds]
            final_b = [logs[b, s]["val/loss"][1][-1] for s in seeds]
            c = compare_seeds(final_a, final_b, claim=kind)
            compared = f"final validation loss, {a} minus {b}"
            number = f"{c.mean:+.3f} [{c.low:+.3f}, {c.high:+.3f}]"
        table.append(
            {
                "claim": claim,
                "paper and figure": paper,
                "our setting": f"{compared}; {setting}",
                "our number": number,
                "verdict": c.verdict,
            }
        )
    return table


SETTING = f"MoE GPT {SMALL_SETTING}, {len(SEEDS)} seeds"
reproduction = reproduction_rows(logs, SEEDS, SETTING)

# %% tags=["nbval-check-output"]
print(markdown_table(reproduction))

# %% [markdown]
# "Our number" is the mean over seeds with its 95% interval: a ratio for the speed claims, a
# difference of final validation losses (nats per byte here) for the others.

# %% tags=["nbval-check-output"]
verdicts = [row["verdict"] for row in reproduction]
for verdict in VERDICTS:
    print(f"{verdict:<33}: {verdicts.count(verdict)} of {len(verdicts)}")
family = multiplicity(len(reproduction))
print(
    f"{family.intervals} intervals at 95%: {family.expected_false:.2f} expected to exclude", end=""
)
print(" zero by chance if nothing differed")
VERDICT_DIR = REPO / "results" / "verdicts"
if SIZE == "small" and VERDICT_DIR.is_dir():  # the book's own copy, at the default size
    records = records_from_rows(reproduction, "10_moe_llm_with_lightning", seeds=len(SEEDS))
    write_verdicts(records, "10_moe_llm_with_lightning", VERDICT_DIR)

# %% [markdown]
# The comparison is at equal width, depth, experts and tokens, not at equal parameters. The
# connections' own weights are *active* for every token, and at this width they are not small
# next to the rest of the model:

# %% tags=["nbval-check-output"]
base_active = active_params(run_model(folders["residual", SEEDS[0]]))
for c in CONNECTIONS:
    a = active_params(run_model(folders[c, SEEDS[0]]))
    print(f"{LABELS[c]:<9} {a:>9,} active parameters, {a / base_active - 1:+.1%} against Pre-Norm")

# %% [markdown]
# **Verdicts at the default size.** None of the claims can be judged here. With two seeds the
# Student-$t$ factor is 12.7: an interval excludes zero only if the two seeds agree to a small
# fraction of their mean difference. Some means lean the papers' way (FC finished below
# Pre-Norm under both seeds, by a few hundredths of a nat), but the papers' effects, 0.01 to
# 0.03 nats after hundreds of billions of tokens, are no larger than what separates two seeds
# of a 120-step run. The default size shows the pipeline working, not the papers' effects.
#
# Two more things limit what any verdict here could mean. Five intervals at 95% carry about a
# quarter of a false exclusion between them, so one interval just excluding zero would be weak
# evidence. And mHC's model has about a fifth more active parameters than Pre-Norm's (the last
# cell): its projection reads all $n d$ numbers of the state in every one of the eight
# connections, a cost that grows like $d$ where the attention and expert layers grow like
# $d^2$. At this width an mHC gain could come from those extra weights as much as from the
# constraint on the mixing matrices; the mHC paper's 27B model is wide enough for the same
# weights to be a fraction of a per cent (Chapter 9 counts the share at several widths), so a
# fair small-scale test would match active parameters, for instance by widening Pre-Norm's
# experts until the counts agree ({ref}`ex-10-active`). HC and FC add about one per cent, too
# little to matter.

# %% [markdown]
# ## The full size
#
# `HCLIB_BOOK_SIZE=full` runs the same cells with `configs/moe-small.yaml` as the recipe (the
# file shown at the top; the overlay changes only where it logs and how many checkpoints it
# keeps) and three seeds per connection:
# twelve runs of 5000 steps of 16,384 BPE tokens each, in bfloat16 on one GPU. Its results are
# not computed when the book is built: they are committed once, as data, under
# `results/<date>-<device>/10_moe_llm_with_lightning/` (each run's `metrics.csv` and
# `config.yaml`, and a `runs.json` describing the machine), and this section loads the newest
# such folder when there is one. To regenerate them on a machine with a GPU, run the chapter at
# full size and name a folder for the results (the chapter writes nothing there otherwise):
#
# ```bash
# HCLIB_BOOK_SIZE=full HCLIB_RESULTS_DIR=$PWD/results/$(date +%F)-<device> \
#     .venv/bin/jupyter execute notebooks/10_moe_llm_with_lightning.ipynb
# ```
#
# This leaves the notebook unchanged (`--inplace` would not; the committed notebook must stay
# at the default size for nbval). Each run is the command line of the previous sections with
# `--config ../configs/moe-small.yaml`; the same twelve runs from a shell would be
#
# ```bash
# for seed in 0 1 2; do for c in residual hc fc mhc; do
#     python -m hclib.train fit --config configs/moe-small.yaml --model.connection $c \
#         --seed_everything $seed --data.seed $seed
# done; done
# ```
#
# which logs each connection into its own folder, `runs/moe-small-<connection>/version_N/`
# (`runs/moe-small-hc/version_0/` for HC's first seed; TensorBoard and CSV side by side). The
# CLI names a run `<recipe>-<connection>` unless `--run_name` names it.

# %%
RESULTS_NAME = "10_moe_llm_with_lightning"
if os.environ.get("HCLIB_RESULTS_DIR"):  # opt-in: keep this run's logs as results
    target = Path(os.environ["HCLIB_RESULTS_DIR"]) / RESULTS_NAME
    for (connection, seed), folder in folders.items():
        keep = target / connection / f"seed{seed}"
        keep.mkdir(parents=True, exist_ok=True)
        for name in ("metrics.csv", "config.yaml", "hparams.yaml"):
            shutil.copy2(folder / name, keep / name)
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    description = {
        "size": SIZE,
        "recipe": str(RECIPE.relative_to(REPO)),
        "overlay": OVERLAY_TEXT,
        "connections": list(CONNECTIONS),
        "seeds": SEEDS,
        "seconds": {f"{c}/seed{s}": round(t) for (c, s), t in seconds.items()},
        "device": gpu or f"CPU ({platform.processor() or platform.machine()})",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "torch": torch.__version__,
        "hclib": hclib.__version__,
        "date": datetime.date.today().isoformat(),
    }
    (target / "runs.json").write_text(json.dumps(description, indent=2) + "\n")
    print("saved", target)


class Logs(dict):
    """{(connection, seed): log} of a committed result, with each run's folder."""

    def __init__(self, root, connections, seeds):
        super().__init__()
        self.folder = {(c, s): root / c / f"seed{s}" for c in connections for s in seeds}
        for key, folder in self.folder.items():
            self[key] = read_log(folder)


def newest_full_results(root=REPO / "results"):
    """The newest committed larger runs of this chapter, at the full size or the GPU size
    (``benchmarks/chapters_gpu.py``): (folder, description) or None."""
    for path in sorted(root.glob(f"*/{RESULTS_NAME}/runs.json"), reverse=True):
        description = json.loads(path.read_text())
        if description.get("size") in ("full", "gpu"):
            return path.parent, description
    return None


full = newest_full_results()
if full is None:
    print(f"No full-size or GPU-size results committed yet (results/*/{RESULTS_NAME}/).")
else:
    full_root, full_description = full
    full_seeds = full_description["seeds"]
    full_logs = Logs(full_root, CONNECTIONS, full_seeds)
    print(
        f"{full_description['size']}-size results from {full_root.parent.name}: "
        f"{full_description['device']},"
    )
    print(f"  {full_description['recipe']}, seeds {full_seeds}, run on {full_description['date']}")

# %% [markdown]
# When full-size results (or the GPU size's of `benchmarks/chapters_gpu.py`, which writes the
# same files from `configs/moe-gpu.yaml`) are present, the next cell draws Figures 10.1 to 10.3
# again from them and prints their router statistics, their reproduction table and both sets of
# verdicts side by side.

# %%
if full is not None:
    cfg_full = yaml.safe_load(
        (full_logs.folder["residual", full_seeds[0]] / "config.yaml").read_text()
    )
    m_full, t_full = cfg_full["model"], cfg_full["trainer"]
    FULL_SETTING = (
        f"d={m_full['d_model']}, {m_full['n_layer']} blocks ({len(m_full['moe_layers'])} MoE, "
        f"{m_full['n_experts']} experts, top-{m_full['top_k']}), {t_full['max_steps']} steps of "
        f"{tokens_per_step(full_logs.folder['residual', full_seeds[0]]):,} tokens"
    )
    full_per_step = tokens_per_step(full_logs.folder["residual", full_seeds[0]])
    full_size = full_description["size"]
    loss_figure(full_logs, full_seeds, full_per_step, f"{full_size} size: {FULL_SETTING}")
    load_figure(full_logs, full_seeds, f"{full_size} size: expert load over the last third")
    router_figure(full_logs, full_seeds, f"{full_size} size: router statistics")
    plt.show()
    print_router_table(full_logs, full_seeds)
    full_reproduction = reproduction_rows(
        full_logs, full_seeds, f"MoE GPT {FULL_SETTING}, {len(full_seeds)} seeds"
    )
    print(markdown_table(full_reproduction))
    print()
    side_by_side = [
        {"claim": s["claim"], "default size": s["verdict"], f"{full_size} size": f["verdict"]}
        for s, f in zip(reproduction, full_reproduction, strict=True)
    ]
    print(markdown_table(side_by_side))

# %% [markdown]
# ## From one GPU to many nodes
#
# The same command trains on a cluster; what changes is how many processes run it and how
# they share the work. The multi-node recipe is a SLURM batch script,
# `scripts/slurm/train.sbatch`, which by default runs `configs/cluster.yaml`, a 24-block,
# 1024-wide GPT with mHC, sharded with FSDP:

# %%
print((REPO / "scripts" / "slurm" / "train.sbatch").read_text())

# %% [markdown]
# Read it from the `#SBATCH` lines down. The job asks for 2 nodes with 8 tasks and 8 GPUs
# each, one process per GPU. `srun` starts the 16 processes, each running the same
# `python -m hclib.train fit` command, and Lightning finds its rank, the other processes and
# the address of rank 0 in SLURM's environment variables, so nothing like `torchrun` is
# needed. The script passes the allocation's node and task counts to `trainer.num_nodes` and
# `trainer.devices`, so `sbatch --nodes=4 ...` needs no edit of the recipe (Lightning refuses
# to start when the two disagree). `--signal=SIGUSR1@90` and `--requeue` make a job that
# reaches its time limit save a checkpoint and queue itself again, to resume where it stopped.
# The corpus must sit on a file system that every node sees (`HCLIB_DATA`). The book's page
# "How to run the book" lists the steps of a submission.
#
# What makes `configs/cluster.yaml` a cluster recipe, besides its size, is one line of its
# `model` section, recomputation (the memory section below says why), and the first lines of
# its `trainer` section, up to the precision:

# %%
cluster_text = (REPO / "configs" / "cluster.yaml").read_text().splitlines()
recompute_line = next(line for line in cluster_text if line.strip().startswith("recompute:"))
print(f"model:\n  ...\n{recompute_line}\n")
begin = cluster_text.index("trainer:")
end = next(i for i, line in enumerate(cluster_text) if line.startswith("  precision:"))
print("\n".join(cluster_text[begin : end + 1]))

# %% [markdown]
# ### The global batch
#
# Four numbers set how many windows one optimizer step sees: the micro-batch each GPU runs
# forward and backward at once, the GPUs per node (`trainer.devices`), the nodes
# (`trainer.num_nodes`) and the micro-batches accumulated before each step
# (`trainer.accumulate_grad_batches`):
#
# $$\text{global batch} = \text{micro-batch} \times \text{devices} \times \text{nodes}
# \times \text{accumulation}.$$
#
# In hclib's recipes `data.batch_size` is the global batch of one micro-step, over all GPUs
# (`CorpusDataModule`: on $W$ GPUs rank $r$ takes its $1/W$ share of the same draw of
# windows), so the micro-batch per GPU is `batch_size / (devices × nodes)`. Moving a
# recipe from one GPU to sixteen without touching `batch_size` therefore trains on exactly the
# same windows, step for step, and gives each GPU a sixteenth of the work. To keep each
# GPU as busy as before, raise `batch_size` sixteen-fold instead, and retune the learning rate
# for the larger batch.

# %% tags=["nbval-check-output"]
SETUPS = [  # recipe, GPUs per node, nodes, accumulation
    ("moe-small.yaml", 1, 1, 1),
    ("moe-small.yaml", 8, 2, 1),
    ("cluster.yaml", 8, 2, 1),
    ("cluster.yaml", 8, 4, 2),
]
columns = ("recipe", "GPUs x nodes", "accumulate", "per GPU", "global", "tokens per step")
print("{:<15}{:>13}{:>11}{:>9}{:>8}{:>17}".format(*columns))
for name, devices, nodes, accumulate in SETUPS:
    data = yaml.safe_load((REPO / "configs" / name).read_text())["data"]
    micro = data["batch_size"] // (devices * nodes)  # windows per GPU per micro-batch
    global_batch = micro * devices * nodes * accumulate
    tokens = global_batch * data["block_size"]
    row = (name, f"{devices} x {nodes}", accumulate, micro, global_batch, f"{tokens:,}")
    print("{:<15}{:>13}{:>11}{:>9}{:>8}{:>17}".format(*row))

# %% [markdown]
# `moe-small.yaml` on two nodes runs 4 windows per GPU, far too few to keep a GPU busy: a
# recipe moves to a cluster with its batch size rethought. Accumulating micro-batches doubles
# the global batch without more memory per GPU, at the cost of time.
#
# ### Memory per GPU: DDP against FSDP
#
# **DDP** (distributed data parallel) gives every GPU a full copy of the model, the gradients
# and the optimizer state, and averages the gradients across GPUs during every backward pass
# (all-reduces of buckets of gradients, below). **FSDP** (fully sharded data parallel) splits
# parameters, gradients and optimizer state into $W$ shards, one per GPU; before each unit of
# the model runs the GPUs gather its full parameters, and after its backward pass they
# reduce-scatter its gradients, so each GPU keeps only its shard between uses. hclib's recipes
# shard with FSDP2 (PyTorch's `fully_shard`) through Lightning's `ModelParallelStrategy`:
# `GPTModule.configure_model` calls `hclib.training.sharding.shard_gpt`, which makes each
# connection, with its branch inside, one unit, and the embedding, final norm and output layer
# the root unit.
#
# With `bf16-mixed` precision and AdamW, each parameter costs 16 bytes of *state*: its float32
# value (4), its float32 gradient (4) and AdamW's two float32 moments (8). Under DDP every GPU
# holds all of it; under FSDP one $W$-th. The *activations* kept for the backward pass are
# separate and do not shrink with FSDP. The cells below estimate both, for the chapter's recipe,
# for the cluster recipe, and for an MoE version of the cluster recipe (its blocks 1 to 23 with
# 8 experts as wide as the dense layer, top-2). The counts of parameters are exact (models on
# the meta device); everything in bytes below is an **estimate**.

# %%
STATE_BYTES = 16  # per parameter: float32 weight, gradient and AdamW's two moments


def activation_bytes(cfg, tokens, recompute, state_bytes=2):
    """Estimate of the activations one GPU keeps for the backward pass, in bytes (bfloat16).

    A block keeps about 34 bytes per token and unit of width (Korthikanti et al. 2022, with the
    attention scores not stored, as scaled_dot_product_attention does); MoE layers are counted
    like the dense layer they replace. HC and mHC keep an n-stream state per connection on top
    (HC Appendix B, hclib.traffic.hc_activation_elements). With each connection recomputed in
    the backward pass, only the connections' inputs are kept, plus one block's activations.
    The carried state takes `state_bytes` per number: 2 under bf16-mixed with GPTConfig's
    default state_dtype="autocast" (bfloat16), 4 with state_dtype="weights" (float32).
    """
    d, L = cfg.d_model, cfg.n_layer
    k = cfg.n if cfg.connection in ("hc", "mhc") else 1  # carried state, in units of d
    block = 34 * tokens * d
    if recompute:
        return 2 * L * k * tokens * d * state_bytes + block
    extra = state_bytes * hc_activation_elements(cfg.n, tokens, d, L) if k > 1 else 0
    return L * block + extra


cluster, cluster_recipe = recipe_model("cluster.yaml")
cluster_moe, _ = recipe_model("cluster.yaml", moe_layers=list(range(1, 24)))
MODELS = [  # name, model, recipe's data, GPUs W
    ("moe-small (mHC)", recipe_model("moe-small.yaml", connection="mhc")[0], moe_recipe, 1),
    ("cluster (dense, mHC)", cluster, cluster_recipe, 16),
    ("cluster, MoE blocks (mHC)", cluster_moe, cluster_recipe, 16),
]

# %% tags=["nbval-check-output"]
GB = 1e9
print(f"{'model':<26} {'params':>8} {'W':>3} {'state DDP':>10} {'state FSDP':>11}", end="")
print(f" {'activations':>12} {'recomputed':>11}")
for name, model, recipe, W in MODELS:
    P = n_params(model)
    tokens = recipe["data"]["batch_size"] // W * recipe["data"]["block_size"]  # one micro-batch
    act = activation_bytes(model.cfg, tokens, recompute=False)
    act_recomputed = activation_bytes(model.cfg, tokens, recompute=True)
    print(
        f"{name:<26} {P / 1e6:>7.0f}M {W:>3} {STATE_BYTES * P / GB:>8.1f}GB"
        f" {STATE_BYTES * P / W / GB:>9.2f}GB {act / GB:>10.1f}GB {act_recomputed / GB:>9.1f}GB"
    )

# %% [markdown]
# All in gigabytes per GPU, estimates. "State" is weights, gradients and optimizer moments;
# "activations" those kept for the backward pass of one micro-batch (16 windows of 1024 tokens
# per GPU for the cluster recipe, 64 of 256 for `moe-small`), without and with each connection
# recomputed (the cluster recipe's `model.recompute: true`). The chapter's recipe fits
# one GPU with room to spare. The dense cluster model would fit under DDP too (5 GB of state);
# FSDP makes the state negligible. The MoE version shows why mixtures of experts and sharding go
# together: 1.7 billion parameters need 27 GB of state on every GPU under DDP and 1.7 GB under
# FSDP across 16 GPUs, while its activations are those of the dense model. With mHC, the four
# streams of every connection's input dominate what recomputation keeps: this is the memory
# that mHC's own recomputation scheme (Chapter 7) trades against compute.
#
# These estimates count the carried state at 2 bytes a number, and under `bf16-mixed` that is
# what the GPT does by default: `GPTConfig.state_dtype = "autocast"` (the command line's
# `--model.state_dtype`) holds the state in the autocast dtype, bfloat16, while every
# connection still computes its coefficients in float32. `--model.state_dtype weights` keeps
# the state in the weights' float32 instead, which doubles its share. The cell below checks
# the dtype on a small GPT under a CPU autocast, and gives the MoE cluster model's
# activations both ways.

# %% tags=["nbval-check-output"]
_, _, _, W_cluster = MODELS[2]  # the MoE cluster model, its GPUs
data = cluster_recipe["data"]
cluster_tokens = data["batch_size"] // W_cluster * data["block_size"]  # one micro-batch
torch.manual_seed(0)
idx = torch.randint(0, 256, (2, 16))  # (B, T)
for state_dtype in ("autocast", "weights"):
    small_gpt = GPT(
        GPTConfig(
            vocab_size=256,
            block_size=16,
            n_layer=1,
            n_head=2,
            d_model=32,
            connection="mhc",
            state_dtype=state_dtype,
        )
    )
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        carried = small_gpt.state(idx)  # (B, T, n, d)
    size = carried.element_size()
    act = activation_bytes(cluster_moe.cfg, cluster_tokens, recompute=False, state_bytes=size)
    act_re = activation_bytes(cluster_moe.cfg, cluster_tokens, recompute=True, state_bytes=size)
    print(
        f"state_dtype={state_dtype!r:<11}: weights {small_gpt.embed.weight.dtype}, state"
        f" {carried.dtype} ({size} bytes); cluster MoE activations {act / GB:.1f} GB,"
        f" recomputed {act_re / GB:.1f} GB"
    )

# %% [markdown]
# FSDP pays for the memory with communication: per step each GPU receives every parameter
# twice (gathered for the forward pass, again for the backward pass) and sends its share of
# every gradient once. In which dtype is hclib's choice, not Lightning's: `shard_gpt` gives
# FSDP2 no `MixedPrecisionPolicy`, so parameters are gathered and gradients reduced in their
# own dtype, float32, even under `bf16-mixed` (autocast then casts each matrix product's
# inputs, as on one GPU). A bfloat16 gather would halve those bytes, but the gathered
# parameters would then be bfloat16 everywhere, the connections' coefficient weights ($\phi$,
# $\alpha$, the static weights) included, and the book's connections compute their
# coefficients in float32. The cell below shards a small mHC GPT with `shard_gpt` in a
# one-process group and reads the policy and the dtype of the parameters as a connection sees
# them inside the forward pass. In float32 that is about $2 \times 4P + 4P = 12P$ bytes per
# step, against DDP's all-reduce of float32 gradients, about $2 \times 4P$ bytes (each times
# $(W-1)/W$, for a ring). The counts are of the same order; what differs is when they happen.
# FSDP's gathers sit on the critical path of every unit. DDP, which hclib leaves as it is
# (`strategy: ddp`), does not all-reduce once at the end: it groups the gradients into
# buckets (25 MB by default, `bucket_cap_mb`, the first one smaller) and starts each bucket's
# all-reduce as soon as the backward pass has filled it, so most of the communication
# overlaps the rest of the backward pass. Within a node (NVLink) either is cheap; across
# nodes the recipe's two-dimensional mesh (`data_parallel_size: auto`, one replica per node)
# shards within each node and replicates across nodes (HSDP), so the gathers stay inside a
# node and only the reduction of the gradient shards between the replicas crosses the slower
# network.

# %% tags=["nbval-check-output"]
import torch.distributed as dist
import torch.nn.parallel.distributed as ddp_module
from torch.distributed.device_mesh import init_device_mesh

from hclib.training.sharding import shard_gpt

dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
try:
    torch.manual_seed(0)
    sharded = GPT(
        GPTConfig(vocab_size=256, block_size=16, n_layer=1, n_head=2, d_model=32, connection="mhc")
    )
    shard_gpt(sharded, init_device_mesh("cpu", (1,)))  # what GPTModule.configure_model does
    unit = sharded.layers[0]  # one connection, one FSDP2 unit
    policy = unit._get_fsdp_state()._fsdp_param_group.mp_policy  # FSDP2's record of it
    seen = {}

    def see(module, args):
        """Runs after FSDP2's own pre-forward hook: the parameters are gathered."""
        for name, p in module.named_parameters(recurse=False):
            seen[name] = (p.dtype, type(p).__name__)

    handle = unit.register_forward_pre_hook(see)
    with torch.autocast("cpu", dtype=torch.bfloat16), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rms_norm's note on its float32 weight
        sharded(idx, idx)[1].backward()
    handle.remove()
    grad_dtypes = sorted({str(p.grad.dtype) for p in sharded.parameters()})
finally:
    dist.destroy_process_group()

print(f"shard_gpt's MixedPrecisionPolicy: param_dtype={policy.param_dtype},", end="")
print(f" reduce_dtype={policy.reduce_dtype} (None: the parameters' own dtype)")
print("inside the bf16 autocast forward, the mHC connection's own parameters:")
for name, (dtype, kind) in seen.items():
    print(f"  {name:<10} {dtype} ({kind}: gathered whole)")
print(f"sharded gradients after the backward pass: {', '.join(grad_dtypes)}")
gather = seen["phi"][0].itemsize  # bytes of a gathered parameter
reduce = gather if policy.reduce_dtype is None else policy.reduce_dtype.itemsize
print(
    f"bytes per parameter and step: FSDP {2 * gather} + {reduce} = {2 * gather + reduce},", end=""
)
print(" DDP 2 x 4 = 8 (times (W-1)/W)")
print(f"DDP's default gradient bucket: {ddp_module._DEFAULT_BUCKET_CAP_MB} MB")

# %% [markdown]
# ### Checkpoints, precision and what else changes
#
# * **Checkpoints.** A checkpoint holds the weights and AdamW's moments, about 12 bytes per
#   parameter; the cell below gives the sizes. Under FSDP (`save_distributed_checkpoint:
#   true` in the recipe) each checkpoint is a folder, `step=001000.ckpt/`, to which every GPU
#   writes its own shard, in parallel and without gathering anything on rank 0.
#   `python -m hclib.train convert-checkpoint FOLDER OUT.ckpt` makes one file of such a folder
#   (the weights and the run's settings, without the optimizer state) that loads on any
#   machine, without a process group. Resuming (`--ckpt_path <run>/checkpoints/last.ckpt`, a
#   file or a folder) continues the checkpoint's run with exactly the batches the
#   uninterrupted run would have seen, because the windows of step $i$ depend only on the seed
#   and $i$ (Chapter 9); a `--model.*` or `--data.*` value that differs from the checkpoint's
#   stops the resume with an error naming it. To start a *new* run from trained weights (with
#   another learning rate, say), give `--model.init_from PATH` instead: the weights are
#   loaded, and the optimizer, the schedule and the step start afresh. On a cluster, put
#   `default_root_dir` and the logs on a file system every node sees; the job's own
#   checkpoint before its time limit (above) covers the end of an allocation, and
#   `checkpoint.every_n_train_steps` bounds what a crash can lose.
# * **Precision.** `bf16-mixed` runs matrix products in bfloat16 under autocast and keeps
#   float32 weights, gradients and optimizer state; bfloat16 has float32's exponent range, so no
#   loss scaling is needed. The carried state is bfloat16 too (`state_dtype`, above), while the
#   connections compute their coefficients in float32. The MoE router computes its softmax in
#   float32 (`MoE.route`) and the loss is computed in float32. On a CPU the recipes use
#   `32-true`.
# * **Kernels and compilation.** On a GPU `impl: auto` runs the connections through Chapter 7's
#   Triton kernels. `moe-small.yaml` keeps `compile: false`: the number of tokens each expert
#   receives changes every step, which would make `torch.compile` recompile.
# * **Experts are not parallelised.** Every GPU runs all experts on its own tokens (under FSDP,
#   gathering their weights first). Large MoE systems instead place different experts on
#   different GPUs and exchange tokens between them (expert parallelism, an all-to-all); hclib
#   does not implement that.

# %% tags=["nbval-check-output"]
for name, model, _, W in MODELS:
    P = n_params(model)
    sharded = f"{12 * P / W / GB:.2f} GB per GPU, sharded over {W}"
    print(f"{name:<26} checkpoint about {12 * P / GB:5.1f} GB ({sharded})")

# %% [markdown]
# ### Reading the logs of a multi-node run
#
# The logs of a cluster run have the same names as the ones read above, with a few
# differences to keep in mind:
#
# * **One folder per job, written by rank 0.** Under SLURM a run's logs go into
#   `runs/cluster-mhc/slurm-<job id>/` (the run's name, `<recipe>-<connection>`, then the job
#   instead of `version_N`), and a requeued job's into `slurm-<job id>-requeue<k>/` beside
#   it. It holds one `metrics.csv`, one set of TensorBoard events (`tensorboard --logdir
#   runs`), the diagnostics figures and `checkpoints/`; rank 0 writes all of it except the
#   checkpoint folders, to which every process adds its shard. The checkpoint a job saves
#   before its time limit, `hpc_ckpt_<k>.ckpt`, waits in `runs/cluster-mhc/` for the requeued
#   job. What the processes print goes to the job's output file,
#   `slurm-hclib-train-<job id>.out` (the script's `--output`).
# * **What is averaged over GPUs.** `val/loss` is averaged over all ranks (`sync_dist=True`).
#   The expert loads, `moe/load/*` and `moe/load_max/*`, count the assignments of every GPU:
#   `MoE` sums its counts over the ranks (one all-reduce of $E$ numbers per layer and step),
#   because the load-balancing loss is defined on the whole batch, and `moe/aux_loss/*` uses
#   these global loads with rank 0's router probabilities. `train/loss`, `train/ce` and
#   `moe/z_loss/*` are rank 0's own micro-batch, one $W$-th of the global batch: noisier than
#   a one-GPU run of the same recipe, but drawn from the same data.
# * **Throughput.** `tokens_per_s` counts the tokens of all GPUs; `mfu` divides the model's
#   arithmetic by the peak of all GPUs (`hclib.training.flops`), so a run whose MFU falls as
#   nodes are added is losing time to communication or waiting.
# * **Failures.** A NaN or infinite loss on any rank stops every rank with a message that
#   names the step (`nan_guard`), before the bad update; resume from the last checkpoint.

# %% [markdown]
# ## Summary
#
# - A recipe is a commented YAML file; `python -m hclib.train fit --config <recipe>` trains it,
#   later `--config` files and `--key value` arguments change single keys, and the CLI saves the
#   merged recipe (`config.yaml`) beside the logs. `hclib.training.cli.main(args)` runs the same
#   command in-process.
# - The chapter's GPU recipe, `moe-small.yaml`, routes each token to 2 of 8 half-width experts:
#   about 2.5 times the parameters of the dense `gpt-small` at the same FLOPs per token.
# - The logs (`metrics.csv`) hold the losses, each MoE layer's load-balancing and z-losses,
#   every expert's load and the busiest expert's load. In the default runs every router sends
#   nearly all tokens to one expert around the end of the warmup and then spreads its load
#   again; the load-balancing loss, which stays near 1 while the router's probabilities are
#   nearly uniform, hardly shows it, so read the loads. The connection changes little.
# - Top-k routing is a dispatch (sort the $N k$ token-expert assignments by expert, one block of
#   tokens per expert) and a combine (weight each expert's outputs and add them back into their
#   tokens' rows); a dozen lines from scratch equal `hclib.models.moe.MoE`.
# - At the default size none of the papers' MoE claims can be judged: the effects they report
#   are no larger than the spread of two seeds. The comparison is at equal shape, not equal
#   active parameters, and mHC has about a fifth more of them at this width. The full-size runs
#   on one GPU are the test; the chapter loads them from `results/` when they are committed.
# - On a cluster, the global batch is micro-batch × devices × nodes × accumulation (in hclib,
#   `data.batch_size` is already global); DDP keeps 16 bytes of state per parameter on every
#   GPU and all-reduces its gradients in buckets that overlap the backward pass, FSDP keeps one
#   $W$-th of the state and gathers each unit's parameters before it runs (in float32 in
#   hclib, which keeps the connections' coefficients float32), and neither shrinks the
#   activations, for which recomputation (`model.recompute`) and the bfloat16 state are the
#   tools.

# %% [markdown]
# ## Exercises
#
# ```{exercise} Reading the load-balancing loss
# :label: ex-10-balancing-loss
# Show that the busiest expert's load times $E$ lies between 1 and $E/k$, and that the
# load-balancing loss $E \sum_e f_e P_e$ equals $E/k$ when every token gives probability $1/k$
# to each of the same $k$ experts. Then take $E = 2$ experts and $k = 1$: find a router for
# which the busier expert receives 70% of the tokens and the loss is below 1. What does this
# say about reading the loss as a measure of balance?
# ```
#
# ```{solution} ex-10-balancing-loss
# :class: dropdown
# The loads are fractions of the $Nk$ assignments and sum to 1, so the largest is at least
# $1/E$; a token assigns to a given expert at most once, so an expert gets at most $N$ of the
# $Nk$ assignments, $f_e \le 1/k$. Times $E$: between 1 and $E/k$. If every token gives $1/k$
# to the same $k$ experts, those have $f_e = P_e = 1/k$ and the others 0, and the loss is
# $E \cdot k \cdot (1/k)^2 = E/k$. For the second part, let 70% of the tokens give
# probabilities $(0.51, 0.49)$ (they choose expert 1, narrowly) and 30% give $(0.1, 0.9)$
# (expert 2, confidently). Then $f = (0.7, 0.3)$, $P = (0.387, 0.613)$ and the loss is
# $2\,(0.7 \cdot 0.387 + 0.3 \cdot 0.613) = 0.91$. The loss is not a function of the
# loads: a router that wins its busy expert's tokens by narrow margins looks balanced to it,
# which is what the early episode of Figure 10.3 shows in milder form. Its gradient still
# pushes the busy expert's probability down, which is its job; to see the balance, read the
# loads.
# ```
#
# ```{exercise} Tokens per expert
# :label: ex-10-capacity
# In the default runs each MoE layer sees 512 tokens per step and routes each to 2 of 8
# experts. How many tokens does an expert process per step when the router is balanced? How
# many does the busiest expert process at the end of training (the router table) and at the
# peak of Figure 10.3? Why does this matter more on a GPU than on a CPU?
# ```
#
# ```{solution} ex-10-capacity
# :class: dropdown
# Balanced: $512 \cdot 2 / 8 = 128$ tokens. The busiest expert processes its load times the
# 1024 assignments, that is 128 times its "busiest × E": at the end of training about 1.6, so
# some 200 tokens; at the peak about 4, so all 512 tokens, or nearly. `MoE.forward` runs
# each expert on exactly its tokens, one matrix product per expert. On a GPU the layer then
# waits for its busiest expert, and an unbalanced router leaves the rest of the GPU idle;
# systems that give each expert a fixed *capacity* instead drop the tokens above it. On a CPU
# the experts run one after another, and only the total, always 1024 assignments, matters.
# ```
#
# ```{exercise} A cluster plan
# :label: ex-10-plan
# You have 4 nodes of 8 GPUs with 80 GB each and want to train the MoE version of the cluster
# model with a global batch of 512 windows of 1024 tokens. Pick a micro-batch per GPU and an
# accumulation, say whether DDP could work, and estimate the memory per GPU under FSDP with
# recomputation, using the functions of the cluster section.
# ```
#
# ```{solution} ex-10-plan
# :class: dropdown
# With $W = 32$ GPUs, 512 windows per step is 16 per GPU without accumulation (`batch_size:
# 512`, `devices: 8`, `num_nodes: 4`), or 8 per GPU with `accumulate_grad_batches: 2` and
# `batch_size: 256` if memory is short. That is the cluster recipe's micro-batch, so the
# activation estimates of the memory table apply: about 20 GB kept without recomputation,
# 7 GB with it. Under DDP every GPU would also hold the 27 GB of state: on paper it fits 80 GB
# with recomputation, with less room for communication buffers and fragmentation. Under FSDP
# the state is $26.6 / 32 \approx 0.8$ GB per GPU, so the activations dominate. Check with
# `STATE_BYTES * n_params(cluster_moe) / 32` and
# `activation_bytes(cluster_moe.cfg, 16 * 1024, recompute=True)`.
# ```
#
# ```{exercise} A longer CPU run
# :label: ex-10-longer
# Change the overlay to 600 steps, validating every 50, and train Pre-Norm and HC with three
# seeds each. How much narrower does the interval of the speed-up claim become, for the same
# spread of the per-seed ratios? Does the ratio move towards the paper's 1.8?
# ```
#
# ```{solution} ex-10-longer
# :class: dropdown
# Edit `OVERLAY_TEXT["small"]` (`max_steps: 600`, `val_check_interval: 50`), set `SEEDS = [0,
# 1, 2]` and `CONNECTIONS = ("residual", "hc")`, and keep only the first two rows of `CLAIMS`.
# Each run takes about five times longer. The interval's half-width is
# $t_{0.975,S-1}\, s / \sqrt S$: $12.71/\sqrt 2 = 9.0$ times the spread $s$ with two seeds,
# $4.30/\sqrt 3 = 2.5$ times with three, so about 3.6 times narrower. Whether the ratio moves
# towards 1.8 is what the run answers; the paper's figure comes from a model some ten thousand
# times larger (7 billion parameters against half a million) trained on a million times more
# tokens, so a ratio near 1 would not contradict it.
# ```
#
# ```{exercise} mHC at equal active parameters
# :label: ex-10-active
# mHC's model has more active parameters than Pre-Norm's at the same width. Which width of
# Pre-Norm's experts (`moe_hidden` in the overlay) gives it as many active parameters as mHC
# with `moe_hidden: 88`, and how would you add that run to the comparison so that the seeds
# stay paired?
# ```
#
# ```{solution} ex-10-active
# :class: dropdown
# Count with `active_params(recipe_model(...))` or by hand: each MoE layer's active expert
# weights are $k \cdot 3 d h_e$, so raising $h_e$ by one adds $3 d k = 384$ active parameters
# per MoE layer, $3 \cdot 384$ for the three MoE blocks; divide mHC's extra active parameters
# (the difference printed above) by that and round. Train the wider Pre-Norm with the same
# seeds through the same command line (`--model.moe_hidden`): its attention weights and
# batches are then those of the other runs, though its expert weights are not, since they
# have a different shape. Compare it with mHC as a fifth connection in `reproduction_rows`.
# ```
