"""The public API: names other work relies on, with docstrings that give shapes."""

import inspect

import pytest

import hclib

PUBLIC = [
    "expand_streams",
    "reduce_streams",
    "split_fractions",
    "merge_fractions",
    "Residual",
    "HyperConnection",
    "FracConnection",
    "ManifoldHyperConnection",
    "sinkhorn_knopp",
    "param_groups",
    "connection_matrix",
    "amax_gain",
    "Mappings",
    "connect",
    "ConnectedStack",
]


@pytest.mark.parametrize("name", PUBLIC)
def test_public_name_is_importable_and_documented(name):
    obj = getattr(hclib, name)
    doc = inspect.getdoc(obj)
    assert doc and len(doc) > 40, f"hclib.{name} needs a docstring"


@pytest.mark.parametrize(
    "name",
    [
        "Residual",
        "HyperConnection",
        "FracConnection",
        "ManifoldHyperConnection",
        "sinkhorn_knopp",
        "connection_matrix",
        "amax_gain",
        "expand_streams",
        "split_fractions",
        "connect",
        "ConnectedStack",
    ],
)
def test_docstrings_state_shapes_and_cite_the_paper(name):
    obj = getattr(hclib, name)
    doc = inspect.getdoc(obj) + (inspect.getdoc(inspect.getmodule(obj)) or "")
    assert "(..., " in doc, f"hclib.{name} should state its shapes"
    assert "Eq." in doc or "Section" in doc, f"hclib.{name} should cite the equation it implements"


def test_connection_signatures_keep_the_agreed_names_and_defaults():
    expected = {
        hclib.Residual: {"dim": None, "branch": None, "norm": "pre"},
        hclib.HyperConnection: {"n": 4, "layer_id": 0, "dynamic": True, "tanh": True},
        hclib.FracConnection: {"m": 4, "layer_id": 0, "dynamic": True, "tanh": True},
        hclib.ManifoldHyperConnection: {"n": 4, "layer_id": 0, "sinkhorn_iters": 20},
    }
    for cls, params in expected.items():
        signature = inspect.signature(cls)
        for name, default in params.items():
            assert name in signature.parameters, f"{cls.__name__} lacks {name}"
            if default is not None:
                assert signature.parameters[name].default == default
    assert inspect.signature(hclib.sinkhorn_knopp).parameters["iters"].default == 20
    for cls in (hclib.HyperConnection, hclib.FracConnection):
        assert callable(cls.from_matrix) and callable(cls.static_matrix)


def test_connect_signature_keeps_the_agreed_names_and_defaults():
    parameters = inspect.signature(hclib.connect).parameters
    assert list(parameters)[:5] == ["branches", "dim", "connection", "n", "m"]
    assert parameters["connection"].default == "hc"
    assert parameters["n"].default == 4 and parameters["m"].default == 4
    assert parameters["options"].kind is inspect.Parameter.VAR_KEYWORD
