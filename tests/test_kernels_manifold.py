"""mHC with ``impl="triton"`` (hclib.kernels.manifold_pre + post_res) against the reference.

The oracle is :class:`hclib.ManifoldHyperConnection` with ``impl="torch"`` (mHC Eqs. 3, 7-9):
the fused read-out (RMSNorm, projection, sigmoid / 2 sigmoid / Sinkhorn-Knopp and ``h0`` in
one kernel) followed by the fused write-in must give the same output and the same gradients
for the state ``H``, the branch output, ``phi``, the bias, the three gates and the branch's own
parameters. On CPU the kernels run in Triton's interpreter (tests/conftest.py sets
TRITON_INTERPRET=1) at small shapes; the tests marked ``gpu`` repeat them at real sizes.
"""

import copy

import pytest
import torch
from torch import nn

import hclib
from hclib.kernels.dispatch import triton_available

pytestmark = [
    pytest.mark.skipif(not triton_available(), reason="needs triton"),
    pytest.mark.filterwarnings("ignore::RuntimeWarning"),  # numpy's 0/0 in the interpreter
]

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
F32, F64, BF16 = torch.float32, torch.float64, torch.bfloat16
# (T, n, d): one token, a few, many; n in {1, 2, 4, 8}; d not a multiple of any block size
SHAPES = [(1, 1, 33), (3, 2, 100), (17, 4, 33), (3, 8, 100), (17, 3, 100)]
# (dtype of the state, atol, rtol); bfloat16: rtol of the largest entry (see compare)
DTYPES = [(F32, 1e-5, 1e-5), (BF16, 1e-2, 1e-2)]


class Probe(nn.Module):
    """A pre-normed branch, Tanh o Linear o LayerNorm, that keeps its output's gradient.

    It computes in float32 (float64 for float64 input) and answers in the dtype of its input:
    a bfloat16 branch would add its own rounding, which differs between the two runs as soon
    as one entry of ``h0`` rounds the other way, and the test is about the connection.
    """

    def __init__(self, d: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, d), nn.Tanh())
        self.y = None

    def forward(self, h):
        self.y = self.net(h.to(self.net[1].weight.dtype)).to(h.dtype)
        self.y.retain_grad()
        return self.y


def make_pair(n, d, dtype, iters=20, seed=0, std=0.3):
    """A randomised reference module (``impl="torch"``) and its copy with ``impl="triton"``."""
    torch.manual_seed(seed)
    ref = hclib.ManifoldHyperConnection(
        d, Probe(d), n=n, layer_id=seed, sinkhorn_iters=iters, impl="torch"
    )
    with torch.no_grad():  # the connection's weights only: a random branch would amplify the
        for p in (ref.phi, ref.bias, ref.alpha_pre, ref.alpha_post, ref.alpha_res):  # bf16
            p.add_(std * torch.randn_like(p))  # rounding of h0 far beyond the state's own
    ref = ref.to(DEVICE)
    if dtype == F64:
        ref = ref.double()
    fused = copy.deepcopy(ref)
    fused.impl = "triton"
    return ref, fused


def run(module, H, g_out):
    """Output and the gradients of every claim: ``H``, branch output, every parameter."""
    H = H.detach().clone().requires_grad_(True)
    out = module(H)
    out.backward(g_out)
    grads = {"H": H.grad, "branch output": module.branch.y.grad}
    module.branch.y = None  # keep the module copyable
    grads.update({name: p.grad for name, p in module.named_parameters()})
    return out, grads


def compare(ref, fused, H, atol, rtol, seed=1):
    """Output and every gradient of ``fused`` equal those of ``ref``.

    In bfloat16 a rounding of ``h0`` that goes the other way (an ulp is 0.4 % of the value)
    travels through the branch, so entries near 0 can differ by far more than ``rtol`` of
    themselves: there the tolerance is ``atol`` and ``rtol`` times the largest entry of the
    tensor (one or two ulps of it), not of each entry.
    """
    g_out = torch.randn(H.shape, generator=torch.Generator().manual_seed(seed)).to(H)
    out, grads = run(fused, H, g_out)
    ref_out, ref_grads = run(ref, H, g_out)
    assert out.dtype == ref_out.dtype == H.dtype and out.shape == H.shape
    grads["output"], ref_grads["output"] = out, ref_out
    assert grads.keys() == ref_grads.keys()
    for name, g in grads.items():
        want = ref_grads[name]
        assert g is not None and g.dtype == want.dtype, name
        tol = {"atol": atol, "rtol": rtol}
        if H.dtype == torch.bfloat16:
            tol = {"atol": atol + rtol * want.abs().max().item(), "rtol": 0}
        torch.testing.assert_close(g, want, **tol, msg=lambda m, k=name: f"d {k}: {m}")


