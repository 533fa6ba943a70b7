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
# Kept by name in the parameter groups (they are saved as JSON with a checkpoint); None: the gradient's.
PROJECTION_DTYPES = ("float32", "bfloat16")


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
        projection_dtype: str | None = None,
    ):
        if rank < 1 or update_proj_gap < 1 or lr <= 0:
            raise ValueError("APOLLO needs rank >= 1, update_proj_gap >= 1 and lr > 0")
        if projection_dtype not in (None, *PROJECTION_DTYPES):
            raise ValueError(f"projection_dtype must be one of {PROJECTION_DTYPES} or None, not {projection_dtype!r}")
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, rank=rank,
                        update_proj_gap=update_proj_gap, scale=scale, seed=seed, limiter=limiter,
                        projection_dtype=projection_dtype)
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
        direction, scale = _adam_direction(state, grad, group)
        p.mul_(1 - group["lr"] * group["weight_decay"])
        p.add_(direction, alpha=-group["lr"] * scale)

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
        low = self._project(state, grad, left, group)
        state["step"] += 1
        direction, scale = _adam_direction(state, low, group)  # Adam's normalized update / scale

        if rank == 1:  # APOLLO-Mini: one factor for the whole tensor, scaled by sqrt(d / r)
            factor = direction.norm() * scale / (low.norm() + 1e-8)
            alpha = group["scale"] if group["scale"] is not None else math.sqrt(dim / rank)
            factor = factor * alpha
        else:  # one factor per channel (column when the rows were projected, else row)
            channel_dim = 0 if left else 1
            factor = _channel_norms(direction, channel_dim) * scale / (_channel_norms(low, channel_dim) + 1e-8)
            if group["scale"] is not None:
                factor = factor * group["scale"]
        # The update is grad * factor: the raw full-rank gradient, only rescaled. It is never
        # materialised: its norm (for the limiter) comes from the gradient's channel norms, and
        # the limiter's correction folds into the factor, so the weights take one fused pass.
        if rank == 1:
            norm = factor * grad.norm()
        else:
            norm = (factor * _channel_norms(grad, channel_dim)).norm()
        if "last_norm" in state:  # at most `limiter` times the previous step's norm (no host sync)
            last = state["last_norm"]
            # A previous norm of zero is no reference to grow from: LoRA's A matrices get an exactly
            # zero first gradient (PEFT starts B at zero), and capping at 1.01 x 0 froze them for good.
            shrink = torch.where(last > 0, (group["limiter"] * last / norm).clamp(max=1.0), torch.ones_like(norm))
            factor, norm = factor * shrink, norm * shrink
        state["last_norm"] = norm.reshape(())

        if group["weight_decay"]:
            p.mul_(1 - group["lr"] * group["weight_decay"])
        p.addcmul_(grad, factor, value=-group["lr"])

    @staticmethod
    def _project(state: dict, grad: torch.Tensor, left: bool, group: dict) -> torch.Tensor:
        """The rank-r projection of the gradient, in the moments' dtype.

        The matmul runs in `projection_dtype` (bf16 where the hardware multiplies it natively):
        it is most of APOLLO's cost (2·r·m·n flops per matrix), and its result only feeds the
        scaling factors, ratios of norms that bf16's 8-bit mantissa moves by well under 1%.
        """
        wanted = _dtype(group, grad)
        projection = state["projection"]
        if projection.dtype != wanted:  # a resumed state comes back in the parameter's dtype
            projection = state["projection"] = projection.to(wanted)
        source = grad.to(wanted)
        low = projection @ source if left else source @ projection.T
        return low.to(grad.dtype)

    def _draw_projection(self, p, group, rank: int, dim: int, refresh: int) -> torch.Tensor:
        generator = torch.Generator(device="cpu")
        generator.manual_seed((group["seed"] * 1_000_003 + self._number[p] * 10_007 + refresh) % (2**63))
        draw = torch.randn((rank, dim), generator=generator, dtype=torch.float32) / math.sqrt(rank)
        return draw.to(device=p.device, dtype=_dtype(group, p))


def _channel_norms(grad: torch.Tensor, channel_dim: int) -> torch.Tensor:
    """Norms of the gradient's channels, shaped to broadcast against it. Reducing over rows
    (channels are columns) through torch's norm is several times slower on CPU than squaring and
    summing, so that case takes the longer road."""
    if channel_dim == 1:
        return torch.linalg.vector_norm(grad, dim=1, keepdim=True)
    return grad.square().sum(dim=0, keepdim=True).sqrt()


def _dtype(group: dict, like: torch.Tensor) -> torch.dtype:
    name = group.get("projection_dtype")
    return getattr(torch, name) if name else like.dtype


def _adam_direction(state: dict, grad: torch.Tensor, group: dict) -> tuple[torch.Tensor, float]:
    """Adam's bias-corrected update m^ / (sqrt(v^) + eps), returned as (direction, scale) with the
    update = scale * direction. Since m^ = m / bc1 and v^ = v / bc2, the update equals
    (sqrt(bc2) / bc1) * m / (sqrt(v) + eps * sqrt(bc2)): the corrections fold into eps and one
    scalar, so the tensor takes six passes, not eight. This is most of APOLLO's elementwise work."""
    beta1, beta2 = group["betas"]
    step = state["step"].item()
    bias1, bias2_sqrt = 1 - beta1**step, math.sqrt(1 - beta2**step)
    state["exp_avg"].lerp_(grad, 1 - beta1)
    state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    denom = state["exp_avg_sq"].sqrt().add_(group["eps"] * bias2_sqrt)
    return torch.div(state["exp_avg"], denom, out=denom), bias2_sqrt / bias1


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of every tensor the optimizer holds as state (what a checkpoint must save)."""
    return sum(
        value.numel() * value.element_size()
        for per_param in optimizer.state.values()
        for value in per_param.values()
        if torch.is_tensor(value)
    )
