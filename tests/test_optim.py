"""The weight-decay rule of HC Section 4 and FC Section 4.3, applied to whole models."""

import pytest
import torch
from torch import nn

import hclib


class Block(nn.Module):
    def __init__(self, d, connection):
        super().__init__()
        branch = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, d))
        self.conn = connection(branch)


def names(groups):
    decayed, plain = groups
    return set(decayed["names"]), set(plain["names"])


def test_param_groups_decay_dynamic_projections_but_not_static_weights_or_norms():
    d = 8
    model = nn.ModuleDict(
        {
            "embed": nn.Embedding(10, d),
            "hc": Block(d, lambda b: hclib.HyperConnection(d, b, n=2, norm_affine=True)),
            "fc": Block(d, lambda b: hclib.FracConnection(d, b, m=2)),
            "mhc": Block(d, lambda b: hclib.ManifoldHyperConnection(d, b, n=2)),
            "res": Block(d, lambda b: hclib.Residual(d, b, norm="post")),
        }
    )
    decayed, plain = names(hclib.param_groups(model, 0.1))
    assert decayed == {
        "embed.weight",
        "hc.conn.dynamic_alpha",
        "hc.conn.dynamic_beta",
        "hc.conn.branch.1.weight",
        "fc.conn.dynamic_alpha",
        "fc.conn.dynamic_beta",
        "fc.conn.branch.1.weight",
        "mhc.conn.phi",
        "mhc.conn.branch.1.weight",
        "res.conn.branch.1.weight",
    }
    for prefix in ("hc", "fc"):
        for name in ("static_alpha", "static_beta", "alpha_scale", "beta_scale"):
            assert f"{prefix}.conn.{name}" in plain
    assert {"hc.conn.norm.weight", "hc.conn.norm.bias", "res.conn.post_norm.weight"} <= plain
    assert {"mhc.conn.bias", "mhc.conn.alpha_pre", "mhc.conn.alpha_res"} <= plain
    assert {f"{k}.conn.branch.0.weight" for k in ("hc", "fc", "mhc", "res")} <= plain
    assert decayed.isdisjoint(plain)
    assert len(decayed) + len(plain) == len(list(model.parameters()))


def test_param_groups_list_tied_parameters_once_and_skip_frozen_ones():
    d = 4
    embed = nn.Embedding(6, d)
    head = nn.Linear(d, 6, bias=False)
    head.weight = embed.weight  # tied
    frozen = nn.Linear(d, d)
    frozen.requires_grad_(False)
    model = nn.ModuleList([embed, head, frozen])
    decayed, plain = hclib.param_groups(model, 0.05)
    assert len(decayed["params"]) == 1 and decayed["weight_decay"] == 0.05
    assert plain["params"] == [] and plain["weight_decay"] == 0.0


def test_param_groups_feed_adamw():
    model = hclib.HyperConnection(6, nn.Linear(6, 6), n=2)
    opt = torch.optim.AdamW(hclib.param_groups(model, 0.1), lr=1e-3)
    model(torch.randn(3, 2, 6)).sum().backward()
    opt.step()
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]


@pytest.mark.parametrize(
    ("args", "error"),
    [
        ((nn.Linear(2, 2), -0.1), ValueError),
        (("model", 0.1), TypeError),
        ((nn.Linear(2, 2), "0.1"), TypeError),
    ],
)
def test_bad_param_groups_inputs_raise_clear_errors(args, error):
    with pytest.raises(error):
        hclib.param_groups(*args)
