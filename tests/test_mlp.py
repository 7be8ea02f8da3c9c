"""The deep toy MLP takes any connection and, at init, HC/FC/mHC equal its residual twin."""

import pytest
import torch

import hclib
from hclib.models import DeepMLP

KINDS = [("residual", {}), ("hc", {"n": 2}), ("fc", {"m": 4}), ("mhc", {"n": 2})]


@pytest.mark.parametrize(("connection", "rates"), KINDS)
@pytest.mark.parametrize("batch", [(3,), (2, 5)])
def test_deep_mlp_maps_inputs_to_outputs_with_any_connection(connection, rates, batch):
    model = DeepMLP(7, 3, dim=16, depth=4, connection=connection, **rates)
    assert model(torch.randn(*batch, 7)).shape == (*batch, 3)


@pytest.mark.parametrize(("connection", "rates"), KINDS[1:])
def test_deep_mlp_at_init_gives_the_prenorm_models_logits(connection, rates):
    # HC Eq. 14 / FC Eq. 15 / our mHC init, end to end: same weights, same logits.
    torch.manual_seed(0)
    residual = DeepMLP(7, 3, dim=16, depth=5).double()
    other = DeepMLP(7, 3, dim=16, depth=5, connection=connection, **rates).double()
    for mine, theirs in zip(residual.layers, other.layers, strict=True):
        theirs.branch.load_state_dict(mine.branch.state_dict())
    for name in ("embed", "final_norm", "head"):
        getattr(other, name).load_state_dict(getattr(residual, name).state_dict())
    # the final LayerNorm removes HC's factor n exactly when its eps is 0
    residual.final_norm.eps = other.final_norm.eps = 0.0
    x = torch.randn(4, 7, dtype=torch.float64)
    torch.testing.assert_close(other(x), residual(x), atol=1e-12, rtol=1e-12)


def test_postnorm_mlp_normalises_after_each_sum_and_has_no_final_norm():
    model = DeepMLP(4, 2, dim=8, depth=3, norm="post")
    assert all(layer.placement == "post" for layer in model.layers)
    assert isinstance(model.final_norm, torch.nn.Identity)
    assert isinstance(model.layers[0].branch[0], torch.nn.Identity)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"connection": "dense"}, "connection must be one of"),
        ({"connection": "fc", "m": 3}, "d=16 is not divisible by m=3"),
        ({"connection": "hc", "n": 0}, "n must be >= 1"),
        ({"norm": "mid"}, "'pre' or 'post'"),
        ({"activation": "swish"}, "activation must be one of"),
        ({"depth": 0}, "depth must be >= 1"),
    ],
)
def test_bad_mlp_configs_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DeepMLP(4, 2, dim=16, **kwargs)


def test_build_connection_names_every_kind():
    for kind, cls in [
        ("residual", hclib.Residual),
        ("hc", hclib.HyperConnection),
        ("fc", hclib.FracConnection),
        ("mhc", hclib.ManifoldHyperConnection),
    ]:
        assert isinstance(hclib.models.build_connection(kind, 8, torch.nn.Identity()), cls)
