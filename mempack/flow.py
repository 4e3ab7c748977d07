"""Rectified flow in the paper's convention, and the one conversion to diffusers' convention.

Paper (eq. 3-5, 7): x_t = t·x + (1−t)·ε with t = 1 the data, target velocity u = x − ε, and the
Direct Forcing one-step estimate x̃ = x_t + (1−t)·v. diffusers' FramePack transformer instead takes
`timestep = 1000·σ` with σ = 1 − t and predicts ε − x. Everything outside this module speaks the
paper's convention; `to_backbone_timestep` and `velocity_from_backbone` are the only crossings.
"""

from __future__ import annotations

import math

import torch


def _expand(t: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    """Broadcast a per-sample time [B] (or a scalar) over a latent [B, C, T, H, W]."""
    t = torch.as_tensor(t, dtype=like.dtype, device=like.device)
    if t.ndim == 0:
        return t
    return t.reshape(-1, *([1] * (like.ndim - 1)))


def interpolate(x: torch.Tensor, noise: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
    """x_t = t·x + (1−t)·ε (eq. 3)."""
    t = _expand(t, x)
    return t * x + (1 - t) * noise


def velocity_target(x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """u = x − ε (eq. 4): constant along the straight path from noise to data."""
    return x - noise


def one_step_estimate(x_t: torch.Tensor, velocity: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
    """x̃ = x_t + (1−t)·v (eq. 7): the clean estimate Direct Forcing conditions the next clip on."""
    return x_t + (1 - _expand(t, x_t)) * velocity


def euler_step(x_t: torch.Tensor, velocity: torch.Tensor, t: float, t_next: float) -> torch.Tensor:
    """One Euler step of dx/dt = v from t to t_next."""
    return x_t + (t_next - t) * velocity


def to_backbone_timestep(t: torch.Tensor) -> torch.Tensor:
    """Paper time t → diffusers' FramePack `timestep` = 1000·σ, σ = 1 − t."""
    return (1 - t) * 1000.0


def velocity_from_backbone(prediction: torch.Tensor) -> torch.Tensor:
    """diffusers predicts ε − x; the paper's velocity is its negative."""
    return -prediction


def shift_sigma(sigma: torch.Tensor, shift: float) -> torch.Tensor:
    """SD3/Flux-style shift σ' = s·σ / (1 + (s−1)·σ): more time at high noise for large latents."""
    return shift * sigma / (1 + (shift - 1) * sigma)


def sample_training_times(
    batch_size: int,
    *,
    shift: float = 3.0,
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Training times t ∈ (0, 1): σ ~ shifted logit-normal, t = 1 − σ.

    Logit-normal concentrates samples at mid noise levels, and the shift moves them towards noise,
    as HunyuanVideo / FramePack trainers do (musubi-tuner's default shift is 3 for this model).
    """
    normal = torch.randn(batch_size, generator=generator, device="cpu") * logit_std + logit_mean
    sigma = shift_sigma(torch.sigmoid(normal), shift)
    return (1 - sigma).clamp(1e-4, 1 - 1e-4).to(device)


def dynamic_shift_mu(
    image_seq_len: int,
    base_len: int = 256,
    max_len: int = 4096,
    base_shift: float = 0.5,
    max_shift: float = 1.15,
    cap: float = math.log(7.0),
) -> float:
    """Resolution-dependent shift exponent μ, as the F1 sampler computes it (capped at log 7)."""
    slope = (max_shift - base_shift) / (max_len - base_len)
    return min(image_seq_len * slope + base_shift - slope * base_len, cap)


def sampling_times(steps: int, mu: float | None = None) -> torch.Tensor:
    """The t grid for `steps` Euler steps from noise (t=0) to data (t=1), length steps + 1.

    σ runs linearly from 1 to 0; with μ given it is warped by σ' = e^μ / (e^μ + 1/σ − 1), the
    exponential time shift of diffusers' FlowMatchEulerDiscreteScheduler with dynamic shifting.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    sigma = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    if mu is not None:
        inner = sigma[:-1]
        sigma = torch.cat([math.exp(mu) / (math.exp(mu) + (1 / inner - 1)), sigma[-1:]])
    return (1 - sigma).to(torch.float32)
