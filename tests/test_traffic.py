"""Memory traffic per token: mHC Table 2, the floor of the connection's work, eager PyTorch's
measured traffic, HC's activation memory and mHC's recomputation block (hclib.traffic)."""

import pytest
import torch

import hclib
from hclib.traffic import (
    Traffic,
    best_recompute_block,
    count_traffic,
    device_peak,
    floor_bytes,
    floor_elements,
    floor_ops,
    hc_activation_elements,
    kernel_elements,
    mhc_table2,
    post_res_traffic,
    recompute_block_estimate,
    recompute_cost,
    recompute_elements,
)

SHAPES = [(1, 1), (2, 7), (4, 2560), (8, 1024)]  # (n, C)


def _totals(n: int, C: int) -> dict[str, Traffic]:
    totals = {"residual": Traffic(0, 0), "hc": Traffic(0, 0)}
    for row in mhc_table2(n, C):
        totals[row.method] = totals[row.method] + row.traffic
    return totals


@pytest.mark.parametrize(("n", "C"), SHAPES)
def test_table2_rows_sum_to_the_papers_totals(n, C):
    totals = _totals(n, C)
    assert totals["residual"] == Traffic(2 * C, C)
    assert totals["hc"] == Traffic((5 * n + 1) * C + n * n + 2 * n, (3 * n + 1) * C + n * n + 2 * n)


def test_table2_at_n4_c2560_reads_53784_and_writes_33304():
    assert _totals(4, 2560)["hc"] == Traffic(53_784, 33_304)


@pytest.mark.parametrize(("n", "C"), SHAPES)
def test_fused_post_res_cuts_reads_from_3n_plus_1_to_n_plus_1_and_writes_from_3n_to_n(n, C):
    # mHC Section 4.3 states the C terms; the n^2 + n coefficient reads are the same in both.
    unfused, fused = post_res_traffic(n, C, fused=False), post_res_traffic(n, C, fused=True)
    assert unfused == Traffic((3 * n + 1) * C + n * n + n, 3 * n * C)
    assert fused == Traffic((n + 1) * C + n * n + n, n * C)
    wider = post_res_traffic(n, C + 1, fused=True)
    assert (wider.read - fused.read, wider.write - fused.write) == (n + 1, n)  # the C terms


# (kind, rate, mode, reads per token in units of d, writes in units of d)
FLOORS = [
    ("residual", 1, "forward", 2, 1),
    ("residual", 1, "backward", 2, 1),
    ("fc", 4, "forward", 3, 2),
    ("fc", 4, "backward", 6, 3),
    ("hc", 2, "forward", 5, 3),
    ("hc", 4, "forward", 9, 5),
    ("hc", 4, "backward", 18, 9),
    ("mhc", 4, "forward+backward", 27, 14),
    ("mhc", 8, "forward+backward", 51, 26),
]


@pytest.mark.parametrize(("kind", "rate", "mode", "reads", "writes"), FLOORS)
def test_floor_counts_every_op_reading_its_inputs_and_writing_its_outputs_once(
    kind, rate, mode, reads, writes
):
    d = 96
    assert floor_elements(kind, d, rate, mode) == Traffic(reads * d, writes * d)
    assert floor_bytes(kind, d, rate, mode) == 2 * (reads + writes) * d
    assert floor_bytes(kind, d, rate, mode, element_size=4) == 4 * (reads + writes) * d


@pytest.mark.parametrize("n", [1, 2, 4, 8])
def test_floor_is_3n_plus_2_forward_and_6n_plus_3_backward(n):
    d = 10
    for kind in ("hc", "mhc"):
        assert floor_elements(kind, d, n, "forward").total == (3 * n + 2) * d
        assert floor_elements(kind, d, n, "backward").total == (6 * n + 3) * d
        assert floor_elements(kind, d, n).total == (9 * n + 5) * d


def test_floor_of_fc_does_not_depend_on_m_and_is_7_thirds_of_the_residuals():
    d = 64
    assert len({floor_elements("fc", d, m) for m in (1, 2, 4, 8)}) == 1
    assert floor_elements("fc", d, 4).total * 3 == floor_elements("residual", d).total * 7


def test_floor_ops_list_the_two_ops_and_their_backwards_in_execution_order():
    assert list(floor_ops("hc", 8, 4)) == ["pre", "post_res", "post_res backward", "pre backward"]
    assert list(floor_ops("residual", 8, mode="forward")) == ["add"]


@pytest.mark.parametrize("n", [1, 2, 4, 8])
def test_cross_layer_floor_is_2n_plus_2_forward_and_3n_plus_3_backward(n):
    d = 10
    for kind in ("hc", "mhc"):
        assert floor_elements(kind, d, n, "forward", "cross-layer").total == (2 * n + 2) * d
        assert floor_elements(kind, d, n, "backward", "cross-layer").total == (3 * n + 3) * d
    assert floor_elements("fc", d, 4, fusion="cross-layer").total == 10 * d  # k = 1


