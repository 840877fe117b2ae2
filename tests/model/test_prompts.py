"""The prompt path and the L2P / DualPrompt / CODA-Prompt modules, against hand-written definitions."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
from torch import Tensor
from torch.testing import assert_close

from model.prompt_pools import CodaPromptPool, DualPromptPool, L2PPool, gram_schmidt_extend, ortho_penalty
from model.prompts import PrefixAttention, PromptedViT, PromptModule, PromptOutput

D, HEADS = 32, 2


def tiny_backbone() -> torch.nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return timm.create_model(
            "vit_tiny_patch16_224", pretrained=False, img_size=8, patch_size=4, in_chans=1,
            embed_dim=D, depth=2, num_heads=HEADS, num_classes=0,
        ).eval()


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def images(n: int = 4, seed: int = 1) -> Tensor:
    return torch.randn(n, 1, 8, 8, generator=gen(seed))


def make_pool(kind: str, seed: int = 0) -> PromptModule:
    if kind == "l2p":
        return L2PPool(D, pool_size=6, length=4, top_k=3, layers=(0, 1), generator=gen(seed))
    if kind == "l2p_prompt":
        return L2PPool(D, pool_size=6, length=3, top_k=2, layers=(0,), style="prompt", generator=gen(seed))
    if kind == "dual":
        return DualPromptPool(D, pool_size=3, e_length=4, g_length=2, g_layers=(0,), e_layers=(1,), generator=gen(seed))
    if kind == "dual_shared":  # a block with both E- and G-prompts
        return DualPromptPool(D, pool_size=3, e_length=4, g_length=2, g_layers=(0, 1), e_layers=(1,), generator=gen(seed))
    if kind == "coda":
        return CodaPromptPool(D, n_tasks=3, pool_size=6, length=4, ortho_mu=0.5, layers=(0, 1))
    raise KeyError(kind)


def prompted(kind: str, task: int = 0, seed: int = 0) -> PromptedViT:
    net = PromptedViT(tiny_backbone(), make_pool(kind, seed))
    for t in range(task + 1):
        net.begin_task(t, generator=gen(100 + t))
        net.heads.add(f"task_{t:03d}", 2, generator=gen(200 + t))
    return net


def cos(a: Tensor, b: Tensor) -> float:
    a, b = a.detach(), b.detach()
    return float(a @ b / (a.norm() * b.norm()))


def half_split(p: Tensor) -> tuple[Tensor, Tensor]:
    """One prompt (L, D) → its key half and value half."""
    return p[: p.shape[0] // 2], p[p.shape[0] // 2 :]


# --------------------------------------------------------- prefix attention
@pytest.mark.parametrize("fused", [True, False])
def test_prefix_attention_without_prefix_is_timm_attention(fused):
    attn = tiny_backbone().blocks[0].attn
    attn.fused_attn = fused
    wrapped = PrefixAttention(copy.deepcopy(attn))
    x = torch.randn(3, 5, D, generator=gen())
    assert_close(wrapped(x), attn(x))


@pytest.mark.parametrize("fused", [True, False])
def test_prefix_attention_is_softmax_over_prefixed_keys(fused):
    attn = tiny_backbone().blocks[0].attn
    attn.fused_attn = fused
    wrapped = PrefixAttention(attn)
    B, N, Lp, hd = 2, 5, 3, D // HEADS
    x, pk, pv = (torch.randn(B, n, D, generator=gen(i)) for i, n in enumerate((N, Lp, Lp)))
    wrapped.prefix = (pk, pv)
    got = wrapped(x)
    # By hand: q, k, v rows of the fused projection; per head softmax(q [pk; k]ᵀ·scale) [pv; v].
    W, b = attn.qkv.weight, attn.qkv.bias
    q, k, v = (x @ W[i * D : (i + 1) * D].T + b[i * D : (i + 1) * D] for i in range(3))
    k, v = torch.cat([pk, k], 1), torch.cat([pv, v], 1)
    heads = []
    for h in range(HEADS):
        s = slice(h * hd, (h + 1) * hd)
        weights = torch.softmax(q[..., s] @ k[..., s].transpose(1, 2) * hd ** -0.5, dim=-1)
        heads.append(weights @ v[..., s])
    want = torch.cat(heads, -1) @ attn.proj.weight.T + attn.proj.bias
    assert_close(got, want)


def test_query_pass_is_the_plain_backbone_and_keeps_its_state_dict_keys():
    plain = tiny_backbone()
    net = prompted("coda")
    assert set(net.backbone.state_dict()) >= {k for k in plain.state_dict() if ".attn.qkv." not in k}
    x = images()
    assert_close(net.query(x), plain(x))


def test_prompt_tokens_sit_between_cls_and_patches_without_position_embedding():
    net = prompted("l2p")
    bb = net.backbone
    x, tokens = images(2), torch.randn(2, 3, D, generator=gen(5))
    got = net._prompted_pass(x, PromptOutput(tokens=tokens))
    patches = bb.patch_embed(x) + bb.pos_embed[:, 1:]
    cls = (bb.cls_token + bb.pos_embed[:, :1]).expand(2, -1, -1)
    h = bb.norm(bb.blocks(torch.cat([cls, tokens, patches], 1)))
    assert_close(got, h[:, 0])


# ------------------------------------------------------------- selection
def test_l2p_selects_hand_computed_top_k_and_pull_loss():
    net = prompted("l2p")
    pool: L2PPool = net.prompts
    q = net.query(images())
    out = pool(q, task=0, train=True)
    loss = 0.0
    for slot, block in enumerate(pool.layers):
        sims = [[cos(q[b], pool.keys[slot, j]) for j in range(pool.pool_size)] for b in range(len(q))]
        top = [sorted(range(pool.pool_size), key=lambda j: -s[j])[: pool.top_k] for s in sims]
        for b, idx in enumerate(top):
            want_k = torch.cat([half_split(pool.prompts[slot, j])[0] for j in idx])
            want_v = torch.cat([half_split(pool.prompts[slot, j])[1] for j in idx])
            assert_close(out.prefixes[block][0][b], want_k)
            assert_close(out.prefixes[block][1][b], want_v)
        # official indexing: every query against the keys chosen by every sample
        loss += sum(1 - sims[b][j] for b in range(len(q)) for idx in top for j in idx)
    assert_close(out.loss, torch.tensor(loss), rtol=1e-5, atol=1e-4)


def test_l2p_prompt_style_prepends_the_chosen_prompts_as_tokens():
    net = prompted("l2p_prompt")
    pool: L2PPool = net.prompts
    q = net.query(images())
    out = pool(q, task=0, train=False)
    assert not out.prefixes
    for b in range(len(q)):
        idx = sorted(range(pool.pool_size), key=lambda j: -cos(q[b], pool.keys[0, j]))[: pool.top_k]
        assert_close(out.tokens[b], torch.cat([pool.prompts[0, j] for j in idx]))
    assert net(images()).shape == (4, 2)


def test_dualprompt_trains_own_e_prompt_and_tests_by_task_key_argmax():
    net = prompted("dual", task=1)
    pool: DualPromptPool = net.prompts
    q = net.query(images())
    B = len(q)
    train = pool(q, task=1, train=True)
    e_k, e_v = half_split(pool.e_prompts[1][0])
    assert_close(train.prefixes[1][0], e_k.expand(B, -1, -1))
    assert_close(train.prefixes[1][1], e_v.expand(B, -1, -1))
    g_k, g_v = half_split(pool.g_prompts[0])
    assert_close(train.prefixes[0][0], g_k.expand(B, -1, -1))
    assert_close(train.prefixes[0][1], g_v.expand(B, -1, -1))
    want_loss = B * sum(1 - cos(q[b], pool.e_keys[1][0]) for b in range(B))
    assert_close(train.loss, torch.tensor(want_loss), rtol=1e-5, atol=1e-4)

    test = pool(q, task=1, train=False)
    for b in range(B):
        best = max(range(pool.pool_size), key=lambda j: cos(q[b], pool.e_keys[j][0]))
        assert_close(test.prefixes[1][0][b], half_split(pool.e_prompts[best][0])[0])
    # by default a forward with autograd on is a training forward, under no_grad a test one
    net(images())
    assert net.aux_loss() > 0
    with torch.no_grad():
        net(images())
    assert float(net.aux_loss().detach()) == 0.0


def test_dualprompt_block_with_both_gets_e_then_g():
    pool = make_pool("dual_shared")
    q = torch.randn(2, D, generator=gen(3))
    pk, pv = pool(q, task=0, train=True).prefixes[1]
    assert_close(pk[0], torch.cat([half_split(pool.e_prompts[0][0])[0], half_split(pool.g_prompts[1])[0]]))
    assert_close(pv[0], torch.cat([half_split(pool.e_prompts[0][0])[1], half_split(pool.g_prompts[1])[1]]))


def test_coda_weights_components_by_attended_query_key_cosine():
    net = prompted("coda", task=1)
    pool: CodaPromptPool = net.prompts
    q = net.query(images())
    out = pool(q, task=1, train=False)
    comps = [pool.components["task_000"], pool.components["task_001"]]
    for slot, block in enumerate(pool.layers):
        K = torch.cat([c.k[slot] for c in comps])
        A = torch.cat([c.a[slot] for c in comps])
        P = torch.cat([c.p[slot] for c in comps])
        for b in range(len(q)):
            alpha = [cos(q[b] * A[j], K[j]) for j in range(len(K))]
            want = sum(a * P[j] for j, a in enumerate(alpha))
            assert_close(out.prefixes[block][0][b], half_split(want)[0])
            assert_close(out.prefixes[block][1][b], half_split(want)[1])


# ---------------------------------------------------------------- freezing
@pytest.mark.parametrize("kind", ["coda", "dual"])
def test_old_components_receive_no_gradient(kind):
    net = prompted(kind, task=1)
    old = [p for p in net.prompts.parameters() if not any(p is q for q in net.prompt_parameters_for(1))]
    if kind == "coda":
        # even if someone turned them trainable, the official .detach() keeps them out of the graph
        for p in net.prompts.components["task_000"].parameters():
            p.requires_grad_(True)
    out = net(images(), ["task_001"])
    (out.square().sum() + net.aux_loss()).backward()
    assert old and all(p.grad is None or not p.grad.any() for p in old)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.prompt_parameters_for(1))


@pytest.mark.parametrize("kind", ["l2p", "l2p_prompt", "dual", "coda"])
def test_backbone_stays_frozen_under_an_optimizer_step(kind):
    net = prompted(kind, task=1)
    net.backbone.requires_grad_(True)
    net.begin_task(1)  # must freeze the backbone again, whatever came before
    before = {k: v.clone() for k, v in net.backbone.state_dict().items()}
    prompts_before = [p.detach().clone() for p in net.prompt_parameters_for(1)]
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=0.1)
    for _ in range(2):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(images(), ["task_001"]), torch.tensor([0, 1, 0, 1])) + net.aux_loss()
        loss.backward()
        opt.step()
    assert not any(p.requires_grad for p in net.backbone.parameters())
    after = net.backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert any(not torch.equal(a, b) for a, b in zip(prompts_before, net.prompt_parameters_for(1)))


# ------------------------------------------------------------ orthogonality
def test_ortho_penalty_definition():
    q, _ = torch.linalg.qr(torch.randn(8, 5, generator=gen(), dtype=torch.float64))
    assert float(ortho_penalty(q.T)) == pytest.approx(0.0, abs=1e-20)
    # t tᵀ − I = [[0, 1], [1, 1]] → mean of squares 3/4
    assert float(ortho_penalty(torch.tensor([[1.0, 0.0], [1.0, 1.0]]))) == pytest.approx(0.75)


def test_gram_schmidt_extends_an_orthonormal_set():
    old, _ = torch.linalg.qr(torch.randn(10, 3, generator=gen()))
    new = gram_schmidt_extend(old.T, 4, gen(1))
    both = torch.cat([old.T, new])
    assert_close(both @ both.T, torch.eye(7), atol=1e-5, rtol=0)


def test_coda_ortho_term_zero_for_orthogonal_components_positive_otherwise():
    net = prompted("coda", task=1)
    net(images())
    assert float(net.aux_loss().detach()) == pytest.approx(0.0, abs=1e-9)  # Gram-Schmidt init is orthonormal
    with torch.no_grad():
        net.prompts.components["task_001"].k.add_(0.3)
    net(images())
    pool = net.prompts
    want = 0.0
    for slot in range(len(pool.layers)):
        for name in ("k", "a", "p"):
            t = torch.cat([getattr(c, name)[slot].detach().reshape(pool.per_task, -1) for c in pool.components.values()])
            want += float(((t @ t.T - torch.eye(len(t))) ** 2).mean())
    assert float(net.aux_loss().detach()) > 1e-3
    assert float(net.aux_loss().detach()) == pytest.approx(pool.ortho_mu * want, rel=1e-5)


# --------------------------------------------------------- state and cache
@pytest.mark.parametrize("kind", ["l2p", "dual", "coda"])
def test_prompt_state_round_trip_is_exact(kind):
    net = prompted(kind, task=1)
    with torch.no_grad():
        for p in net.prompt_parameters_for(1):
            p.add_(torch.randn(p.shape, generator=gen(9)))
    state = net.prompt_state()
    assert not any(k.startswith(("blocks", "backbone")) for k in state)
    fresh = PromptedViT(tiny_backbone(), make_pool(kind, seed=7))
    fresh.load_prompt_state(state)
    fresh.begin_task(1)  # resuming: must not re-initialise loaded components
    got = fresh.prompt_state()
    assert set(got) == set(state) and all(torch.equal(got[k], state[k]) for k in state)
    with torch.no_grad():
        assert torch.equal(fresh(images()), net(images()))


def test_eval_query_is_computed_once_per_batch():
    net = prompted("dual")
    calls = []
    net.backbone.patch_embed.register_forward_hook(lambda *a: calls.append(1))
    x = images()
    with torch.no_grad():
        first = net(x)
        assert len(calls) == 2  # query pass + prompted pass
        assert torch.equal(net(x, ["task_000"]), first)
        assert len(calls) == 3  # same tensor: query reused
        x.mul_(2.0)
        net(x)
        assert len(calls) == 5  # changed in place: encoded again
    net(x)
    net(x)
    assert len(calls) == 9  # training forwards never reuse a query
