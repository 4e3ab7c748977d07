"""Rectified flow: the paper's equations, and the single crossing to diffusers' convention."""

import torch

from mempack import flow


def test_one_step_estimate_is_exact_for_the_true_velocity():
    g = torch.Generator().manual_seed(0)
    x, eps = torch.randn(2, 16, 9, 4, 4, generator=g), torch.randn(2, 16, 9, 4, 4, generator=g)
    t = torch.tensor([0.2, 0.9])
    x_t = flow.interpolate(x, eps, t)
    x_tilde = flow.one_step_estimate(x_t, flow.velocity_target(x, eps), t)
    assert torch.allclose(x_tilde, x, atol=1e-6)


def test_interpolation_endpoints_are_noise_and_data():
    x, eps = torch.ones(1, 2, 1, 1, 1), torch.zeros(1, 2, 1, 1, 1)
    assert torch.equal(flow.interpolate(x, eps, 0.0), eps)
    assert torch.equal(flow.interpolate(x, eps, 1.0), x)


def test_euler_integration_of_exact_velocity_lands_on_data():
    g = torch.Generator().manual_seed(1)
    x, eps = torch.randn(1, 4, 3, 2, 2, generator=g), torch.randn(1, 4, 3, 2, 2, generator=g)
    times = flow.sampling_times(7, mu=0.8)
    z = eps.clone()
    for t, t_next in zip(times[:-1].tolist(), times[1:].tolist(), strict=True):
        # the exact field of the straight path through (eps, x): v(z, t) = x - eps
        z = flow.euler_step(z, flow.velocity_target(x, eps), t, t_next)
    assert torch.allclose(z, x, atol=1e-5)


def test_backbone_conversion_matches_diffusers_convention():
    t = torch.tensor([0.0, 0.25, 1.0])
    assert torch.allclose(flow.to_backbone_timestep(t), torch.tensor([1000.0, 750.0, 0.0]))
    x, eps = torch.randn(3), torch.randn(3)
    # diffusers' flow-matching models predict eps - x; the paper's target is x - eps
    assert torch.allclose(flow.velocity_from_backbone(eps - x), flow.velocity_target(x, eps))


def test_sampling_times_run_from_noise_to_data_and_shift_towards_noise():
    plain, shifted = flow.sampling_times(10), flow.sampling_times(10, mu=1.0)
    assert plain[0] == 0 and plain[-1] == 1 and torch.all(plain[1:] > plain[:-1])
    assert shifted[0] == 0 and shifted[-1] == 1
    assert torch.all(shifted[1:-1] < plain[1:-1])  # more steps spent at high noise


def test_training_times_are_in_range_and_shifted():
    g = torch.Generator().manual_seed(0)
    t = flow.sample_training_times(4000, shift=3.0, generator=g)
    assert t.min() > 0 and t.max() < 1
    g = torch.Generator().manual_seed(0)
    unshifted = flow.sample_training_times(4000, shift=1.0, generator=g)
    assert abs(unshifted.mean().item() - 0.5) < 0.02
    assert t.mean() < unshifted.mean() - 0.1
