"""APOLLO, property by property (Zhu et al. 2024)."""

import math

import pytest
import torch

from dreamd.trainers.apollo import Apollo, state_bytes


def one_step(weight, grad, **kwargs):
    """(optimizer, weight change / -lr) after one step with `grad`."""
    p = torch.nn.Parameter(weight.clone())
    opt = Apollo([p], lr=1e-3, **kwargs)
    p.grad = grad.clone()
    before = p.detach().clone()
    opt.step()
    return opt, p, (before - p.detach()) / 1e-3


def expected_factor(opt, p, grad, channel_dim):
    """The paper's factor recomputed independently from the stored projection (first step:
    bias-corrected moments are R and R^2)."""
    state = opt.state[p]
    projection = state["projection"]
    low = projection @ grad if grad.shape[0] <= grad.shape[1] else grad @ projection.T
    normalized = low / (low.abs() + opt.defaults["eps"])
    if channel_dim is None:
        return normalized.norm() / low.norm()
    return normalized.norm(dim=channel_dim, keepdim=True) / low.norm(dim=channel_dim, keepdim=True)


def test_moments_live_only_in_the_low_rank_space():
    for shape, low in (((64, 128), (8, 128)), ((128, 64), (128, 8))):
        opt, p, _ = one_step(torch.randn(shape), torch.randn(shape), rank=8)
        state = opt.state[p]
        assert state["exp_avg"].shape == low and state["exp_avg_sq"].shape == low
        assert state["projection"].shape == (8, 64)
    assert state_bytes(opt) < 0.2 * 2 * 64 * 128 * 4  # AdamW would hold two full 64x128 moments


def test_update_is_the_raw_gradient_times_a_channel_factor():
    grad = torch.randn(64, 128)
    opt, p, update = one_step(torch.zeros(64, 128), grad, rank=8)
    factor = update / grad
    # one factor per column (the 64 rows were projected away), equal to the paper's ratio
    assert torch.allclose(factor, factor[:1].expand_as(factor), rtol=1e-4)
    assert torch.allclose(factor[:1], expected_factor(opt, p, grad, channel_dim=0), rtol=1e-4)
    assert factor[:1].std() > 0  # really per channel, not one number


def test_rank_one_is_apollo_mini_one_factor_scaled_by_sqrt_d_over_r():
    grad = torch.randn(64, 128)
    opt, p, update = one_step(torch.zeros(64, 128), grad, rank=1)
    factor = update / grad
    assert torch.allclose(factor, factor[0, 0].expand_as(factor), rtol=1e-4)
    expected = expected_factor(opt, p, grad, channel_dim=None) * math.sqrt(64 / 1)
    assert torch.isclose(factor[0, 0], expected, rtol=1e-4)


def test_rank_one_update_of_a_64x128_weight_has_full_rank():
    _, _, update = one_step(torch.zeros(64, 128), torch.randn(64, 128), rank=1)
    assert torch.linalg.matrix_rank(update) == 64  # a projected-back update would have rank 1


def test_projection_is_seeded_and_refreshed_every_gap_steps():
    def projections(seed, steps=7, gap=3):
        torch.manual_seed(99)
        p = torch.nn.Parameter(torch.zeros(16, 32))
        opt = Apollo([p], lr=1e-3, rank=4, update_proj_gap=gap, seed=seed)
        seen = []
        for _ in range(steps):
            p.grad = torch.randn(16, 32)
            opt.step()
            seen.append(opt.state[p]["projection"].clone())
        return seen

    seen = projections(seed=1)
    assert torch.equal(seen[0], seen[1]) and torch.equal(seen[1], seen[2])  # steps 0-2 share one
    assert not torch.equal(seen[2], seen[3])  # redrawn at step 3
    assert torch.equal(seen[3], seen[5]) and not torch.equal(seen[5], seen[6])
    again = projections(seed=1)
    assert all(torch.equal(a, b) for a, b in zip(seen, again))
    assert not torch.equal(projections(seed=2)[0], seen[0])


def test_norm_growth_limiter_caps_growth_at_gamma():
    def run(limiter):
        torch.manual_seed(5)
        p = torch.nn.Parameter(torch.zeros(32, 48))
        opt = Apollo([p], lr=1.0, rank=4, limiter=limiter)
        grad, norms = torch.randn(32, 48), []
        for sign in (1, -1, -1, -1, -1):  # a reversal shrinks Adam's update; agreement then grows it
            before = p.detach().clone()
            p.grad = sign * grad
            opt.step()
            norms.append(float((p.detach() - before).norm()))
        return norms

    free = run(limiter=float("inf"))
    limited = run(limiter=1.01)
    assert free[2] > 5 * free[1]  # without the limiter the update norm jumps
    for a, b in zip(limited[1:], limited[2:]):
        assert a * 1.01 * (1 - 1e-4) <= b <= a * 1.01 * (1 + 1e-4)  # with it: exactly gamma per step


def test_weight_decay_is_decoupled():
    weight = torch.randn(16, 32)
    _, p, _ = one_step(weight, torch.zeros(16, 32), rank=2, weight_decay=0.1)
    assert torch.allclose(p.detach(), weight * (1 - 1e-3 * 0.1))  # zero gradient: only the decay


