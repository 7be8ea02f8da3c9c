"""Streams (HC Section 2.1, Algorithm 1) and fractions (FC Eq. 6)."""

import pytest
import torch

import hclib

BATCHES = [(), (5,), (2, 3)]


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("n", [1, 2, 3, 8])
def test_expand_streams_replicates_the_hidden_state_n_times(batch, n):
    h = torch.randn(*batch, 7)
    H = hclib.expand_streams(h, n)
    assert H.shape == (*batch, n, 7)
    for i in range(n):
        torch.testing.assert_close(H[..., i, :], h, rtol=0, atol=0)


def test_expand_streams_returns_independent_memory():
    h = torch.randn(3, 4)
    H = hclib.expand_streams(h, 2)
    H[..., 0, :] += 1.0
    torch.testing.assert_close(H[..., 1, :], h, rtol=0, atol=0)
    assert H.is_contiguous()


@pytest.mark.parametrize("batch", BATCHES)
def test_reduce_streams_sums_the_streams(batch):
    H = torch.randn(*batch, 4, 6, dtype=torch.float64)
    expected = sum(H[..., i, :] for i in range(4))
    torch.testing.assert_close(hclib.reduce_streams(H), expected, rtol=0, atol=1e-15)


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize(("d", "m"), [(12, 1), (12, 3), (12, 4), (24, 8), (13, 13)])
def test_split_fractions_cuts_contiguous_chunks_and_merge_inverts_it(batch, d, m):
    h = torch.randn(*batch, d)
    H = hclib.split_fractions(h, m)
    assert H.shape == (*batch, m, d // m)
    for i in range(m):
        chunk = h[..., i * (d // m) : (i + 1) * (d // m)]
        torch.testing.assert_close(H[..., i, :], chunk, rtol=0, atol=0)
    torch.testing.assert_close(hclib.merge_fractions(H), h, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: hclib.expand_streams(torch.zeros(3), 0), ValueError, "n must be >= 1"),
        (lambda: hclib.expand_streams(torch.zeros(3), 2.0), TypeError, "n must be an int"),
        (lambda: hclib.expand_streams([1.0, 2.0], 2), TypeError, "torch.Tensor"),
        (lambda: hclib.expand_streams(torch.tensor(1.0), 2), ValueError, "at least 1 dim"),
        (lambda: hclib.reduce_streams(torch.zeros(3)), ValueError, "at least 2 dim"),
        (
            lambda: hclib.split_fractions(torch.zeros(250), 4),
            ValueError,
            "d=250 is not divisible by m=4",
        ),
        (lambda: hclib.split_fractions(torch.zeros(8), 0), ValueError, "m must be >= 1"),
        (lambda: hclib.split_fractions(torch.zeros(8), True), TypeError, "m must be an int"),
        (lambda: hclib.merge_fractions(torch.zeros(8)), ValueError, "at least 2 dim"),
    ],
)
def test_bad_stream_and_fraction_inputs_raise_clear_errors(call, error, message):
    with pytest.raises(error, match=message):
        call()
