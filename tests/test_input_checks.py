"""Bad input is refused with a clear error; integer-like input is accepted wherever an int is.

Flags must be bools (``tanh="no"`` must not turn tanh on), epsilons finite and non-negative,
initial gates and connection matrices finite, and an empty matrix is a ``ValueError``, never
an ``IndexError``. NumPy integers, 0-d integer tensors and anything with ``__index__`` count as
ints. A branch that adds its own residual gives a warning.
"""

import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import hclib
from hclib.models import build_connection

D = 8


def branch():
    return nn.Sequential(nn.LayerNorm(D), nn.Linear(D, D))


CONSTRUCTORS = {
    "HyperConnection": lambda **kw: hclib.HyperConnection(D, branch(), n=2, **kw),
    "FracConnection": lambda **kw: hclib.FracConnection(D, branch(), m=2, **kw),
    "ManifoldHyperConnection": lambda **kw: hclib.ManifoldHyperConnection(D, branch(), n=2, **kw),
    "Residual": lambda **kw: hclib.Residual(D, branch(), **kw),
}

# ---------------------------------------------------------------- flags are bools
FLAGS = [(cls, flag) for cls in ("HyperConnection", "FracConnection") for flag in
         ("dynamic", "tanh", "norm_affine")]  # fmt: skip
NOT_BOOLS = ["no", "False", 0, 1, 1.0, None, torch.tensor(True), [True]]


@pytest.mark.parametrize(("cls", "flag"), FLAGS)
@pytest.mark.parametrize("value", NOT_BOOLS, ids=repr)
def test_a_flag_that_is_not_a_bool_is_refused(cls, flag, value):
    with pytest.raises(TypeError, match=rf"{flag} must be True or False, got"):
        CONSTRUCTORS[cls](**{flag: value})


@pytest.mark.parametrize(("cls", "flag"), FLAGS)
@pytest.mark.parametrize("value", [True, False, np.True_, np.False_], ids=repr)
def test_python_and_numpy_bools_are_flags(cls, flag, value):
    module = CONSTRUCTORS[cls](**{flag: value})
    attribute = {"tanh": "use_tanh", "dynamic": "dynamic"}.get(flag)
    if attribute:
        assert getattr(module, attribute) is bool(value)


def test_tanh_no_does_not_turn_tanh_on():
    with pytest.raises(TypeError, match="tanh must be True or False, got 'no'"):
        hclib.HyperConnection(D, branch(), tanh="no")


def test_build_connection_checks_its_flags_too():
    with pytest.raises(TypeError, match="dynamic must be True or False"):
        build_connection("hc", D, branch(), dynamic="yes")


# ---------------------------------------------------------------- eps finite and >= 0
BAD_EPS = [
    (-1e-5, ValueError, "eps must be >= 0"),
    (math.nan, ValueError, "eps must be finite, got nan"),
    (math.inf, ValueError, "eps must be finite, got inf"),
    (-math.inf, ValueError, "eps must be finite"),
    ("1e-5", TypeError, "eps must be a real number"),
    (True, TypeError, "eps must be a real number"),
    (None, TypeError, "eps must be a real number"),
]


@pytest.mark.parametrize("cls", list(CONSTRUCTORS))
@pytest.mark.parametrize(("eps", "error", "message"), BAD_EPS, ids=repr)
def test_an_eps_that_is_negative_or_not_finite_is_refused(cls, eps, error, message):
    with pytest.raises(error, match=message):
        CONSTRUCTORS[cls](eps=eps)