def test_parameters_that_are_not_matrices_get_plain_adamw():
    torch.manual_seed(3)
    a, b = torch.nn.Parameter(torch.randn(10)), torch.nn.Parameter(torch.randn(10))
    b.data.copy_(a.data)
    ours = Apollo([a], lr=1e-2, weight_decay=0.05, eps=1e-8)
    reference = torch.optim.AdamW([b], lr=1e-2, weight_decay=0.05, eps=1e-8)
    for _ in range(4):
        grad = torch.randn(10)
        a.grad, b.grad = grad.clone(), grad.clone()
        ours.step()
        reference.step()
    assert torch.allclose(a, b, atol=1e-7)


def test_a_bf16_projection_gives_the_fp32_factors_within_a_percent():
    """The projection matmul may run in bf16 (its main cost); the factors, ratios of norms, barely move."""
    grad = torch.randn(96, 160)
    for rank in (1, 16):
        _, _, exact = one_step(torch.zeros(96, 160), grad, rank=rank)
        opt, p, fast = one_step(torch.zeros(96, 160), grad, rank=rank, projection_dtype="bfloat16")
        assert opt.state[p]["projection"].dtype == torch.bfloat16
        assert opt.state[p]["exp_avg"].dtype == torch.float32  # the moments stay in the gradient's dtype
        assert torch.allclose(fast / grad, exact / grad, rtol=1e-2)


def test_projection_dtype_auto_follows_the_hardware(monkeypatch):
    from dreamd.trainers import device

    assert device.projection_dtype("float32", torch.device("cpu")) == "float32"
    monkeypatch.setattr(device, "_cpu_has_native_bf16", lambda: True)
    assert device.projection_dtype("auto", torch.device("cpu")) == "bfloat16"
    monkeypatch.setattr(device, "_cpu_has_native_bf16", lambda: False)
    assert device.projection_dtype("auto", torch.device("cpu")) is None  # the gradient's own dtype
    with pytest.raises(ValueError):
        Apollo([torch.nn.Parameter(torch.zeros(2, 2))], projection_dtype="float16")


@pytest.mark.parametrize("projection_dtype", [None, "bfloat16"])
def test_state_round_trips_through_safetensors_and_json(tmp_path, projection_dtype):
    from dreamd.trainers.checkpoints.weights import load_optimizer, save_optimizer

    def make():
        torch.manual_seed(0)
        return [torch.nn.Parameter(torch.randn(8, 12)), torch.nn.Parameter(torch.randn(12))]

    grads = [[torch.randn(8, 12), torch.randn(12)] for _ in range(6)]
    params = make()
    opt = Apollo(params, lr=1e-2, rank=2, update_proj_gap=2, projection_dtype=projection_dtype)
    for step, pair in enumerate(grads):
        for p, g in zip(params, pair):
            p.grad = g.clone()
        opt.step()
        if step == 2:
            save_optimizer(opt, ["w", "b"], tmp_path)
            saved = [p.detach().clone() for p in params]
    resumed = [torch.nn.Parameter(t.clone()) for t in saved]
    opt2 = Apollo(resumed, lr=1e-2, rank=2, update_proj_gap=2, projection_dtype=projection_dtype)
    assert load_optimizer(opt2, ["w", "b"], tmp_path)
    for pair in grads[3:]:
        for p, g in zip(resumed, pair):
            p.grad = g.clone()
        opt2.step()
    for a, b in zip(params, resumed):
        assert torch.equal(a, b)
    assert not load_optimizer(Apollo(make(), lr=1e-2), ["x", "y"], tmp_path)  # other parameters: refused


@pytest.mark.parametrize("bad", [dict(rank=0), dict(update_proj_gap=0), dict(lr=0)])
def test_bad_hyperparameters_are_refused(bad):
    with pytest.raises(ValueError):
        Apollo([torch.nn.Parameter(torch.zeros(2, 2))], **{"lr": 1e-3, **bad})


def test_a_zero_first_update_does_not_freeze_the_tensor():
    # LoRA's A matrices: PEFT starts B at zero, so A's first gradient is exactly zero. Its update
    # norm is then 0, and a limiter that caps at gamma x 0 would freeze A for good.
    torch.manual_seed(3)
    p = torch.nn.Parameter(torch.randn(16, 24))
    opt = Apollo([p], lr=0.1, rank=4)
    p.grad = torch.zeros(16, 24)
    opt.step()
    before = p.detach().clone()
    for _ in range(3):
        p.grad = torch.randn(16, 24)
        opt.step()
    assert (p.detach() - before).norm() > 1e-3


def test_a_lora_round_with_apollo_moves_every_a_and_b_matrix(tmp_path):
    from dreamd.trainers.examples import encode_examples
    from dreamd.trainers.round import start_trainer
    from dreamd.trainers.settings import TrainingSettings
    from tests.helpers.train import chats, state, tiny_loaded

    loaded = tiny_loaded()
    settings = TrainingSettings(mode="lora", optimizer="apollo", lora_learning_rate=1e-2, batch_size=2, epochs=2)
    trainer = start_trainer(loaded, settings, state(tmp_path))
    lora = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_" in n}
    assert any("lora_A" in n for n in lora) and any("lora_B" in n for n in lora)
    trainer.run(encode_examples(loaded.tokenizer, chats(6), settings.max_context_tokens))
    after = dict(trainer.model.named_parameters())
    frozen = [n for n, before in lora.items() if torch.equal(before, after[n].detach())]
    assert not frozen, f"tensors that never moved: {frozen}"
