"""APOLLO (Zhu et al. 2024, "APOLLO: SGD-like Memory, AdamW-level Performance", arXiv 2412.05270).

For each 2-D weight G (m x n) the optimizer keeps Adam's moments only for a random projection of
the gradient to rank r along the smaller dimension d = min(m, n):

    R = P G (or G P^T)          P ~ N(0, 1/r), r x d, seeded, redrawn every `update_proj_gap` steps
    M, V = Adam moments of R    (bias-corrected)
    N = M / (sqrt(V) + eps)     the update Adam would make in the low-rank space
    s = ||N|| / ||R||           per channel (rank > 1) or per tensor (rank 1, APOLLO-Mini)
    update = G * s              THE RAW FULL-RANK GRADIENT, scaled: not a projected-back rank-r step
    W <- W - lr * limit(alpha * update) - lr * weight_decay * W

`limit` is the norm-growth limiter (from Fira): an update whose norm grew by more than gamma = 1.01
over the previous step's is scaled back to gamma times that. APOLLO-Mini scales by
alpha = sqrt(d / r): a rank-r projection of Adam-normalized entries has about sqrt(r/d) of the
full-rank norm, and alpha restores AdamW's update size so the same learning rate works.
Parameters that are not 2-D (norms, biases) get plain AdamW. Only a (r x max(m, n)) pair of moments,
the projection and one scalar live per matrix: with rank 1 about 2/min(m, n) of AdamW's state.

Why not a library: pytorch_optimizer's APOLLO scales the projected gradient and projects it back
(a rank-r update, not the paper's), and apollo-torch imports bitsandbytes on import.
"""

from __future__ import annotations

import math

import torch

GAMMA = 1.01  # norm-growth limiter: an update's norm may grow at most 1% per step


class Apollo(torch.optim.Optimizer):
    def __init__(
        self,
        params,
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
        rank: int = 1,
        update_proj_gap: int = 200,
        scale: float | None = None,
        seed: int = 0,
        limiter: float = GAMMA,
    ):
        if rank < 1 or update_proj_gap < 1 or lr <= 0:
            raise ValueError("APOLLO needs rank >= 1, update_proj_gap >= 1 and lr > 0")
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, rank=rank,
                        update_proj_gap=update_proj_gap, scale=scale, seed=seed, limiter=limiter)
        super().__init__(params, defaults)
        # A stable number per parameter seeds its projection, so a resumed run redraws the same one.
        self._number = {p: i for i, p in enumerate(p for g in self.param_groups for p in g["params"])}

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("APOLLO does not support sparse gradients")
                if p.dim() == 2:
                    self._apollo_update(p, group)
                else:
                    self._adamw_update(p, group)
        return loss

    def _adamw_update(self, p: torch.Tensor, group: dict) -> None:
        grad, state = p.grad, self.state[p]
        if not state:
            state["step"] = torch.zeros((), dtype=torch.float32)
            state["exp_avg"] = torch.zeros_like(p)
            state["exp_avg_sq"] = torch.zeros_like(p)
        state["step"] += 1
        normalized = _adam_normalized(state, grad, group)
        p.mul_(1 - group["lr"] * group["weight_decay"])
        p.add_(normalized, alpha=-group["lr"])

    def _apollo_update(self, p: torch.Tensor, group: dict) -> None:
        grad, state = p.grad, self.state[p]
        rows, cols = grad.shape
        left = rows <= cols  # project the smaller dimension away; channels are the other one
        dim = rows if left else cols
        rank = min(group["rank"], dim)
        if not state:
            state["step"] = torch.zeros((), dtype=torch.float32)
            low_shape = (rank, cols) if left else (rows, rank)
            state["exp_avg"] = torch.zeros(low_shape, dtype=grad.dtype, device=grad.device)
            state["exp_avg_sq"] = torch.zeros(low_shape, dtype=grad.dtype, device=grad.device)
        step = int(state["step"].item())
        if step % group["update_proj_gap"] == 0 or "projection" not in state:
            state["projection"] = self._draw_projection(p, group, rank, dim, step // group["update_proj_gap"])
        projection = state["projection"]
        low = projection @ grad if left else grad @ projection.T
        state["step"] += 1
        normalized = _adam_normalized(state, low, group)

        if rank == 1:  # APOLLO-Mini: one factor for the whole tensor, scaled by sqrt(d / r)
            factor = normalized.norm() / (low.norm() + 1e-8)
            alpha = group["scale"] if group["scale"] is not None else math.sqrt(dim / rank)
            factor = factor * alpha
        else:  # one factor per channel (column when the rows were projected, else row)
            channel_dim = 0 if left else 1
            factor = normalized.norm(dim=channel_dim, keepdim=True) / (low.norm(dim=channel_dim, keepdim=True) + 1e-8)
            if group["scale"] is not None:
                factor = factor * group["scale"]
        update = grad * factor  # full rank: the raw gradient, only rescaled

        norm = update.norm()
        if "last_norm" in state:
            ceiling = group["limiter"] * state["last_norm"]
            if norm > ceiling:
                update = update * (ceiling / norm)
                norm = ceiling
        state["last_norm"] = norm.reshape(())

        p.mul_(1 - group["lr"] * group["weight_decay"])
        p.add_(update, alpha=-group["lr"])

    def _draw_projection(self, p, group, rank: int, dim: int, refresh: int) -> torch.Tensor:
        generator = torch.Generator(device="cpu")
        generator.manual_seed((group["seed"] * 1_000_003 + self._number[p] * 10_007 + refresh) % (2**63))
        draw = torch.randn((rank, dim), generator=generator, dtype=torch.float32) / math.sqrt(rank)
        return draw.to(device=p.device, dtype=p.dtype)


def _adam_normalized(state: dict, grad: torch.Tensor, group: dict) -> torch.Tensor:
    beta1, beta2 = group["betas"]
    state["exp_avg"].mul_(beta1).add_(grad, alpha=1 - beta1)
    state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    step = state["step"].item()
    corrected_avg = state["exp_avg"] / (1 - beta1**step)
    corrected_sq = state["exp_avg_sq"] / (1 - beta2**step)
    return corrected_avg / (corrected_sq.sqrt() + group["eps"])


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of every tensor the optimizer holds as state (what a checkpoint must save)."""
    return sum(
        value.numel() * value.element_size()
        for per_param in optimizer.state.values()
        for value in per_param.values()
        if torch.is_tensor(value)
    )
