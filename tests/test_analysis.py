"""Unfolded connection matrices (HC Eq. 27) and Amax gains (mHC Section 3.1)."""

import pytest
import torch
from torch import nn

import hclib

F64 = torch.float64
D = 12


class FreeBranch:
    """A branch whose output is a fixed tensor: the layer outputs become free inputs.

    It records the input it was given, so a test can read every layer's input.
    """

    def __init__(self, y):
        self.y = y
        self.seen = None

    def __call__(self, x):
        self.seen = x
        return self.y


def random_matrix(rows, cols, zero_cols):
    M = torch.randn(rows, cols, dtype=F64) * 0.7
    M[0, :zero_cols] = 0.0
    return M


def build_stack(kind, k, depth, tokens):
    """Connections with random weights around free branches; returns (layers, branches, H0, h0)."""
    h0 = torch.randn(tokens, D, dtype=F64)
    branches = [FreeBranch(torch.randn(tokens, D, dtype=F64)) for _ in range(depth)]
    if kind == "static_hc":
        layers = [
            hclib.HyperConnection.from_matrix(random_matrix(k + 1, k + 1, 1), D, b)
            for b in branches
        ]
    elif kind == "dynamic_hc":
        layers = [
            hclib.HyperConnection(D, b, n=k, layer_id=i).double() for i, b in enumerate(branches)
        ]
    elif kind == "mhc":
        layers = [
            hclib.ManifoldHyperConnection(D, b, n=k, layer_id=i).double()
            for i, b in enumerate(branches)
        ]
    elif kind == "static_fc":
        layers = [
            hclib.FracConnection.from_matrix(random_matrix(k + 1, 2 * k, k), D, b) for b in branches
        ]
    else:
        layers = [hclib.FracConnection(D, b, m=k).double() for b in branches]
    with torch.no_grad():
        for layer in layers:
            if kind in ("dynamic_hc", "mhc", "dynamic_fc"):
                for p in layer.parameters():
                    p.add_(torch.randn_like(p) * 0.3)
    if kind.endswith("fc"):
        return layers, branches, hclib.split_fractions(h0, k), h0
    return layers, branches, hclib.expand_streams(h0, k), h0


CASES = [
    ("static_hc", 1, 5, 4),
    ("static_hc", 2, 6, 4),
    ("static_hc", 4, 5, 4),
    ("dynamic_hc", 3, 5, 1),  # one token: the token average is the weight itself
    ("mhc", 4, 5, 1),
    ("static_fc", 2, 5, 4),
    ("static_fc", 3, 4, 4),
    ("dynamic_fc", 4, 4, 1),
]


@pytest.mark.parametrize(("kind", "k", "depth", "tokens"), CASES)
def test_connection_matrix_unfolds_every_layer_input_into_earlier_outputs(kind, k, depth, tokens):
    # Eq. 27: h_0^k = sum_{j<k} c_kj T^j(h_0^j), with T^0(h_0^0) = the embedding.
    layers, branches, H0, h0 = build_stack(kind, k, depth, tokens)
    C = hclib.connection_matrix(layers, H0)
    frac = kind.endswith("fc")
    assert C.shape == ((depth + 2, depth + 2, k, k) if frac else (depth + 2, depth + 2))
    H = H0
    with torch.no_grad():
        for layer in layers:
            H = layer(H)
    outputs = [h0] + [b.y for b in branches]  # T^0 .. T^L
    inputs = [b.seen for b in branches] + [
        hclib.merge_fractions(H) if frac else hclib.reduce_streams(H)
    ]  # layers 1 .. L+1
    for target, seen in enumerate(inputs, start=1):
        if frac:
            parts = [C[target, j] @ hclib.split_fractions(outputs[j], k) for j in range(target)]
            expected = hclib.merge_fractions(sum(parts))
        else:
            expected = sum(C[target, j] * outputs[j] for j in range(target))
        torch.testing.assert_close(seen, expected, atol=1e-12, rtol=1e-12)
    upper = torch.triu(torch.ones(depth + 2, depth + 2, dtype=torch.bool))
    assert torch.all(C[upper] == 0)


