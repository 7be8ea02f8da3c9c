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
# # Residual connections and their seesaw
#
# *Goal: see why deep networks add each layer's output to its input, write the two places a
# norm can go (Pre-Norm and Post-Norm), and measure the price each one pays on a deep toy
# network.*
#
# [![Open In Colab](figures/colab-badge.svg)](https://colab.research.google.com/github/hclib-book/hclib/blob/main/notebooks/01_residual_connections.ipynb)
#
# **Prerequisites:** PyTorch (modules, autograd), LayerNorm, and the chain rule for
# Jacobians. No earlier chapter.
#
# A deep network is a stack of layers, and how the layers are *connected* matters as much as
# what each one computes. This chapter starts from the residual connection
# {cite:p}`he2016resnet`, the default way to connect layers for ten years, and shows the two
# ways of placing its normalisation. Each placement has a known weakness: Post-Norm is said to
# starve the lower layers of gradient {cite:p}`xiong2020layernorm`, Pre-Norm makes deep layers
# see almost the same input, so that they add little (the "representation collapse" of the
# hyper-connections paper, {cite:p}`zhu2024hyperconnections`). The HC paper calls this
# trade-off a *seesaw*. We measure both sides on a 32-layer toy network that trains on a CPU,
# and we look closely at when Post-Norm's gradient really vanishes, because on this toy
# network it does not always do so.
#
# The default run takes about a minute on two CPU cores. With the environment variable
# `HCLIB_BOOK_SIZE=full` set before Jupyter starts, the toy networks train ten times longer,
# on larger batches and a larger training set; the prose describes the default run only.

# %% tags=["remove-input"]
# ruff: noqa: E402
import subprocess
import sys

if "google.colab" in sys.modules:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "hclib[notebooks] @ git+https://github.com/hclib-book/hclib",
        ],
        check=True,
    )

# %%
import matplotlib.pyplot as plt
import torch
from torch import nn
from torch.nn import functional as F

import hclib
from hclib.book import scaled
from hclib.models import DeepMLP
from hclib.plotting import color, show_figure, use_book_style
from hclib.toy import make_toy_data, seesaw_measures, train_toy

use_book_style()
torch.set_num_threads(1)  # the toy tensors are tiny: one thread is fastest on a shared CPU

DIM = 64  # model width d
DEPTH = 32  # number of residual blocks L
STEPS = scaled(small=200, full=2000)  # AdamW steps for each trained network
BATCH = scaled(small=128, full=256)  # training batch size
print(f"d={DIM}, L={DEPTH}, steps={STEPS}, batch={BATCH}")

# %% [markdown]
# ## Why add the input back
#
# Stack $L$ layers $h_{k+1} = T_k(h_k)$. By the chain rule the gradient that reaches the
# first layer is a product of $L$ Jacobians,
#
# $$
# \frac{\partial h_L}{\partial h_0} = J_{L-1} J_{L-2} \cdots J_0,
# \qquad J_k = \frac{\partial T_k}{\partial h_k},
# $$
#
# and a product of many random matrices shrinks or grows geometrically with $L$. A residual
# connection computes $h_{k+1} = h_k + T_k(h_k)$ instead. Each factor becomes $I + J_k$, and
# expanding the product gives the identity plus terms that skip any subset of layers: the
# gradient always has a direct route to every layer, whatever the branches do.
#
# To see the difference, take 32 blocks of `Linear -> GELU` (PyTorch's default
# initialisation, no normalisation yet) and measure how large the loss gradient is with respect
# to the input of each block, once stacked plainly and once with residual connections. The
# helper below records every block's input and keeps its gradient.


# %%
def state_grad_norms(blocks, forward, x, y):
    """Mean over tokens of ||dLoss/dh_k|| for the input h_k of every block, shape (L,)."""
    inputs = []

    def keep(module, args):
        args[0].retain_grad()
        inputs.append(args[0])

    handles = [block.register_forward_pre_hook(keep) for block in blocks]
    try:
        F.cross_entropy(forward(x), y).backward()
    finally:
        for handle in handles:
            handle.remove()
    return torch.stack([h.grad.norm(dim=-1).mean() for h in inputs]).detach()


def block(dim):
    return nn.Sequential(nn.Linear(dim, dim), nn.GELU())


# %%
# a teacher network's 8-class labels on 16-d Gaussian inputs; more examples for longer runs
data = make_toy_data(n_train=scaled(small=8192, full=65536))
x_probe, y_probe = data.x_val[:256], data.y_val[:256]  # one fixed batch for all measurements

torch.manual_seed(0)
embed, head = nn.Linear(16, DIM), nn.Linear(DIM, 8)
blocks = nn.ModuleList(block(DIM) for _ in range(DEPTH))


def plain(x):
    h = embed(x)
    for b in blocks:
        h = b(h)
    return head(h)


def residual(x, states=None):
    h = embed(x)
    for b in blocks:
        if states is not None:
            states.append(h.detach())
        h = h + b(h)
    return head(h)


g_plain = state_grad_norms(blocks, plain, x_probe, y_probe)
g_res = state_grad_norms(blocks, residual, x_probe, y_probe)
res_states = []
residual(x_probe, res_states)
growth = res_states[-1].norm(dim=-1).mean() / res_states[0].norm(dim=-1).mean()

