"""The toy task, its training loop and the seesaw measures."""

import pytest
import torch
from torch import nn

import hclib
from hclib.book import book_size, scaled
from hclib.models import DeepMLP
from hclib.toy import make_toy_data, seesaw_measures, train_toy


def test_toy_data_is_deterministic_in_its_seed_and_uses_every_class():
    a, b = make_toy_data(512, 128, seed=3), make_toy_data(512, 128, seed=3)
    torch.testing.assert_close(a.x_train, b.x_train, rtol=0, atol=0)
    assert torch.equal(a.y_val, b.y_val)
    assert a.x_train.shape == (512, 16) and a.y_train.shape == (512,)
    assert a.classes == 8 and len(torch.unique(a.y_train)) == 8
    assert not torch.equal(make_toy_data(512, 128, seed=4).y_train, a.y_train)


def test_training_on_the_toy_task_lowers_the_loss():
    data = make_toy_data(1024, 256)
    torch.manual_seed(0)
    model = DeepMLP(data.in_features, data.classes, dim=16, depth=3, connection="hc", n=2)
    history = train_toy(model, data, steps=60, eval_every=30, progress=False)
    assert len(history["loss"]) == 60 and history["val_step"] == [30, 60]
    assert sum(history["loss"][-10:]) < sum(history["loss"][:10])


def test_connection_lr_trains_the_connection_weights_at_their_own_rate():
    data = make_toy_data(512, 128)
    torch.manual_seed(0)
    model = DeepMLP(data.in_features, data.classes, dim=16, depth=3, connection="hc", n=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train_toy(model, data, steps=5, lr=1e-3, connection_lr=1e-1, eval_every=5, progress=False)
    after = model.state_dict()
    # AdamW moves each entry by about lr per step: 5 steps of 1e-1 versus 5 steps of 1e-3
    static = (after["layers.0.static_alpha"] - before["layers.0.static_alpha"]).abs().max()
    branch = (after["layers.0.branch.1.weight"] - before["layers.0.branch.1.weight"]).abs().max()
    assert static > 0.1 and branch < 0.01
    with pytest.raises(ValueError, match="connection_lr must be > 0"):
        train_toy(model, data, steps=1, connection_lr=0.0, progress=False)


def test_seesaw_measures_have_one_value_per_layer_and_per_adjacent_pair():
    data = make_toy_data(256, 64)
    model = DeepMLP(data.in_features, data.classes, dim=16, depth=6)
    out = seesaw_measures(model, data.x_val, data.y_val)
    assert out["grad_norm"].shape == (6,) and torch.all(out["grad_norm"] > 0)
    for key in ("cos_p05", "cos_median", "cos_p95"):
        assert out[key].shape == (5,)
    assert torch.all(out["cos_p05"] <= out["cos_median"]) and torch.all(
        out["cos_median"] <= out["cos_p95"]
    )
    assert all(p.grad is None for p in model.parameters())


def test_capture_branch_inputs_records_what_each_branch_reads_and_restores_functions():
    def double(x):
        return 2 * x

    layers = [hclib.HyperConnection(4, double, n=2, layer_id=i) for i in range(3)]
    H = torch.randn(5, 2, 4)
    with hclib.analysis.capture_branch_inputs(layers) as inputs:
        out = H
        for layer in layers:
            out = layer(out)
    torch.testing.assert_close(inputs[0], H[:, 0])
    assert all(layer.branch is double for layer in layers)


def test_adjacent_cosine_similarity_is_one_for_parallel_inputs():
    x = torch.randn(3, 4, 8)
    cos = hclib.analysis.adjacent_cosine_similarity([x, 2 * x, -x])
    assert cos.shape == (2, 12)
    torch.testing.assert_close(cos[0], torch.ones(12))
    torch.testing.assert_close(cos[1], -torch.ones(12))
    with pytest.raises(ValueError, match="at least 2"):
        hclib.analysis.adjacent_cosine_similarity([x])


def test_branch_grad_norms_are_nan_for_branches_without_parameters():
    layers = [hclib.Residual(4, nn.Identity()), hclib.Residual(4, nn.Linear(4, 4))]
    sum(layer(torch.randn(2, 4)).sum() for layer in layers).backward()
    norms = hclib.analysis.branch_grad_norms(layers)
    assert torch.isnan(norms[0]) and norms[1] > 0


def test_book_size_knob_defaults_to_small_and_rejects_unknown_sizes(monkeypatch):
    monkeypatch.delenv("HCLIB_BOOK_SIZE", raising=False)
    assert book_size() == "small" and scaled(1, 2) == 1
    monkeypatch.setenv("HCLIB_BOOK_SIZE", "full")
    assert scaled(1, 2) == 2
    monkeypatch.setenv("HCLIB_BOOK_SIZE", "huge")
    with pytest.raises(ValueError, match="HCLIB_BOOK_SIZE must be one of"):
        book_size()


def test_every_connection_has_a_palette_colour():
    from hclib.plotting import PALETTE, color

    assert color("HC x4") == PALETTE["hc"] and color("pre-norm") == PALETTE["pre-norm"]
    assert color("mhc") == PALETTE["mhc"] and color("something") == PALETTE["other"]