@pytest.mark.parametrize("depth", [1, 3, 7])
def test_prenorm_stack_unfolds_to_the_strictly_lower_triangular_ones_matrix(depth):
    layers = [hclib.Residual(D, nn.Identity()) for _ in range(depth)]
    expected = torch.tril(torch.ones(depth + 2, depth + 2), diagonal=-1)
    torch.testing.assert_close(hclib.connection_matrix(layers), expected, rtol=0, atol=0)
    hc = [
        hclib.HyperConnection.from_matrix([[0.0, 1.0], [1.0, 1.0]], D, nn.Identity())
        for _ in range(depth)
    ]
    torch.testing.assert_close(hclib.connection_matrix(hc), expected, rtol=0, atol=0)


@pytest.mark.parametrize("n", [2, 4])
def test_initialised_hc_unfolds_to_prenorm_with_an_output_row_of_n(n):
    layers = [hclib.HyperConnection(D, nn.Identity(), n=n, layer_id=i) for i in range(5)]
    C = hclib.connection_matrix(layers, torch.randn(3, n, D))
    expected = torch.tril(torch.ones(7, 7), diagonal=-1)
    expected[-1] *= n  # the output sums n copies of the Pre-Norm state
    torch.testing.assert_close(C, expected, rtol=0, atol=0)


def test_postnorm_unfolds_to_decaying_weights_on_earlier_layers():
    # Post-Norm divides everything by sigma at every layer, so older layers fade (Section 4.5).
    torch.manual_seed(0)
    branches = [nn.Linear(D, D).double() for _ in range(4)]
    layers = [hclib.Residual(D, b, norm="post") for b in branches]
    h = 3.0 * torch.randn(8, D, dtype=F64)
    C = hclib.connection_matrix(layers, h)
    assert torch.all(C[2:-1, 0] < C[1, 0])
    assert torch.all(torch.diagonal(C, offset=-1)[:-1] > 0)


def test_amax_gain_is_the_max_absolute_row_and_column_sum():
    M = torch.tensor([[1.0, -3.0], [0.5, 0.25]])
    gain = hclib.amax_gain(M)
    assert gain.forward.item() == pytest.approx(2.0)  # |1 - 3|
    assert gain.backward.item() == pytest.approx(2.75)  # |-3 + 0.25|
    batch = hclib.amax_gain(torch.stack([M, torch.eye(2)]))
    torch.testing.assert_close(batch.forward, torch.tensor([2.0, 1.0]))
    torch.testing.assert_close(batch.backward, torch.tensor([2.75, 1.0]))


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: hclib.connection_matrix([]), ValueError, "at least one"),
        (lambda: hclib.connection_matrix([nn.Linear(2, 2)]), TypeError, "hclib connection"),
        (
            lambda: hclib.connection_matrix(
                [hclib.Residual(D, nn.Identity()), hclib.FracConnection(D, nn.Identity(), m=1)]
            ),
            TypeError,
            "mixes",
        ),
        (
            lambda: hclib.connection_matrix([hclib.HyperConnection(D, nn.Identity(), n=2)]),
            ValueError,
            "pass the state",
        ),
        (
            lambda: hclib.connection_matrix(
                [
                    hclib.HyperConnection(D, nn.Identity(), n=2, dynamic=False),
                    hclib.HyperConnection(D, nn.Identity(), n=3, dynamic=False),
                ]
            ),
            ValueError,
            "same number of streams",
        ),
        (lambda: hclib.amax_gain(torch.zeros(2, 3)), ValueError, r"\(\.\.\., n, n\)"),
        (lambda: hclib.amax_gain([[1.0]]), TypeError, "torch.Tensor"),
    ],
)
def test_bad_analysis_inputs_raise_clear_errors(call, error, message):
    with pytest.raises(error, match=message):
        call()