# %% tags=["nbval-check-output"]
print(f"plain stack:    ||g_0|| / ||g_31|| = {(g_plain[0] / g_plain[-1]).item():.0e}")
print(f"residual stack: ||g_0|| / ||g_31|| = {(g_res[0] / g_res[-1]).item():.0e}")
print(f"residual stack: ||h_31|| / ||h_0|| = {growth.item():.0e}")

# %% [markdown]
# The plain stack loses its gradient almost entirely on the way down: the first block
# receives a vanishing fraction of what the last block gets. The residual stack delivers a
# gradient to every block. But without any normalisation it overshoots the other way: each
# branch adds something proportional to the state, so the state and the gradient both grow
# by orders of magnitude over 32 blocks. Residual connections need a norm to keep the scale
# in check, and the question of this chapter is where to put it.

# %% [markdown]
# ## Pre-Norm and Post-Norm
#
# A Transformer block normalises its hidden state somewhere. The original Transformer put the
# norm *after* the sum (Post-Norm); most modern language models put it at the *input* of the
# branch (Pre-Norm):
#
# $$
# \text{Post-Norm:}\quad h_{k+1} = \operatorname{Norm}\big(h_k + T_k(h_k)\big),
# \qquad
# \text{Pre-Norm:}\quad h_{k+1} = h_k + T_k\big(\operatorname{Norm}(h_k)\big).
# $$
#
# In Pre-Norm the norm touches only what the branch reads, so the running sum $h_k$ is never
# rescaled; a Pre-Norm network needs one final norm before its output head. In Post-Norm every
# sum is normalised, so the state always has unit scale. Following the HC paper, `hclib`
# counts the Pre-Norm norm as part of the branch, $T := T \circ \operatorname{Norm}$, so that
# both placements wrap the same kind of callable. Written from scratch, with LayerNorm without
# affine parameters:


# %%
def pre_norm_step(h, T):
    return h + T(F.layer_norm(h, h.shape[-1:]))  # the norm is at the branch input


def post_norm_step(h, T):
    return F.layer_norm(h + T(h), h.shape[-1:])  # the norm is after the sum


# %% [markdown]
# `hclib.Residual` wraps a branch in either placement. For `norm="pre"` its branch must
# bring its own norm; for `norm="post"` the connection owns the norm after the sum. Both are
# checked against the from-scratch lines in float64.

# %%
torch.manual_seed(0)
lin = nn.Linear(DIM, DIM).double()
T = nn.Sequential(lin, nn.GELU())  # the branch body, without a norm
h = torch.randn(4, 10, DIM, dtype=torch.float64)  # (B, T, d)

pre = hclib.Residual(DIM, nn.Sequential(nn.LayerNorm(DIM, elementwise_affine=False), T))
post = hclib.Residual(DIM, T, norm="post").double()

# %% tags=["nbval-check-output"]
torch.testing.assert_close(pre(h), pre_norm_step(h, T), rtol=1e-12, atol=1e-12)
torch.testing.assert_close(post(h), post_norm_step(h, T), rtol=1e-12, atol=1e-12)
print("Residual(norm='pre') equals h + T(Norm(h)):", True)
print("Residual(norm='post') equals Norm(h + T(h)):", True)

# %% [markdown]
# Chapter 2 writes both placements as tiny matrices (the $n = 1$ hyper-connection); here we
# stay with the formulas.

# %% [markdown]
# ## The toy network
#
# `hclib.models.DeepMLP` is the network of this chapter and the next ones: an embedding
# `Linear(16, d)`, then $L$ blocks whose branch is `LayerNorm -> Linear -> GELU`, then a
# final norm and a linear head. With `norm="post"` the branch loses its norm, each block
# normalises after its sum and the final norm is dropped, as in the original Transformer. The
# task (`hclib.toy.make_toy_data`) is to imitate a fixed random teacher network that assigns
# 16-dimensional Gaussian inputs to 8 classes. Only the connection differs between the two
# networks below; both start from the same seed.


# %%
def make_model(norm):
    torch.manual_seed(0)
    return DeepMLP(data.in_features, data.classes, dim=DIM, depth=DEPTH, norm=norm)


print(make_model("pre").layers[0])
print(make_model("post").layers[0])

# %% [markdown]
# We keep an untrained copy of each network and train another with AdamW for `STEPS` steps
# (`hclib.toy.train_toy`, learning rate $10^{-3}$).