def test_cross_layer_floor_at_n4_is_25d_and_4_point_2_residual_adds():
    d = 4096
    cross = floor_elements("hc", d, 4, fusion="cross-layer").total
    assert cross == 25 * d
    assert cross / floor_elements("residual", d).total == pytest.approx(25 / 6)
    assert floor_elements("hc", d, 4).total / floor_elements("residual", d).total == pytest.approx(
        41 / 6
    )


def test_cross_layer_fusion_leaves_the_residual_add_alone():
    for mode in ("forward", "backward", "forward+backward"):
        assert floor_elements("residual", 8, 1, mode, "cross-layer") == floor_elements(
            "residual", 8, 1, mode
        )


def test_cross_layer_forward_saves_the_second_read_of_the_state():
    # fusing post_res with the next pre saves the second read of the state: k d
    for n in (1, 2, 4):
        per_op = floor_elements("hc", 8, n, "forward").total
        assert per_op - floor_elements("hc", 8, n, "forward", "cross-layer").total == n * 8


# (kind, rate, state bytes, bytes per token and unit of d, per-op forward+backward)
STATE_DTYPES = [
    ("residual", 1, 2, 12),
    ("residual", 1, 4, 20),  # h, h', dh', dh at 4 bytes; y and dh0 at 2
    ("hc", 4, 2, 82),
    ("hc", 4, 4, 154),  # 9 state-wide passes of 4 n bytes and 5 branch-wide of 2
    ("fc", 4, 4, 46),
]


@pytest.mark.parametrize(("kind", "rate", "state_bytes", "per_d"), STATE_DTYPES)
def test_a_float32_state_under_bf16_counts_4_bytes_per_state_element(
    kind, rate, state_bytes, per_d
):
    assert floor_bytes(kind, 8, rate, state_element_size=state_bytes) == per_d * 8


def test_recomputation_adds_the_forward_floor_once_more_per_layer():
    d = 16
    for fusion in ("per-op", "cross-layer"):
        forward = floor_elements("mhc", d, 4, "forward", fusion)
        assert recompute_elements("mhc", d, 4, fusion) == forward
    assert recompute_elements("hc", d, 4).total == 14 * d  # (3n+2) d, not the state's n d alone


# (kind, fewest, most) of hclib.kernels, forward+backward, in units of d at rate 4
KERNELS = [("residual", 6, 6), ("fc", 14, 17), ("hc", 41, 50), ("mhc", 46, 50)]


@pytest.mark.parametrize(("kind", "fewest", "most"), KERNELS)
def test_hclib_kernels_reach_the_per_op_floor_at_best_and_never_the_cross_layer_one(
    kind, fewest, most
):
    low, high = kernel_elements(kind, 1, 4)
    assert (low.total, high.total) == (fewest, most)
    assert low.total >= floor_elements(kind, 1, 4).total
    if kind != "residual":
        assert low.total > floor_elements(kind, 1, 4, fusion="cross-layer").total


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"kind": "hc", "d": 8, "rate": 4, "fusion": "fused"}, "fusion must be one of"),
        ({"kind": "hc", "d": 8, "rate": 4, "mode": "both"}, "mode must be one of"),
        ({"kind": "dense", "d": 8}, "kind must be one of"),
    ],
)
def test_floors_say_what_they_expected(kwargs, error):
    with pytest.raises(ValueError, match=error):
        floor_elements(**kwargs)