def state(shape, dtype, seed=2):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=F64).to(DEVICE, dtype)


# ------------------------------------------------------------ forward and every gradient
@pytest.mark.parametrize(("dtype", "atol", "rtol"), DTYPES, ids=["float32", "bfloat16"])
@pytest.mark.parametrize("shape", SHAPES, ids=[f"T{t}-n{n}-d{d}" for t, n, d in SHAPES])
def test_triton_mhc_matches_the_reference_forward_and_every_gradient(shape, dtype, atol, rtol):
    T, n, d = shape
    ref, fused = make_pair(n, d, dtype, seed=n)
    compare(ref, fused, state(shape, dtype), atol, rtol)


@pytest.mark.parametrize("batch", [(), (2, 3)], ids=["one token, no batch", "batch 2x3"])
def test_triton_mhc_flattens_any_leading_shape_to_tokens(batch):
    ref, fused = make_pair(4, 33, F32, iters=5)
    compare(ref, fused, state((*batch, 4, 33), F32), 1e-5, 1e-5)


def test_triton_mhc_at_init_equals_the_reference():
    # phi = 0 and the default gates: the read-out is the biases' sigmoid and SK alone
    torch.manual_seed(0)
    ref = hclib.ManifoldHyperConnection(33, Probe(33), n=4, layer_id=1, impl="torch")
    ref = ref.to(DEVICE)
    fused = copy.deepcopy(ref)
    fused.impl = "triton"
    compare(ref, fused, state((5, 4, 33), F32), 1e-5, 1e-5)


@pytest.mark.parametrize(("n", "iters"), [(1, 1), (2, 5), (4, 5)])
def test_triton_mhc_passes_float64_gradcheck_for_the_state_and_every_weight(n, iters):
    # fast_mode: one random direction per input (the interpreter runs Python); the branch's own
    # parameters stay fixed, their gradients are plain autograd
    _, fused = make_pair(n, 20, F64, iters=iters, seed=n)
    H = state((3, n, 20), F64).requires_grad_(True)
    weights = (fused.phi, fused.bias, fused.alpha_pre, fused.alpha_post, fused.alpha_res)
    assert torch.autograd.gradcheck(lambda H, *ws: fused(H), (H, *weights), fast_mode=True)


def test_triton_mhc_equals_the_reference_where_exp_of_a_logit_row_underflows():
    # row 0 of b_res 200 below the others: in float32 exp it underflows to a zero row, whose
    # normalisation would be 0/0; both iterate on log M, where it is a fine row
    ref, fused = make_pair(4, 33, F32, iters=20, seed=3)
    with torch.no_grad():
        b_res = torch.randn(4, 4, generator=torch.Generator().manual_seed(0))
        b_res[0] -= 200.0
        ref.bias[8:], fused.bias[8:] = b_res.flatten(), b_res.flatten()
    # atol 1e-4: d alpha_res (about 0.02 here) is a sum of terms whose sizes add up to ~800,
    # so float32 rounding alone moves it by ~1e-4 (in both, against a float64 run)
    compare(ref, fused, state((17, 4, 33), F32), 1e-4, 1e-5)