# %%
models0 = {norm: make_model(norm) for norm in ("pre", "post")}  # at initialisation
models, histories = {}, {}
for norm in ("pre", "post"):
    models[norm] = make_model(norm)
    histories[norm] = train_toy(
        models[norm], data, steps=STEPS, batch_size=BATCH, eval_every=max(STEPS // 8, 1)
    )

# %% tags=["nbval-check-output"]
for norm in ("pre", "post"):
    hist = histories[norm]
    print(
        f"{norm:>4}-norm: validation loss {hist['val_loss'][-1]:.2f}, "
        f"accuracy {hist['val_acc'][-1]:.2f} (chance 0.125)"
    )

# %% [markdown]
# Both placements learn the task; at this depth and learning rate neither diverges. The
# differences lie inside the networks.

# %% [markdown]
# ## Pre-Norm's side of the seesaw: representation collapse
#
# The HC paper's Figure 3 measures, for every layer, the cosine similarity between the input
# of that layer and the input of the layer before it, token by token: a median near 1 means
# that consecutive layers see almost the same vector, so stacking more of them adds little.
# `hclib.toy.seesaw_measures` returns the median and the 5th-95th percentiles of this
# similarity over the tokens of a batch, together with the gradient norm of each block's
# parameters.

# %%
measures0 = {norm: seesaw_measures(m, x_probe, y_probe) for norm, m in models0.items()}
measures = {norm: seesaw_measures(m, x_probe, y_probe) for norm, m in models.items()}
NAMES = {"pre": "Pre-Norm", "post": "Post-Norm"}

# %% tags=["remove-output"]
fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), sharey=True)
for ax, meas, title in ((axes[0], measures0, "at initialisation"), (axes[1], measures, "trained")):
    for norm in ("pre", "post"):
        m = meas[norm]
        k = torch.arange(1, DEPTH)  # pair (k-1, k)
        c = color(f"{norm}-norm")
        ax.plot(k, m["cos_median"], color=c, label=f"{NAMES[norm]} (median)")
        ax.fill_between(k, m["cos_p05"], m["cos_p95"], color=c, alpha=0.2, lw=0)
    ax.set_title(title)
    ax.set_xlabel("layer k")
axes[0].set_ylabel("cos(input of layer k-1, input of layer k)")
axes[0].legend(loc="lower right")
show_figure(fig, "fig-01-similarity")

# %% [markdown]
# ```{glue:figure} fig-01-similarity
# :name: fig-01-similarity
#
# Cosine similarity between the inputs of consecutive layers (line: median over 256 tokens;
# band: 5th to 95th percentile). In the Pre-Norm network (vermilion) the similarity climbs
# toward 1 with depth, both at initialisation and after training; in the Post-Norm network
# (black) it stays flat at a clearly lower level.
# ```