def _connection_and_state(kind, T, d, rate, dtype):
    """A connection whose branch returns a fixed y and records its input h0."""
    seen = {}
    y = torch.randn(T, d, dtype=dtype, requires_grad=True)

    def branch(h0):
        seen["h0"] = h0
        return y

    if kind == "residual":
        module, shape = hclib.Residual(d, branch), (T, d)
    elif kind == "hc":
        module, shape = hclib.HyperConnection(d, branch, n=rate), (T, rate, d)
    elif kind == "fc":
        module, shape = hclib.FracConnection(d, branch, m=rate), (T, rate, d // rate)
    else:
        module, shape = hclib.ManifoldHyperConnection(d, branch, n=rate), (T, rate, d)
    H = torch.randn(*shape, dtype=dtype, requires_grad=True)
    return module, H, y, seen


def _eager_traffic(kind, T, d, rate, dtype):
    module, H, y, seen = _connection_and_state(kind, T, d, rate, dtype)
    out, fwd = count_traffic(module, H)
    h0 = seen["h0"]
    inputs = (H, y, *module.parameters())
    cotangents = (torch.randn_like(h0), torch.randn_like(out))
    _, bwd = count_traffic(torch.autograd.grad, (h0, out), inputs, cotangents)
    per_token = T * d
    return (
        sum(op.read + op.write for op in fwd) / per_token,
        sum(op.read + op.write for op in bwd) / per_token,
    )


def test_eager_residual_add_moves_exactly_its_floor():
    forward, backward = _eager_traffic("residual", 16, 64, 1, torch.bfloat16)
    assert forward * 64 == floor_bytes("residual", 64, mode="forward")
    assert backward * 64 == floor_bytes("residual", 64, mode="backward")


@pytest.mark.parametrize("kind", ["hc", "fc", "mhc"])
def test_eager_reference_moves_several_times_the_floor(kind):
    d = 64
    forward, backward = _eager_traffic(kind, 16, d, 4, torch.bfloat16)
    assert forward * d > 2 * floor_bytes(kind, d, 4, "forward")
    assert backward * d > 2 * floor_bytes(kind, d, 4, "backward")


def test_count_traffic_skips_views_and_counts_a_broadcast_input_once():
    x = torch.randn(8, 16)
    v = torch.randn(16)

    def fn():
        z = x.t().reshape(16, 8).transpose(0, 1)  # views only
        return z + v.expand(8, 16)  # one add: reads x and v (16 numbers), writes 8 x 16

    _, ops = count_traffic(fn)
    assert [op.op for op in ops] == ["add"]
    assert (ops[0].read, ops[0].write) == ((8 * 16 + 16) * 4, 8 * 16 * 4)


def test_count_traffic_counts_an_in_place_add_as_read_modify_write_and_a_copy_as_one_read():
    x, y = torch.randn(100), torch.randn(100, dtype=torch.float64)
    _, ops = count_traffic(lambda: (x.add_(1.0), x.copy_(y)))
    assert [(op.op, op.read, op.write) for op in ops] == [("add_", 400, 400), ("copy_", 800, 400)]


def test_hc_activation_memory_is_2n_tokens_d_layers_or_n_tokens_d_with_recompute():
    # OLMo-1B shape (HC Appendix B): 8 GiB of bfloat16 per device for DHC x4.
    elements = hc_activation_elements(4, 16_384, 2048, 16)
    assert elements == 2 * 4 * 16_384 * 2048 * 16
    assert elements * 2 == 8 * 2**30
    assert hc_activation_elements(4, 16_384, 2048, 16, recompute=True) == 4 * 16_384 * 2048


def test_recompute_cost_at_n4_l60_is_smallest_at_block_6_near_sqrt_nl_over_n_plus_2():
    assert recompute_cost(4, 60, 6) == 4 * 10 + 6 * 6
    assert best_recompute_block(4, 60) == 6
    assert recompute_block_estimate(4, 60) == pytest.approx(6.3246, abs=1e-4)


@pytest.mark.parametrize("n", [1, 2, 4, 8])
def test_best_recompute_block_is_within_2_of_the_closed_form(n):
    for layers in range(1, 129):
        best = best_recompute_block(n, layers)
        assert recompute_cost(n, layers, best) == min(
            recompute_cost(n, layers, b) for b in range(1, layers + 1)
        )
        assert abs(best - recompute_block_estimate(n, layers)) <= 2, (n, layers)


@pytest.mark.parametrize(
    ("name", "label", "bandwidth"),
    [
        ("NVIDIA H100 80GB HBM3", "H100 SXM", 3.35),
        ("NVIDIA H100 PCIe", "H100 PCIe", 2.0),
        ("NVIDIA H100 NVL", "H100 NVL", 3.9),
        ("NVIDIA H200", "H200", 4.8),
        ("NVIDIA A100-SXM4-80GB", "A100 80GB SXM", 2.039),
        ("NVIDIA A100 80GB PCIe", "A100 80GB PCIe", 1.935),
        ("NVIDIA A100-SXM4-40GB", "A100 40GB", 1.555),
        ("NVIDIA A100-PCIE-40GB", "A100 40GB", 1.555),
    ],
)
def test_device_peak_reads_the_gpu_from_its_name(name, label, bandwidth):
    peak = device_peak(name)
    assert peak is not None and (peak.name, peak.bandwidth_tbs) == (label, bandwidth)


def test_unknown_devices_have_no_peak_and_the_h100_ridge_is_near_300_flops_per_byte():
    assert device_peak("NVIDIA GH200 480GB") is None  # not H200: no guess
    assert device_peak("cpu") is None
    assert device_peak("NVIDIA H100 80GB HBM3").ridge == pytest.approx(295.2, abs=0.1)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: floor_elements("dhc", 8), "kind must be one of"),
        (lambda: floor_elements("hc", 8, 4, "fwd"), "mode must be one of"),
        (lambda: floor_elements("hc", 0, 4), "d must be an int >= 1, got 0"),
        (lambda: floor_elements("hc", 8, 0), "rate must be an int >= 1, got 0"),
        (lambda: mhc_table2(4, 2.5), "C must be an int >= 1, got 2.5"),
        (lambda: recompute_cost(4, 10, 11), "block=11 is longer than the network's layers=10"),
    ],
)
def test_bad_arguments_say_what_was_expected_and_what_was_given(call, message):
    with pytest.raises(ValueError, match=message):
        call()