# ----------------------------------------------------------------------- the read-out op
def test_read_out_op_returns_the_reference_mappings_h0_and_the_state_itself():
    from hclib.kernels.manifold_pre import manifold_pre

    _, module = make_pair(4, 33, F32, iters=20, seed=4)
    H = state((2, 3, 4, 33), F32)
    weights = (module.phi, module.bias, module.alpha_pre, module.alpha_post, module.alpha_res)
    h0, post, res, H_pass = manifold_pre(H, *weights, module.eps, module.sinkhorn_iters)
    pre, ref_post, ref_res = module.mappings(H)
    torch.testing.assert_close(h0, torch.einsum("...i,...id->...d", pre, H), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(post, ref_post, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(res, ref_res, atol=1e-6, rtol=1e-5)
    assert H_pass.shape == H.shape and H_pass.data_ptr() == H.data_ptr()  # a view, no copy


def test_read_out_op_rejects_a_phi_of_the_wrong_shape():
    from hclib.kernels.manifold_pre import manifold_pre

    _, module = make_pair(4, 33, F32)
    gates = (module.alpha_pre, module.alpha_post, module.alpha_res)
    with pytest.raises(ValueError, match=r"phi must have shape \(132, 24\), got \(132, 23\)"):
        manifold_pre(state((3, 4, 33), F32), module.phi[:, :23], module.bias, *gates, 1e-6, 20)


def test_phi_split_is_padded_exact_to_16_bits_and_made_once_per_weight_version():
    """The bf16 halves of ``phi`` that a GPU's forward reads: ``hi + lo`` equals ``phi`` to
    about 2^-16 relative, the padding columns are 0, and the split is cached with the weight:
    the same tensors while the weight is unchanged, new ones after an in-place update."""
    from hclib.kernels.manifold_pre import _phi_operands, clear_phi_cache

    clear_phi_cache()
    phi = nn.Parameter(torch.randn(132, 24, generator=torch.Generator().manual_seed(0)))
    hi, lo = _phi_operands(phi, 32, split=True)
    assert hi.shape == lo.shape == (132, 32) and hi.dtype == lo.dtype == BF16
    assert not hi[:, 24:].any() and not lo[:, 24:].any()
    err = (hi.float() + lo.float())[:, :24] - phi.detach()
    assert err.abs().max() <= 2.0**-16 * phi.detach().abs().max()
    again = _phi_operands(phi, 32, split=True)
    assert again[0] is hi and again[1] is lo  # cached: not split again
    with torch.no_grad():
        phi.mul_(2.0)  # an optimizer step: bumps the version
    hi2, lo2 = _phi_operands(phi, 32, split=True)
    assert hi2 is not hi
    torch.testing.assert_close(hi2.float() + lo2.float(), 2 * (hi.float() + lo.float()))
    other = phi.detach().clone()  # another tensor: never served the cached split of phi
    assert _phi_operands(other, 32, split=True)[0] is not hi2
    clear_phi_cache()


# --------------------------------------------------------------------------- impl switch
def test_auto_runs_the_reference_on_cpu_tensors_even_in_the_interpreter():
    ref, auto = make_pair(2, 33, F32, iters=5)
    auto.impl = "auto"
    H = state((3, 2, 33), F32).cpu()
    ref, auto = ref.cpu(), auto.cpu()
    assert torch.equal(auto(H), ref(H))  # bit for bit: the same code ran


def test_compile_runs_the_reference_math_through_dispatch_compiled(monkeypatch):
    # torch.compile itself takes tens of seconds on a CPU: here `compiled` is the identity and
    # the test checks what is compiled; the gpu test below runs the real thing.
    import hclib.manifold

    seen = []
    monkeypatch.setattr(hclib.manifold, "compiled", lambda fn: seen.append(fn) or fn)
    ref, comp = make_pair(2, 33, F32, iters=5)
    comp.impl = "compile"
    compare(ref, comp, state((3, 2, 33), F32), 0, 0)
    assert seen == [hclib.manifold._read_out, hclib.manifold._write_in]


@pytest.mark.parametrize(
    ("impl", "error", "match"),
    [("cuda", ValueError, "impl must be one of"), (None, ValueError, "impl must be one of")],
)
def test_unknown_impl_is_rejected_with_the_choices(impl, error, match):
    with pytest.raises(error, match=match):
        hclib.ManifoldHyperConnection(8, nn.Identity(), n=2, impl=impl)


def test_impl_shows_in_the_repr():
    layer = hclib.ManifoldHyperConnection(8, nn.Identity(), n=2, impl="torch")
    assert "impl='torch'" in repr(layer)


# --------------------------------------------------------------------------- GPU sizes
GPU_SHAPES = [(4096, 4, 4096), (8192, 4, 1024), (2048, 8, 2048), (4097, 1, 1000)]


@pytest.mark.gpu
@pytest.mark.parametrize(("dtype", "atol", "rtol"), DTYPES, ids=["float32", "bfloat16"])
@pytest.mark.parametrize("shape", GPU_SHAPES, ids=[f"T{t}-n{n}-d{d}" for t, n, d in GPU_SHAPES])
def test_triton_mhc_matches_the_reference_at_real_sizes_on_gpu(shape, dtype, atol, rtol):
    T, n, d = shape
    ref, fused = make_pair(n, d, dtype, seed=n, std=0.02)
    compare(ref, fused, state(shape, dtype), atol, 10 * rtol)


@pytest.mark.gpu
def test_compiled_mhc_matches_the_reference_on_gpu():
    ref, comp = make_pair(4, 1024, BF16, seed=5, std=0.02)
    comp.impl = "compile"
    compare(ref, comp, state((2048, 4, 1024), BF16), 3e-2, 3e-2)
