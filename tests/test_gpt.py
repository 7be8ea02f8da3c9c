"""The GPT with any connection, and its MoE feed-forward layer."""

import pytest
import torch

from hclib.models.gpt import GPT, GPTConfig
from hclib.models.moe import MoE, moe_loop_reference

CONNECTIONS = [("residual", {}), ("hc", {"n": 2}), ("fc", {"m": 4}), ("mhc", {"n": 2})]
TINY = {"vocab_size": 48, "block_size": 16, "n_layer": 2, "n_head": 2, "d_model": 16}


@pytest.mark.parametrize(("connection", "rates"), CONNECTIONS)
@pytest.mark.parametrize("mlp", ["swiglu", "gelu"])
def test_gpt_maps_token_ids_to_logits_with_any_connection(connection, rates, mlp):
    model = GPT(GPTConfig(**TINY, connection=connection, mlp=mlp, **rates))
    logits, loss = model(torch.randint(0, 48, (3, 10)))
    assert logits.shape == (3, 10, 48) and loss is None
    assert len(model.connections()) == 4


@pytest.mark.parametrize(("connection", "rates"), CONNECTIONS)
def test_gpt_is_causal_future_tokens_do_not_change_past_logits(connection, rates):
    torch.manual_seed(0)
    model = GPT(GPTConfig(**TINY, connection=connection, **rates)).eval()
    for p in model.parameters():  # leave init so every connection weight is in play
        p.data.add_(0.05 * torch.randn_like(p))
    idx = torch.randint(0, 48, (2, 12))
    changed = idx.clone()
    changed[:, 7:] = torch.randint(0, 48, (2, 5))
    torch.testing.assert_close(model(idx)[0][:, :7], model(changed)[0][:, :7])


@pytest.mark.parametrize(("connection", "rates"), CONNECTIONS)
def test_gpt_with_any_connection_lowers_its_loss_in_a_few_steps(connection, rates):
    torch.manual_seed(0)
    model = GPT(GPTConfig(**TINY, connection=connection, moe_layers=[1], **rates))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    idx = torch.randint(0, 48, (4, 16))
    losses = []
    for _ in range(12):
        _, loss = model(idx[:, :-1], idx[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.3


@pytest.mark.parametrize(("connection", "rates"), CONNECTIONS[1:])
def test_gpt_with_hc_fc_or_mhc_at_init_gives_the_residual_models_logits(connection, rates):
    # The papers' equivalence end to end: same weights, streams from the embedding, the final
    # RMSNorm (eps = 0) removes HC's and mHC's factor n.
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # mHC's init biases are exact only in float64
    try:
        torch.manual_seed(0)
        cfg = {**TINY, "norm_eps": 0.0, "moe_layers": [0]}
        residual = GPT(GPTConfig(**cfg))
        other = GPT(GPTConfig(**cfg, connection=connection, **rates))
        for mine, theirs in zip(residual.connections(), other.connections(), strict=True):
            theirs.branch.load_state_dict(mine.branch.state_dict())
        other.embed.load_state_dict(residual.embed.state_dict())
        idx = torch.randint(0, 48, (2, 9))
        torch.testing.assert_close(other(idx)[0], residual(idx)[0], atol=1e-10, rtol=1e-10)
    finally:
        torch.set_default_dtype(default)


@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize(("experts", "top_k"), [(4, 1), (4, 2), (8, 3)])
def test_moe_dispatch_equals_the_token_by_token_loop(shared, experts, top_k):
    torch.manual_seed(experts + top_k)
    moe = MoE(12, 20, experts, top_k, shared_expert=shared).double()
    x = torch.randn(3, 7, 12, dtype=torch.float64, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    y, y_ref = moe(x), moe_loop_reference(moe, x_ref)
    torch.testing.assert_close(y, y_ref, atol=1e-12, rtol=1e-12)
    grad = torch.randn_like(y)
    (g,) = torch.autograd.grad(y, x, grad)
    (g_ref,) = torch.autograd.grad(y_ref, x_ref, grad)
    torch.testing.assert_close(g, g_ref, atol=1e-12, rtol=1e-12)


def test_moe_reports_expert_load_and_its_auxiliary_losses():
    torch.manual_seed(0)
    moe = MoE(8, 16, n_experts=4, top_k=2)
    x = torch.randn(50, 8)
    moe(x)
    assert moe.expert_load.shape == (4,)
    torch.testing.assert_close(moe.expert_load.sum(), torch.tensor(1.0))
    logits = moe.router(x)
    probs = logits.softmax(-1)
    chosen = torch.zeros(50, 4).scatter_(1, probs.topk(2, dim=-1).indices, 1.0)
    expected = 4 * (chosen.mean(0) / 2 * probs.mean(0)).sum()  # Switch: E sum_e f_e P_e
    torch.testing.assert_close(moe.aux_loss, expected)
    torch.testing.assert_close(moe.z_loss, torch.logsumexp(logits, -1).pow(2).mean())


def test_gpt_loss_adds_the_weighted_moe_losses():
    torch.manual_seed(0)
    model = GPT(GPTConfig(**TINY, moe_layers=[0, 1], aux_loss_coef=0.5, z_loss_coef=0.25))
    idx = torch.randint(0, 48, (2, 8))
    logits, loss = model(idx, idx)
    ce = torch.nn.functional.cross_entropy(logits.flatten(0, 1), idx.flatten())
    extra = sum(0.5 * m.aux_loss + 0.25 * m.z_loss for m in model.moe_modules())
    torch.testing.assert_close(loss, ce + extra)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"connection": "dense"}, "connection must be one of"),
        ({"connection": "fc", "m": 3}, "d=16 is not divisible by m=3"),
        ({"n_head": 3}, "not divisible by n_head"),
        ({"mlp": "relu"}, "'swiglu' or 'gelu'"),
        ({"moe_layers": [5]}, "outside"),
        ({"moe_layers": [0], "top_k": 9}, "top_k=9"),
        ({"output_init_scale": "double"}, "output_init_scale"),
        ({"colour": "blue"}, "unknown GPTConfig keys"),
    ],
)
def test_bad_gpt_configs_raise_clear_errors(values, message):
    with pytest.raises(ValueError, match=message):
        GPTConfig.from_dict({**TINY, **values})


def test_gpt_rejects_sequences_longer_than_its_block_size():
    model = GPT(GPTConfig(**TINY))
    with pytest.raises(ValueError, match="exceeds block_size=16"):
        model(torch.zeros(1, 17, dtype=torch.long))