# %%
deep = slice(DEPTH // 2, None)  # the deeper half of the pairs

# %% tags=["nbval-check-output"]
for label, meas in (("init", measures0), ("trained", measures)):
    pre_c = meas["pre"]["cos_median"][deep].mean().item()
    post_c = meas["post"]["cos_median"][deep].mean().item()
    print(
        f"{label:>7}: mean median cosine, deeper half: Pre-Norm {pre_c:.2f}, Post-Norm {post_c:.2f}"
    )

# %% [markdown]
# Why does Pre-Norm collapse? Its state is a running sum, $h_k = h_0 + \sum_{j<k} T_j$, and
# each branch sees only a normalised copy, so every $T_j$ has roughly the same size. The state
# therefore keeps growing (like $\sqrt{k}$ if the terms were independent) while each new term
# stays of order one. If the new term
# $T_k$ is roughly orthogonal to $h_k$,
#
# $$
# \cos(h_k, h_{k+1}) \approx \frac{\lVert h_k \rVert}{\sqrt{\lVert h_k \rVert^2 +
# \lVert T_k \rVert^2}} \longrightarrow 1,
# $$
#
# the later a layer sits, the smaller its relative contribution. Measured on the trained
# Pre-Norm network:

# %%
with hclib.analysis.capture_branch_inputs(models["pre"].layers) as ins:
    with torch.no_grad():
        models["pre"](x_probe)
state_norm = torch.stack([h.norm(dim=-1).mean() for h in ins])  # ||h_k||, mean over tokens

# %% tags=["nbval-check-output"]
print(f"||h_1|| / ||h_0||  = {(state_norm[1] / state_norm[0]).item():.1f}")
print(f"||h_31|| / ||h_0|| = {(state_norm[-1] / state_norm[0]).item():.1f}")
print("state norm grows with depth:", bool(state_norm[-1] > 2 * state_norm[DEPTH // 4]))

# %% [markdown]
# The Post-Norm network has no such drift: every state is renormalised to unit scale, so
# layer $k$'s branch output weighs as much at layer 30 as at layer 3.

# %% [markdown]
# ## Post-Norm's side: the factor $1/\sigma$
#
# Now the gradient. Write $z_k = h_k + T_k(h_k)$ and $h_{k+1} = \operatorname{LN}(z_k)$.
# Without affine parameters, LayerNorm subtracts the mean and divides by
# $\sigma_k = \operatorname{std}(z_k)$ over the features, and its Jacobian is
# $\frac{1}{\sigma_k} P_k$, where $P_k$ projects out two directions (the constant vector and
# the normalised output). One Post-Norm block therefore passes the gradient
# $g_{k+1} = \partial \mathcal{L} / \partial h_{k+1}$ down as
#
# $$
# g_k = (I + J_k)^\top \, \frac{1}{\sigma_k} P_k \, g_{k+1}.
# $$
#
# The skip path, the identity inside $I + J_k$, is divided by $\sigma_k$ in every block, and
# $\sigma_k > 1$ as soon as the branch adds variance to the unit-scale $h_k$ (HC Eq. 16
# writes exactly this $\sigma$ into the Post-Norm connection matrix, chapter 2). Along the
# skip path alone, the gradient reaching block 0 is multiplied by $\prod_k 1/\sigma_k$: the
# mechanism behind Post-Norm's vanishing gradient that {cite:t}`xiong2020layernorm` analyse.
# Here are the $\sigma_k$ of our network.


# %%
def post_norm_sigmas(model, x):
    """sigma_k = std over features of z_k = h_k + T_k(h_k), mean over tokens, shape (L,)."""
    sig = []
    with hclib.analysis.capture_branch_inputs(model.layers) as ins, torch.no_grad():
        model(x)
        for layer, h in zip(model.layers, ins, strict=True):
            z = h + layer.branch(h)
            sig.append(z.std(dim=-1, unbiased=False).mean())
    return torch.stack(sig)


sigma0 = post_norm_sigmas(models0["post"], x_probe)
sigma = post_norm_sigmas(models["post"], x_probe)

# %% tags=["nbval-check-output"]
inner0, inner = sigma0[1:-1], sigma[1:-1]  # blocks 1..30; block 0 reads the raw embedding
print(
    f"   init: sigma_k (blocks 1-30) from {inner0.min().item():.2f} to "
    f"{inner0.max().item():.2f}; prod of 1/sigma_k = {(1 / inner0).prod().item():.1e}"
)
print("   init: all sigma_k above 1:", bool((inner0 > 1).all()))
print("trained: all sigma_k above 1:", bool((inner > 1).all()))
print("trained: prod of 1/sigma_k below its value at init:", bool(inner.prod() > inner0.prod()))

# %% [markdown]
# Every $\sigma_k$ of blocks 1 to 30 is above 1 (block 0 reads the embedding, which has not
# been normalised), at initialisation and after training. Taken alone, the skip path would
# shrink the gradient of the lowest blocks by the product printed above, and more after
# training. But the skip path is not alone.
#
# ## Does the gradient vanish here? Not at this scale
#
# We measure the gradient with respect to every block's input $h_k$ in both networks, at
# initialisation and after training, and the gradient norm of each block's parameters (what
# `seesaw_measures` returns). To compare shapes, every curve is divided by its value at the
# last block.


# %%
def model_state_grads(model):
    model.zero_grad(set_to_none=True)
    g = state_grad_norms(model.layers, model, x_probe, y_probe)
    model.zero_grad(set_to_none=True)
    return g


grads0 = {norm: model_state_grads(m) for norm, m in models0.items()}
grads = {norm: model_state_grads(m) for norm, m in models.items()}

# %% tags=["remove-output"]
fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), sharey=True)
layers = torch.arange(DEPTH)
for ax, g_state, meas, title in (
    (axes[0], grads0, measures0, "at initialisation"),
    (axes[1], grads, measures, "trained"),
):
    for norm in ("pre", "post"):
        c = color(f"{norm}-norm")
        ax.semilogy(
            layers, g_state[norm] / g_state[norm][-1], color=c, label=f"{NAMES[norm]}: state"
        )
        p = meas[norm]["grad_norm"]
        ax.semilogy(layers, p / p[-1], color=c, ls="--", label=f"{NAMES[norm]}: parameters")
    ax.set_title(title)
    ax.set_xlabel("layer k (0 = next to the input)")
axes[0].set_ylabel("gradient norm / its value at layer 31")
axes[1].legend(fontsize=8)
show_figure(fig, "fig-01-gradients")

# %% [markdown]
# ```{glue:figure} fig-01-gradients
# :name: fig-01-gradients
#
# Gradient norms per layer, relative to the last layer (log scale): solid, the gradient with
# respect to the layer's input $h_k$; dashed, the gradient of the layer's parameters. A
# vanishing gradient would show as curves that fall toward the left (the input side). None of
# them does: in both networks the lowest layers receive at least as much gradient as the top
# ones.
# ```

# %% tags=["nbval-check-output"]
for label, g_state in (("init", grads0), ("trained", grads)):
    for norm in ("pre", "post"):
        r = (g_state[norm][0] / g_state[norm][-1]).item()
        print(f"{label:>7} {NAMES[norm]:>9}: ||g_0|| / ||g_31|| = {r:.1f}, vanishes: {r < 0.5}")

# %% [markdown]
# So in this toy network Post-Norm's gradient does **not** vanish toward the input, neither at
# initialisation nor after training, although the skip path alone loses the factor computed
# above. The other term of $(I + J_k)^\top$ pays it back. If the branch Jacobian stretches a
# random direction by a factor $j_k$ on average, one block changes the gradient norm by about
#
# $$
# \rho_k \approx \frac{\sqrt{1 + j_k^2}}{\sigma_k},
# \qquad
# \sigma_k^2 \approx 1 + \operatorname{var}(T_k),
# $$
#
# so the gradient shrinks only where the branch adds more variance than its Jacobian passes
# on, $\operatorname{var}(T_k) > j_k^2$. The helper below estimates $j_k^2$ for each block with
# one vector-Jacobian product against random directions and multiplies the $\rho_k$ of
# blocks 0 to 30.


# %%
def predicted_ratio(model, x):
    """prod_k sqrt(1 + j_k^2) / sigma_k over blocks 0..L-2: predicted ||g_0|| / ||g_{L-1}||."""
    torch.manual_seed(1)
    rho = []
    with hclib.analysis.capture_branch_inputs(model.layers) as ins, torch.no_grad():
        model(x)
    for layer, h in zip(model.layers, ins, strict=True):
        h = h.clone().requires_grad_(True)
        t = layer.branch(h)
        sig = (h + t).std(dim=-1, unbiased=False).mean()
        u = torch.randn_like(t)
        (jt_u,) = torch.autograd.grad(t, h, u)  # J_k^T u
        j2 = (jt_u.pow(2).sum(-1) / u.pow(2).sum(-1)).mean()
        rho.append(((1 + j2).sqrt() / sig).detach())
    return torch.stack(rho)[:-1].prod()


# %% tags=["nbval-check-output"]
measured0 = (grads0["post"][0] / grads0["post"][-1]).item()
predicted0 = predicted_ratio(models0["post"], x_probe).item()
print(f"   init Post-Norm: measured {measured0:.1f}, predicted {predicted0:.1f}")
measured = (grads["post"][0] / grads["post"][-1]).item()
predicted = predicted_ratio(models["post"], x_probe).item()
print("trained Post-Norm: prediction within 2x:", 0.5 < measured / predicted < 2)
print("trained Post-Norm: measured more than 5x the prediction:", measured > 5 * predicted)

# %% [markdown]
# At initialisation the one-line estimate lands on the measurement. After training it fails:
# it predicts far less gradient than the network delivers, because it assumes the gradient
# points in a random direction, while a trained network's gradient lines up with the
# directions its branches amplify.
#
# ```{dropdown} In depth: why the estimate is at least 1 at initialisation, and why only there
# A heuristic explains why $\operatorname{var}(T_k) \le j_k^2$ at initialisation. For one
# Gaussian pre-activation $u \sim \mathcal{N}(0, v)$ and a smooth activation $f$, the
# Gaussian Poincaré inequality says $\operatorname{var} f(u) \le v\, \mathbb{E}[f'(u)^2]$,
# and $v\, \mathbb{E}[f'(u)^2]$ is the squared gain that $f$ passes on to a perturbation of
# the same scale as $u$. A branch $\mathrm{GELU}(W \operatorname{LN}(h) + b)$ whose
# pre-activations look like such draws therefore adds no more variance than its Jacobian
# carries, and $\rho_k \gtrsim 1$.
#
# It is a heuristic, not a property of our network, for three reasons:
#
# - $\sigma_k$ is a variance over the $d$ features of one token, not over random draws. The
#   inequality carries over only while the features behave like independent draws of one
#   distribution, which random weights make roughly true at initialisation and training
#   does not keep true.
# - The bias $b$ varies from feature to feature without depending on the input, so it adds
#   to $\sigma_k$ and nothing to $J_k$. PyTorch initialises it small, which is why the
#   heuristic holds at initialisation; the next section makes such a term large on purpose.
# - After training the estimate $\prod_k \rho_k$ is off by more than a factor of five
#   (the cell above), so the measured profile is the only statement we have there.
# ```
#
# ## When Post-Norm's gradient does vanish
#
# The estimate says what it takes: variance in the branch output that does not flow back
# through $J_k$. In a Transformer decoder, cross-attention writes information that comes
# from the encoder, not from $h_k$; attention in general mixes in other tokens; biases and
# other input-independent terms can grow during training. {cite:t}`xiong2020layernorm` show at
# initialisation that Post-LN's gradient norm grows with the layer index in a Transformer, and
# {cite:t}`liu2020admin` report gradient vanishing in the decoder of a Post-LN Transformer,
# but not in its encoder.
#
# The simplest stand-in for such a term in our toy network is a fixed random vector $c_k$
# added to every branch output, $T_k(h) + c_k$ with $c_k \sim \mathcal{N}(0, s^2 I)$: a bias
# of scale $s$. It adds $s^2$ to $\sigma_k^2$ and nothing to $J_k$. We add it to both networks
# at initialisation and sweep its scale $s$.


# %%
class Offset(nn.Module):
    """Adds a fixed random vector c ~ N(0, s^2 I): variance the Jacobian does not see."""

    def __init__(self, dim, s):
        super().__init__()
        self.register_buffer("c", s * torch.randn(dim))

    def forward(self, h):
        return h + self.c


def offset_model(norm, s):
    model = make_model(norm)
    torch.manual_seed(1)
    for layer in model.layers:
        layer.branch.append(Offset(DIM, s))
    return model


SCALES = (0.0, 0.25, 0.5, 1.0)
offset_models = {(norm, s): offset_model(norm, s) for norm in ("pre", "post") for s in SCALES}
offset_grads = {key: model_state_grads(m) for key, m in offset_models.items()}

# %% tags=["remove-output"]
fig, ax = plt.subplots()
for s, style in zip(SCALES, ("-", "--", "-.", ":"), strict=True):
    for norm in ("pre", "post"):
        g = offset_grads[(norm, s)]
        label = f"{NAMES[norm]}, s = {s}"
        ax.semilogy(layers, g / g[-1], color=color(f"{norm}-norm"), ls=style, label=label)
ax.set_xlabel("layer k (0 = next to the input)")
ax.set_ylabel("||dLoss/dh_k|| / its value at layer 31")
ax.legend(fontsize=7, ncol=2)
show_figure(fig, "fig-01-offsets")

# %% [markdown]
# ```{glue:figure} fig-01-offsets
# :name: fig-01-offsets
#
# Gradient with respect to each layer's input, at initialisation, when every branch adds a
# fixed random offset of scale $s$. Post-Norm (black) falls toward the input side faster and
# faster as $s$ grows: the vanishing gradient of the literature. Pre-Norm (vermilion) barely
# changes, because its skip path is a true identity.
# ```

# %% tags=["nbval-check-output"]
for s in SCALES:
    pre_r = (offset_grads[("pre", s)][0] / offset_grads[("pre", s)][-1]).item()
    post_r = (offset_grads[("post", s)][0] / offset_grads[("post", s)][-1]).item()
    print(f"s={s:<4}: ||g_0|| / ||g_31||  Pre-Norm {pre_r:.1e}   Post-Norm {post_r:.1e}")

# %% tags=["nbval-check-output"]
post_vanish = offset_grads[("post", 1.0)]
measured = (post_vanish[0] / post_vanish[-1]).item()
predicted = predicted_ratio(offset_models[("post", 1.0)], x_probe).item()
print(f"s=1 Post-Norm: measured {measured:.0e}, predicted {predicted:.0e}")
print("prediction within 2x:", 0.5 < measured / predicted < 2)

# %% [markdown]
# The same estimate $\prod_k \sqrt{1 + j_k^2} / \sigma_k$ predicts the collapse of the
# gradient to within a small factor. Post-Norm's gradient vanishes exactly when the branches
# make the state louder than they make it sensitive; Pre-Norm is immune because nothing
# divides its skip path. The price of that immunity is {numref}`fig-01-similarity`: the same
# undivided sum that carries the gradient makes every new layer a smaller and smaller
# correction.

# %% [markdown]
# ## The seesaw in one picture
#
# Both sides of the seesaw fit in one plot: for every network, the similarity of consecutive
# layers in its deeper half (high means collapse) against how much gradient its first layer
# gets relative to its last (far below 1 means a vanishing gradient), both from
# `seesaw_measures`. The networks are the two trained ones, the offset variants at
# initialisation, and one network from the next chapter: a hyper-connected network with
# $n = 4$ streams (`DeepMLP(connection="hc")`, chapter 2), trained for the same number of
# steps, with its connection weights learning ten times faster than the rest (chapter 2
# explains why they need it).

# %%
torch.manual_seed(0)
hc_model = DeepMLP(data.in_features, data.classes, dim=DIM, depth=DEPTH, connection="hc", n=4)
train_toy(hc_model, data, steps=STEPS, batch_size=BATCH, eval_every=STEPS, connection_lr=1e-2)


def seesaw_point(model):
    """(first-to-last parameter-gradient ratio, mean median cosine over the deeper half)."""
    m = seesaw_measures(model, x_probe, y_probe)
    return (m["grad_norm"][0] / m["grad_norm"][-1]).item(), m["cos_median"][deep].mean().item()


points = {("trained", norm): seesaw_point(m) for norm, m in models.items()}
points["trained", "hc"] = seesaw_point(hc_model)
points.update({("offset", key): seesaw_point(m) for key, m in offset_models.items()})

# %% tags=["remove-output"]
fig, ax = plt.subplots(figsize=(6.4, 4.0))
for norm in ("pre", "post"):
    xs, ys = zip(*(points["offset", (norm, s)] for s in SCALES), strict=True)
    ax.plot(xs, ys, "s--", color=color(f"{norm}-norm"), mfc="white", lw=0.8, ms=6,
            label=f"{NAMES[norm]} + offset s, at init")  # fmt: skip
    shown = SCALES if norm == "post" else (SCALES[0], SCALES[-1])  # Pre-Norm's points crowd
    for s, x_, y_ in zip(SCALES, xs, ys, strict=True):
        if s in shown:
            ax.annotate(f"s={s}", (x_, y_), textcoords="offset points", xytext=(4, -10), fontsize=7)
for key, name in (("pre", "Pre-Norm"), ("post", "Post-Norm"), ("hc", "HC n=4")):
    ax.plot(*points["trained", key], "o", ms=9, color=color(name), label=f"{name}, trained")
ax.set_xscale("log")
ax.axvline(1.0, color=color("reference"), lw=0.8)
grey = dict(color=color("reference"), fontsize=8, transform=ax.transAxes)
ax.text(0.02, 0.97, "↑ collapse: consecutive layers alike", va="top", **grey)
ax.text(0.14, 0.03, "← vanishing gradient", va="bottom", **grey)
ax.set_xlabel("gradient norm of layer 0 / of layer 31 (parameters)")
ax.set_ylabel("mean median cos, deeper half")
ax.legend(fontsize=7, loc="lower right")
show_figure(fig, "fig-01-seesaw")

# %% [markdown]
# ```{glue:figure} fig-01-seesaw
# :name: fig-01-seesaw
#
# The seesaw, one point per network. Up means representation collapse (consecutive layers see
# nearly the same input); left of the grey line, the first layer gets less gradient than the
# last, and far left the gradient vanishes. Post-Norm with an offset of growing scale $s$
# (black squares) slides down and to the left: every gain in layer diversity is paid in
# gradient, which is the seesaw. Pre-Norm (vermilion) stays at the top whatever the offset.
# The trained hyper-connected network of chapter 2 (blue) sits below trained Pre-Norm without
# losing gradient.
# ```

# %% tags=["nbval-check-output"]
pre_y, post_y = points["trained", "pre"][1], points["trained", "post"][1]
hc_x, hc_y = points["trained", "hc"]
print("trained Pre-Norm above trained Post-Norm in similarity:", pre_y > post_y)
print(
    "every Pre-Norm offset point above every Post-Norm one:",
    min(points["offset", ("pre", s)][1] for s in SCALES)
    > max(points["offset", ("post", s)][1] for s in SCALES),
)
print(
    "Post-Norm's similarity falls as s grows:",
    all(
        points["offset", ("post", a)][1] > points["offset", ("post", b)][1]
        for a, b in zip(SCALES, SCALES[1:], strict=False)
    ),
)
print(
    "Post-Norm's gradient ratio falls as s grows:",
    all(
        points["offset", ("post", a)][0] > points["offset", ("post", b)][0]
        for a, b in zip(SCALES, SCALES[1:], strict=False)
    ),
)
print("trained HC below trained Pre-Norm in similarity:", hc_y < pre_y)
print("trained HC's first layer gets at least the last layer's gradient:", hc_x >= 1)

# %% [markdown]
# Post-Norm keeps consecutive layers distinct but divides its skip path by $\sigma_k$ in
# every block, which costs gradient as soon as the branches add variance of their own;
# Pre-Norm keeps a perfect skip path but lets the state grow, so deep layers see nearly the
# same input. No offset moves a Pre-Norm network down; every offset that moves Post-Norm down
# also moves it to the left. Hyper-connections try to get off the seesaw by keeping several residual
# streams and *learning* how strongly each layer is connected to the others; the blue point is
# a first, small step below Pre-Norm that keeps its gradient, which chapter 2 takes apart.


# %% tags=["nbval-check-output", "remove-cell"]
# checks the solutions of exercises ex-01-sigma, ex-01-tip and ex-01-ffn (hidden in the book)
class Noise(nn.Module):
    """A branch of variance 0.25 and zero Jacobian (ex-01-sigma)."""

    def forward(self, h):
        return 0.5 * torch.randn_like(h)


noisy = make_model("post")
for layer in noisy.layers:
    layer.branch = Noise()
torch.manual_seed(0)
g = model_state_grads(noisy)
noise_ratio = (g[0] / g[-1]).item()
print("noise branches: ratio within 2x of 1.25^-15.5:", 0.5 < noise_ratio / 1.25**-15.5 < 2)
tip = {}
for s in (0.0, 0.1, 0.2, 0.3):
    g = model_state_grads(offset_model("post", s))
    tip[s] = ((g[0] / g[-1]).item(), predicted_ratio(offset_model("post", s), x_probe).item())
print("first scale below 1:", min(s for s, (r, _) in tip.items() if r < 1))
print("prediction within 2x at every scale:", all(0.5 < r / p < 2 for r, p in tip.values()))


def ffn_ratio(bias):
    m = make_model("post")
    for layer in m.layers:
        layer.branch.append(nn.Linear(DIM, DIM, bias=bias))
    g = model_state_grads(m)
    return (g[0] / g[-1]).item()


with_bias, without_bias = ffn_ratio(True), ffn_ratio(False)
print(f"two-layer FFN branch: ratio {with_bias:.2f} with bias, {without_bias:.2f} without")
print("both above 1:", min(with_bias, without_bias) > 1)
print("lower with the bias:", with_bias < without_bias)

# %% [markdown]
# ## Summary
#
# - A residual connection $h_{k+1} = h_k + T_k(h_k)$ turns the product of Jacobians into a
#   product of $I + J_k$, so the gradient always has a direct route to every layer; a plain
#   32-layer stack loses orders of magnitude of gradient, the residual one does not.
# - Post-Norm, $\operatorname{Norm}(h_k + T_k(h_k))$, divides the skip path by
#   $\sigma_k = \operatorname{std}(h_k + T_k)$ in every block. Pre-Norm,
#   $h_k + T_k(\operatorname{Norm}(h_k))$, leaves it alone; `hclib.Residual` implements both.
# - Pre-Norm's state grows with depth, so consecutive layers' inputs become nearly parallel
#   (representation collapse); in our toy network the median cosine in the deeper half is
#   close to 1, well above Post-Norm's.
# - One Post-Norm block scales a random-direction gradient by about
#   $\sqrt{1 + j_k^2} / \sigma_k$. At initialisation this estimate matches the measurement
#   and is above 1: the branches pass on at least as much gradient as they add variance.
#   After training the estimate no longer applies, but the measured gradient still does
#   **not** vanish in the toy network: it grows toward the input.
# - Post-Norm's gradient vanishes when the branch adds variance that its Jacobian does not
#   carry (here a fixed random offset, a large bias; in a Transformer, for example,
#   cross-attention). Then $\prod_k 1/\sigma_k$ wins and the lower layers starve.
# - {numref}`fig-01-seesaw` puts both sides in one plot: no offset moves Pre-Norm off its
#   high similarity, every offset moves Post-Norm toward a vanishing gradient.

# %% [markdown]
# ## Exercises
#
# ```{exercise} The 1/sigma factor by hand
# :label: ex-01-sigma
# Let $h$ have zero mean and unit variance over its $d$ features, and let the branch output
# $T(h)$ have zero mean, variance $v$ and zero covariance with $h$. What is $\sigma$, and by
# how much does the skip path alone shrink the gradient over 32 Post-Norm blocks for
# $v = 0.25$? Check your answer with `post_norm_sigmas` on a network whose branches you
# replace by scaled independent noise.
# ```
#
# ```{solution} ex-01-sigma
# :class: dropdown
# $\sigma^2 = \operatorname{var}(h + T) = 1 + v$, so $\sigma = \sqrt{1.25} \approx 1.118$.
# Over 32 blocks the skip path is multiplied by $1.25^{-16} \approx 0.028$. A branch such as
# `0.5 * torch.randn_like(h)` has exactly this variance and a zero Jacobian, so the skip path
# is all the gradient has: it is the pure-offset limit of {numref}`fig-01-offsets`. Measured
# between $h_0$ and $h_{31}$ (31 blocks, $1.25^{-15.5}$), the ratio lands within a factor
# of two of the prediction; block 0 misses it most, since it reads the embedding, which is
# not normalised. (A hidden cell of this chapter runs this check.)
# ```
#
# ```{exercise} A two-layer feed-forward branch
# :label: ex-01-ffn
# Transformers use a feed-forward branch with two linear layers,
# $T(h) = W_2\, \mathrm{GELU}(W_1 h)$. Append `nn.Linear(DIM, DIM)` to every branch of
# `make_model("post")` and measure $\lVert g_0 \rVert / \lVert g_{31} \rVert$ at
# initialisation, once with the second layer's bias and once with `bias=False`. Does the
# gradient vanish? What does the bias change, and why?
# ```
#
# ````{solution} ex-01-ffn
# :class: dropdown
# ```python
# def ffn_ratio(bias):
#     m = make_model("post")
#     for layer in m.layers:
#         layer.branch.append(nn.Linear(DIM, DIM, bias=bias))
#     g = model_state_grads(m)
#     return (g[0] / g[-1]).item()
# ```
# The gradient does not vanish at initialisation: both ratios stay above 1. Without its bias,
# the second layer scales the branch output and the branch Jacobian by the same matrix, so
# it changes $\operatorname{var}(T)$ and $j^2$ alike. Its bias is input-independent
# variance, which enters $\sigma$ and not $J$: with the bias the ratio is lower, a small
# version of the offsets of {numref}`fig-01-offsets`. (A hidden cell of this chapter runs
# this code and checks both statements.)
# ````
#
# ```{exercise} Collapse without training
# :label: ex-01-collapse
# Assume that at initialisation each Pre-Norm branch output has squared norm $c$ and is
# orthogonal to the state. Show that $\lVert h_k \rVert^2 = \lVert h_0 \rVert^2 + k c$ and
# derive $\cos(h_k, h_{k+1})$. How deep must a layer be for the cosine to exceed 0.99 when
# $\lVert h_0 \rVert^2 = c$?
# ```
#
# ```{solution} ex-01-collapse
# :class: dropdown
# By Pythagoras each step adds $c$ to the squared norm, so
# $\lVert h_k \rVert^2 = \lVert h_0 \rVert^2 + kc$ and
# $\cos(h_k, h_{k+1}) = \sqrt{(\lVert h_0 \rVert^2 + kc) / (\lVert h_0 \rVert^2 + (k+1)c)}$.
# With $\lVert h_0 \rVert^2 = c$ this is $\sqrt{(k+1)/(k+2)}$, which exceeds 0.99 once
# $(k+1)/(k+2) > 0.9801$, that is for $k \ge 49$. Real branches are not orthogonal to the
# state (they partly re-write it), which is why {numref}`fig-01-similarity` reaches high
# similarity sooner.
# ```
#
# ```{exercise} Where does the seesaw tip?
# :label: ex-01-tip
# Rerun the offset sweep of {numref}`fig-01-offsets` with `SCALES = (0.0, 0.1, 0.2, 0.3)`
# and find the smallest $s$ at which Post-Norm's $\lVert g_0 \rVert / \lVert g_{31} \rVert$
# falls below 1. Compare it with the prediction $\prod_k \sqrt{1 + j_k^2}/\sigma_k$.
# ```
#
# ```{solution} ex-01-tip
# :class: dropdown
# The ratio falls steadily as $s$ grows. The table after {numref}`fig-01-offsets` already
# brackets the crossing: above 1 at $s = 0$, below 1 at $s = 0.25$. In the finer sweep the
# ratio is still above 1 at $s = 0.2$, so $s = 0.3$ is the first of the four scales below 1.
# Since the offset enters only through $\sigma_k$,
# `predicted_ratio(offset_model("post", s), x_probe)` tracks the measurement within a factor
# of two at every scale of the sweep. (A hidden cell of this chapter checks both.)
# ```