@pytest.mark.parametrize("cls", list(CONSTRUCTORS))
@pytest.mark.parametrize("eps", [0.0, 1e-20, np.float32(1e-6), torch.tensor(1e-5), 1])
def test_a_finite_non_negative_eps_is_accepted_and_gives_finite_outputs(cls, eps):
    module = CONSTRUCTORS[cls](eps=eps)
    state = {"Residual": (3, D), "FracConnection": (3, 2, D // 2)}.get(cls, (3, 2, D))
    assert torch.isfinite(module(torch.randn(*state))).all()


# ---------------------------------------------------------------- mHC's initial values finite
BAD_MHC_INIT = [
    ("gate_init", math.nan, ValueError, "gate_init must be finite"),
    ("gate_init", math.inf, ValueError, "gate_init must be finite"),
    ("gate_init", "0.01", TypeError, "gate_init must be a real number"),
    ("pre_init", math.nan, ValueError, "pre_init must be finite"),
    ("post_init", math.inf, ValueError, "post_init must be finite"),
    ("res_init_diag", math.nan, ValueError, "res_init_diag must be finite"),
    ("res_init_diag", 1.0, ValueError, r"res_init_diag must lie in \(0, 1\)"),
]


@pytest.mark.parametrize(("name", "value", "error", "message"), BAD_MHC_INIT)
def test_mhc_refuses_initial_values_that_are_not_finite_or_out_of_range(
    name, value, error, message
):
    with pytest.raises(error, match=message):
        CONSTRUCTORS["ManifoldHyperConnection"](**{name: value})


# ---------------------------------------------------------------- matrices finite, non-empty
HC_MATRIX = [[0.0, 1.0, 1.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]  # n = 2
FC_MATRIX = [[0.0, 0.0, 1.0, 1.0], [1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 1.0]]  # m = 2


def _with(matrix, i, j, value):
    M = torch.tensor(matrix)
    M[i, j] = value
    return M


FROM_MATRIX = {
    "HyperConnection": (hclib.HyperConnection, HC_MATRIX),
    "FracConnection": (hclib.FracConnection, FC_MATRIX),
}
BAD_MATRICES = [
    (lambda M: _with(M, 1, 0, math.nan), ValueError, r"must be finite, got nan at \(1, 0\)"),
    (lambda M: _with(M, 2, 2, math.inf), ValueError, r"must be finite, got inf at \(2, 2\)"),
    (lambda M: _with(M, 0, 2, -math.inf), ValueError, "must be finite, got -inf"),
    (lambda M: torch.zeros(0, 0), ValueError, r"got \(0, 0\)"),
    (lambda M: np.zeros((0, 0)), ValueError, r"got \(0, 0\)"),
    (lambda M: torch.zeros(1, 0), ValueError, r"got \(1, 0\)"),
    (lambda M: torch.tensor(M) > 0, TypeError, "must hold real numbers, got dtype torch.bool"),
    (lambda M: torch.tensor(M)[0], ValueError, "must be 2-D"),
]


@pytest.mark.parametrize("cls", list(FROM_MATRIX))
@pytest.mark.parametrize(("make", "error", "message"), BAD_MATRICES)
def test_from_matrix_refuses_empty_non_finite_or_non_real_matrices(cls, make, error, message):
    module, matrix = FROM_MATRIX[cls]
    with pytest.raises(error, match=message):
        module.from_matrix(make(matrix), D, branch())


@pytest.mark.parametrize("M", [torch.zeros(0, 0), torch.zeros(3, 0, 0)], ids=["(0,0)", "(3,0,0)"])
def test_amax_gain_of_an_empty_matrix_is_a_value_error(M):
    with pytest.raises(ValueError, match=r"n >= 1, got"):
        hclib.amax_gain(M)


# ---------------------------------------------------------------- integer-like ints
class Index:
    """Anything with ``__index__`` (PEP 357) is an int."""

    def __init__(self, value):
        self.value = value

    def __index__(self):
        return self.value

    def __repr__(self):
        return f"Index({self.value})"


def int_likes(value):
    return [np.int64(value), np.int32(value), np.uint8(value), torch.tensor(value),
            torch.tensor(value, dtype=torch.int32), np.array(value), Index(value)]  # fmt: skip


def not_ints(value):
    return [float(value), np.float64(value), torch.tensor(float(value)), torch.tensor([value]),
            np.array([value]), str(value), True, None]  # fmt: skip


# (what, build(value) -> the int it became) for every place an int is taken
INT_PLACES = {
    "HyperConnection n": lambda v: hclib.HyperConnection(D, branch(), n=v).n,
    "HyperConnection layer_id": lambda v: hclib.HyperConnection(D, branch(), layer_id=v).layer_id,
    "HyperConnection dim": lambda v: hclib.HyperConnection(v, nn.Identity(), n=2).dim,
    "FracConnection m": lambda v: hclib.FracConnection(3 * D, branch_of(3 * D), m=v).m,
    "FracConnection layer_id": lambda v: hclib.FracConnection(D, branch(), layer_id=v).layer_id,
    "FracConnection dim": lambda v: hclib.FracConnection(v, nn.Identity(), m=3).dim,
    "ManifoldHyperConnection n": lambda v: hclib.ManifoldHyperConnection(D, branch(), n=v).n,
    "ManifoldHyperConnection layer_id": lambda v: (
        hclib.ManifoldHyperConnection(D, branch(), layer_id=v).layer_id
    ),
    "ManifoldHyperConnection sinkhorn_iters": lambda v: (
        hclib.ManifoldHyperConnection(D, branch(), sinkhorn_iters=v).sinkhorn_iters
    ),
    "Residual dim": lambda v: hclib.Residual(v, nn.Identity()).dim,
    "expand_streams n": lambda v: hclib.expand_streams(torch.zeros(D), v).shape[-2],
    "split_fractions m": lambda v: hclib.split_fractions(torch.zeros(6 * D), v).shape[-2],
    "build_connection layer_id": lambda v: build_connection("hc", D, branch(), v).layer_id,
    "connect n": lambda v: hclib.connect([branch()], D, "hc", n=v).n,
    "connect dim": lambda v: hclib.connect([nn.Identity()], v, "mhc").dim,
}


def branch_of(d):
    return nn.Sequential(nn.LayerNorm(d), nn.Linear(d, d))


@pytest.mark.parametrize("place", list(INT_PLACES))
@pytest.mark.parametrize("value", int_likes(3), ids=repr)
def test_integer_like_values_are_accepted_wherever_an_int_is(place, value):
    result = INT_PLACES[place](value)
    assert result == 3 and type(result) is int


@pytest.mark.parametrize("place", list(INT_PLACES))
@pytest.mark.parametrize("value", not_ints(3), ids=repr)
def test_floats_bools_strings_and_longer_tensors_are_not_ints(place, value):
    with pytest.raises(TypeError, match="must be an int"):
        INT_PLACES[place](value)


def test_sinkhorn_iters_accepts_integer_like_values_with_the_same_result():
    logits = torch.randn(3, 3, dtype=torch.float64)
    expected = hclib.sinkhorn_knopp(logits, iters=5)
    for iters in int_likes(5):
        torch.testing.assert_close(hclib.sinkhorn_knopp(logits, iters=iters), expected)


def test_an_integer_like_layer_id_reads_the_same_stream_as_the_int():
    reference = hclib.HyperConnection(D, nn.Identity(), n=4, layer_id=6, dynamic=False)
    for layer_id in int_likes(6):
        module = hclib.HyperConnection(D, nn.Identity(), n=4, layer_id=layer_id, dynamic=False)
        torch.testing.assert_close(module.static_matrix(), reference.static_matrix())


# ---------------------------------------------------------------- branches with a residual
RESIDUAL_BLOCKS = {
    "TransformerEncoderLayer": lambda: nn.TransformerEncoderLayer(D, 2, 16, batch_first=True),
    "TransformerDecoderLayer": lambda: nn.TransformerDecoderLayer(D, 2, 16, batch_first=True),
}


@pytest.mark.parametrize("cls", list(CONSTRUCTORS))
@pytest.mark.parametrize("block", list(RESIDUAL_BLOCKS))
def test_a_branch_with_its_own_residual_warns_about_the_double_residual(cls, block):
    wrap = {
        "HyperConnection": hclib.HyperConnection,
        "FracConnection": hclib.FracConnection,
        "ManifoldHyperConnection": hclib.ManifoldHyperConnection,
        "Residual": hclib.Residual,
    }[cls]
    with pytest.warns(UserWarning, match=rf"{block}, which adds its own residual") as caught:
        wrap(D, RESIDUAL_BLOCKS[block]())
    assert "counted twice" in str(caught[0].message)
    assert caught[0].filename == __file__  # points at the caller's line, not into hclib


@pytest.mark.parametrize(
    ("make", "block"),
    [
        (lambda: nn.Sequential(nn.LayerNorm(D), RESIDUAL_BLOCKS["TransformerEncoderLayer"]()),
         "TransformerEncoderLayer \\(inside the Sequential\\)"),
        (lambda: nn.TransformerEncoder(RESIDUAL_BLOCKS["TransformerEncoderLayer"](), 2,
                                       enable_nested_tensor=False),
         "TransformerEncoderLayer \\(inside the TransformerEncoder\\)"),
    ],
)  # fmt: skip
def test_a_branch_holding_a_residual_block_warns_too(make, block):
    with pytest.warns(UserWarning, match=rf"{block}, which adds its own residual"):
        hclib.HyperConnection(D, make())


def test_connect_warns_once_per_residual_block():
    with pytest.warns(UserWarning, match="counted twice") as caught:
        hclib.connect([RESIDUAL_BLOCKS["TransformerEncoderLayer"]() for _ in range(2)], D)
    assert len(caught) == 2


@pytest.mark.parametrize("cls", list(CONSTRUCTORS))
def test_a_plain_prenorm_branch_gives_no_warning(cls):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        CONSTRUCTORS[cls]()
