"""The gradient defences of `mjp_hf.training.defenses`, each against an independent computation: the norm after
clipping, the noise's scale by the sample std of many draws (within a bound from the number of draws), the pruned
share and that the kept entries are the largest, ε against the closed form at sampling rate 1, and Opacus' own
DP-SGD step on the same per-sample gradients."""

import json
import math
import sys
from fractions import Fraction

import pytest
import torch

from mjp_hf.training.defenses import (
    DEFENSE_KINDS,
    Defense,
    clip_and_noise,
    default_delta,
    dp_sgd,
    dp_sgd_epsilon,
    gaussian_mechanism_noise_multiplier,
    history_epsilon,
    noise_multiplier_for_epsilon,
    prune,
    pruned_count,
)


def _gradients(seed=0, scale=1.0):
    generator = torch.Generator().manual_seed(seed)
    return {
        "weight": scale * torch.randn(6, 5, generator=generator),
        "bias": scale * torch.randn(5, generator=generator),
        "scalar": scale * torch.randn((), generator=generator),
    }


def _flat(gradients):
    values = gradients.values() if isinstance(gradients, dict) else gradients
    return torch.cat([tensor.reshape(-1).double() for tensor in values])


def _generator(seed=0):
    return torch.Generator().manual_seed(seed)


# --- the noise check, and that it catches a noise 5% off ---------------------------------------------------------

# A bound of this many standard errors: a correct noise fails it with probability ~6e-7 per check.
STANDARD_ERRORS = 5.0


def assert_gaussian_noise(samples: torch.Tensor, std: float) -> None:
    """`samples` (independent draws) have mean 0 and standard deviation `std`, within STANDARD_ERRORS standard errors
    of each estimate for this many draws: the mean's is std / sqrt(n), the sample std's is about std / sqrt(2 (n - 1))
    (normal data)."""
    samples = samples.reshape(-1).double()
    n = samples.numel()
    mean, sample_std = samples.mean().item(), samples.std().item()
    assert abs(mean) <= STANDARD_ERRORS * std / math.sqrt(n), (mean, std, n)
    assert abs(sample_std - std) <= STANDARD_ERRORS * std / math.sqrt(2 * (n - 1)), (sample_std, std, n)


def test_the_noise_check_rejects_noise_five_percent_off_and_a_shifted_mean():
    draws = torch.randn(40_000, generator=_generator(7))
    assert_gaussian_noise(draws * 2.0, 2.0)
    with pytest.raises(AssertionError):
        assert_gaussian_noise(draws * 2.1, 2.0)  # 5% too large: 5 standard errors are 1.8% at n = 40,000
    with pytest.raises(AssertionError):
        assert_gaussian_noise(draws * 1.9, 2.0)
    with pytest.raises(AssertionError):
        assert_gaussian_noise(draws * 2.0 + 0.06, 2.0)  # 0.06 is 6 standard errors of the mean


# --- local noise (clip_and_noise) ---------------------------------------------------------------------------------


def test_clip_and_noise_scales_a_large_update_to_norm_c_along_its_direction():
    gradients = _gradients(scale=10.0)
    norm = _flat(gradients).norm().item()
    assert norm > 3.0
    clipped = clip_and_noise(gradients, max_norm=3.0, noise_multiplier=0.0)
    assert clipped.keys() == gradients.keys()
    assert _flat(clipped).norm().item() == pytest.approx(3.0, rel=1e-6)
    for name, tensor in gradients.items():
        torch.testing.assert_close(clipped[name], tensor * (3.0 / norm), rtol=1e-6, atol=0)
        assert clipped[name].dtype == tensor.dtype and clipped[name].shape == tensor.shape
    # The input is left as it was.
    torch.testing.assert_close(_flat(gradients).norm().item(), norm)


def test_clip_and_noise_leaves_an_update_within_the_norm_unchanged():
    gradients = _gradients(scale=0.1)
    assert _flat(gradients).norm().item() < 3.0
    clipped = clip_and_noise(list(gradients.values()), max_norm=3.0, noise_multiplier=0.0)
    assert isinstance(clipped, list)
    for before, after in zip(gradients.values(), clipped):
        assert torch.equal(before, after)


def test_clip_and_noise_adds_noise_of_std_sigma_c_after_clipping():
    sigma, max_norm = 0.7, 2.0
    # A large update on 20,000 coordinates: the noise must not be scaled by the clipping factor (1e-3 here).
    gradients = {"a": torch.full((100, 150), 20.0), "b": torch.full((5000,), -20.0)}
    factor = max_norm / _flat(gradients).norm().item()
    defended = clip_and_noise(gradients, max_norm, sigma, _generator(3))
    noise = _flat(defended) - _flat(gradients) * factor
    assert_gaussian_noise(noise, sigma * max_norm)


def test_clip_and_noise_over_many_draws_of_one_coordinate():
    """The std over draws (not over coordinates): 4,000 draws of a 3-coordinate update from one generator."""
    generator = _generator(11)
    gradients = [torch.tensor([0.3, -0.1, 0.2])]
    draws = torch.stack([clip_and_noise(gradients, 1.5, 0.4, generator)[0] for _ in range(4000)])
    for coordinate in range(3):
        assert_gaussian_noise(draws[:, coordinate] - gradients[0][coordinate], 0.4 * 1.5)


def test_the_same_generator_state_gives_the_same_defended_gradient():
    gradients = _gradients()
    first = clip_and_noise(gradients, 1.0, 1.0, _generator(5))
    second = clip_and_noise(gradients, 1.0, 1.0, _generator(5))
    other = clip_and_noise(gradients, 1.0, 1.0, _generator(6))
    for name in gradients:
        assert torch.equal(first[name], second[name])
        assert not torch.equal(first[name], other[name])


def test_noise_needs_a_generator_and_bad_clipping_is_refused():
    with pytest.raises(ValueError, match="pass a torch.Generator"):
        clip_and_noise(_gradients(), 1.0, 1.0)
    with pytest.raises(ValueError, match=r"max_norm=0 must be a finite number > 0"):
        clip_and_noise(_gradients(), 0, 0.0)
    with pytest.raises(ValueError, match=r"noise_multiplier=-0.5 must be a finite number >= 0"):
        dp_sgd({"a": torch.ones(2, 3)}, 1.0, -0.5)
    with pytest.raises(TypeError, match="not a floating-point tensor"):
        clip_and_noise({"a": torch.ones(3, dtype=torch.long)}, 1.0, 0.0)


def test_half_precision_gradients_keep_their_dtype():
    gradients = {name: tensor.to(torch.bfloat16) for name, tensor in _gradients(scale=10.0).items()}
    defended = clip_and_noise(gradients, 1.0, 0.5, _generator())
    assert all(defended[name].dtype == torch.bfloat16 for name in gradients)


# --- DP-SGD -------------------------------------------------------------------------------------------------------


def _per_sample(batch=5, seed=1):
    generator = torch.Generator().manual_seed(seed)
    # Example norms from ~0.3 to ~30, so that some are clipped and some not.
    scales = torch.logspace(-1, 1, batch).reshape(batch, 1, 1)
    return {
        "weight": scales * torch.randn(batch, 4, 3, generator=generator),
        "bias": scales.reshape(batch, 1) * torch.randn(batch, 3, generator=generator),
    }


def _independent_dp_sgd_mean(per_sample, max_norm, divisor):
    """Per example: its gradient over all tensors, scaled to norm at most C; then the sum over the batch / divisor."""
    batch = next(iter(per_sample.values())).shape[0]
    total = None
    for index in range(batch):
        example = torch.cat([tensor[index].reshape(-1).double() for tensor in per_sample.values()])
        clipped = example * (max_norm / max(example.norm().item(), max_norm))
        total = clipped if total is None else total + clipped
    return total / divisor


def test_dp_sgd_clips_every_example_then_averages():
    per_sample = _per_sample()
    norms = torch.stack([torch.cat([t[i].reshape(-1) for t in per_sample.values()]).norm() for i in range(5)])
    assert (norms < 1.0).any() and (norms > 1.0).any()  # some examples are clipped, some not
    expected = _independent_dp_sgd_mean(per_sample, max_norm=1.0, divisor=5)
    defended = dp_sgd(per_sample, max_norm=1.0, noise_multiplier=0.0)
    assert defended["weight"].shape == (4, 3) and defended["bias"].shape == (3,)
    torch.testing.assert_close(_flat(defended), expected, rtol=1e-5, atol=1e-7)
    # Opacus divides by the expected batch size of its Poisson batches, not by the batch's own size.
    expected_7 = _independent_dp_sgd_mean(per_sample, max_norm=1.0, divisor=7)
    torch.testing.assert_close(
        _flat(dp_sgd(per_sample, 1.0, 0.0, expected_batch_size=7)), expected_7, rtol=1e-5, atol=1e-7
    )


def test_dp_sgd_without_noise_and_with_a_norm_no_example_reaches_is_the_batch_mean():
    """What makes an attack on a DP-SGD gradient at σ = 0 and a large C the undefended attack."""
    per_sample = _per_sample()
    defended = dp_sgd(per_sample, max_norm=1e6, noise_multiplier=0.0)
    for name, tensor in per_sample.items():
        torch.testing.assert_close(defended[name], tensor.mean(dim=0), rtol=1e-6, atol=1e-7)
    local = clip_and_noise({name: tensor.mean(dim=0) for name, tensor in per_sample.items()}, 1e6, 0.0)
    assert all(torch.equal(local[name], per_sample[name].mean(dim=0)) for name in per_sample)


def test_dp_sgd_noise_has_std_sigma_c_over_the_batch_size():
    sigma, max_norm, batch = 1.3, 0.5, 4
    per_sample = {"a": torch.zeros(batch, 120, 100), "b": torch.zeros(batch, 3000)}
    defended = dp_sgd(per_sample, max_norm, sigma, _generator(2))
    assert_gaussian_noise(_flat(defended), sigma * max_norm / batch)


def test_dp_sgd_at_batch_one_is_clip_and_noise_with_the_same_draws():
    per_sample = {name: tensor[3:4] for name, tensor in _per_sample().items()}
    one = {name: tensor[0] for name, tensor in per_sample.items()}
    assert _flat(one).norm().item() > 1.0
    by_dp_sgd = dp_sgd(per_sample, 1.0, 2.0, _generator(9))
    by_local_noise = clip_and_noise(one, 1.0, 2.0, _generator(9))
    for name in one:  # equal up to Opacus' 1e-6 in the clipping denominator
        torch.testing.assert_close(by_dp_sgd[name], by_local_noise[name], rtol=1e-5, atol=1e-6)


def test_dp_sgd_of_an_empty_batch_is_noise_alone():
    defended = dp_sgd({"a": torch.zeros(0, 5000)}, 2.0, 1.0, _generator(), expected_batch_size=4)
    assert defended["a"].shape == (5000,)
    assert_gaussian_noise(defended["a"], 1.0 * 2.0 / 4)
    with pytest.raises(ValueError, match="empty batch needs it"):
        dp_sgd({"a": torch.zeros(0, 5)}, 2.0, 1.0, _generator())


def test_dp_sgd_refuses_tensors_of_different_batch_sizes():
    with pytest.raises(ValueError, match="same leading batch dimension"):
        dp_sgd({"a": torch.ones(3, 2), "b": torch.ones(4, 2)}, 1.0, 0.0)


def test_dp_sgd_equals_opacus_dp_optimizer_on_the_same_per_sample_gradients():
    """What the audit attacks is what an Opacus-trained client sends: Opacus' own clipping, summing and scaling."""
    from opacus.optimizers import DPOptimizer

    per_sample = _per_sample(batch=6)
    parameters = [torch.nn.Parameter(torch.zeros(tensor.shape[1:])) for tensor in per_sample.values()]
    for parameter, grad_sample in zip(parameters, per_sample.values()):
        parameter.grad_sample = grad_sample.clone()
    optimizer = DPOptimizer(
        torch.optim.SGD(parameters, lr=1.0), noise_multiplier=0.0, max_grad_norm=0.8, expected_batch_size=6
    )
    optimizer.pre_step()
    defended = dp_sgd(per_sample, 0.8, 0.0)
    for parameter, name in zip(parameters, per_sample):
        torch.testing.assert_close(parameter.grad, defended[name], rtol=1e-6, atol=1e-8)


# --- pruning ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ratio", [0.0, 0.1, 0.29, 0.5, 0.9, 0.99])
def test_prune_zeroes_the_smallest_share_and_keeps_the_largest_as_they_are(ratio):
    generator = _generator(4)
    # Continuous values: no ties, no zeros, so every kept entry is non-zero.
    gradients = {"w": torch.randn(10, 10, generator=generator), "b": torch.randn(7, generator=generator)}
    pruned = prune(gradients, ratio)
    for name, tensor in gradients.items():
        numel = tensor.numel()
        zeroed = math.floor(Fraction(str(ratio)) * numel)  # exact arithmetic: 0.29 * 100 is 29
        kept = pruned[name] != 0
        assert int(kept.sum()) == numel - zeroed
        assert torch.equal(pruned[name][kept], tensor[kept])
        if zeroed:
            assert tensor[kept].abs().min() > tensor[~kept].abs().max()


def test_prune_breaks_ties_by_position_and_keeps_one_entry_at_least():
    tied = torch.tensor([1.0, -2.0, 2.0, -2.0, 2.0, 0.5])
    # 0.5 of 6: 3 kept; the four of magnitude 2 tie for the 3 places, the first three by position win.
    assert torch.equal(prune([tied], 0.5)[0], torch.tensor([0.0, -2.0, 2.0, -2.0, 0.0, 0.0]))
    assert int((prune([torch.randn(3)], 0.99)[0] != 0).sum()) == 1
    assert pruned_count(100, 0.29) == 29 and pruned_count(3, 0.5) == 1 and pruned_count(10, 0.0) == 0


@pytest.mark.parametrize("ratio", [1.0, -0.1, float("nan"), "0.5", True])
def test_prune_refuses_a_ratio_outside_zero_one(ratio):
    with pytest.raises(ValueError, match="prune_ratio=.* must be in \\[0, 1\\)"):
        prune([torch.ones(3)], ratio)


# --- the Defense record ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(kind="dpsgd"), "kind 'dpsgd' is unknown: choose one of none, dp_sgd, local_noise, prune"),
        (dict(kind="dp_sgd", max_grad_norm=1.0), "'dp_sgd' needs noise_multiplier .*e.g. noise_multiplier=1.0"),
        (dict(kind="local_noise", noise_multiplier=1.0), "'local_noise' needs max_grad_norm .*max_grad_norm=1.0"),
        (dict(kind="prune"), "'prune' needs prune_ratio"),
        (dict(kind="prune", prune_ratio=0.5, noise_multiplier=1.0), "'prune' takes no noise_multiplier .*drop it"),
        (dict(kind="none", prune_ratio=0.5), "'none' takes no prune_ratio .*choose kind 'prune'"),
        (
            dict(kind="dp_sgd", noise_multiplier=1.0, max_grad_norm=0.0),
            "max_grad_norm=0.0 must be a finite number > 0",
        ),
        (dict(kind="dp_sgd", noise_multiplier=math.inf, max_grad_norm=1.0), "noise_multiplier=inf must be a finite"),
        (dict(kind="prune", prune_ratio=1.5), "prune_ratio=1.5 must be in"),
    ],
)
def test_a_bad_defense_is_refused_naming_the_field_and_the_fix(fields, message):
    with pytest.raises(ValueError, match=message):
        Defense(**fields)


def test_a_defense_round_trips_through_json_and_applies_its_function():
    gradients = _gradients(scale=10.0)
    for defense in (
        Defense(),
        Defense("dp_sgd", noise_multiplier=1, max_grad_norm=2),
        Defense("local_noise", noise_multiplier=0.5, max_grad_norm=1.0),
        Defense("prune", prune_ratio=0.9),
    ):
        record = json.loads(json.dumps(defense.to_dict()))
        assert Defense.from_dict(record) == defense
        assert set(record) == {"kind", *DEFENSE_KINDS[defense.kind]}
        assert defense.describe()
    assert Defense("dp_sgd", noise_multiplier=1, max_grad_norm=2).to_dict() == {
        "kind": "dp_sgd",
        "noise_multiplier": 1.0,
        "max_grad_norm": 2.0,
    }
    local = Defense("local_noise", noise_multiplier=0.5, max_grad_norm=1.0).apply(gradients, generator=_generator(1))
    expected = clip_and_noise(gradients, 1.0, 0.5, _generator(1))
    assert all(torch.equal(local[name], expected[name]) for name in gradients)
    assert torch.equal(Defense("prune", prune_ratio=0.9).apply(gradients)["weight"], prune(gradients, 0.9)["weight"])
    undefended = Defense().apply(gradients)
    assert all(torch.equal(undefended[name], gradients[name]) for name in gradients)
    with pytest.raises(ValueError, match="pass per_sample_gradients"):
        Defense("dp_sgd", noise_multiplier=1, max_grad_norm=2).apply(gradients)
    with pytest.raises(ValueError, match="unknown fields \\['sigma'\\]"):
        Defense.from_dict({"kind": "dp_sgd", "sigma": 1.0})


def test_flowers_epsilon_delta_map_to_the_gaussian_mechanisms_sigma():
    assert gaussian_mechanism_noise_multiplier(0.5, 1e-5) == pytest.approx(math.sqrt(2 * math.log(1.25e5)) / 0.5)
    with pytest.raises(ValueError, match="epsilon < 1"):
        gaussian_mechanism_noise_multiplier(2.0, 1e-5)


# --- ε (Opacus' RDP accountant) -------------------------------------------------------------------------------------


def _closed_form_epsilon(sigma, steps, delta):
    """Without subsampling (rate 1) the Gaussian mechanism's RDP is alpha / (2 sigma^2) a step (Mironov 2017);
    converted to (ε, δ) by Balle et al. 2020 (Thm 21), minimised over Opacus' default orders."""
    orders = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))
    return min(
        steps * alpha / (2 * sigma**2)
        - (math.log(delta) + math.log(alpha)) / (alpha - 1)
        + math.log((alpha - 1) / alpha)
        for alpha in orders
    )


@pytest.mark.parametrize("sigma, steps", [(1.0, 10), (3.0, 200), (8.0, 1000)])
def test_epsilon_at_sampling_rate_one_is_the_closed_form(sigma, steps):
    assert dp_sgd_epsilon(sigma, 1.0, steps, 1e-5) == pytest.approx(_closed_form_epsilon(sigma, steps, 1e-5), rel=1e-9)


def test_epsilon_of_a_subsampled_run_matches_an_accountant_stepped_once_a_step():
    from opacus.accountants import RDPAccountant

    accountant = RDPAccountant()
    for _ in range(500):
        accountant.step(noise_multiplier=1.1, sample_rate=128 / 60_000)
    delta = default_delta(60_000)
    assert dp_sgd_epsilon(1.1, 128 / 60_000, 500, delta) == pytest.approx(accountant.get_epsilon(delta), rel=1e-12)
    assert history_epsilon([(1.1, 128 / 60_000, 200), (1.1, 128 / 60_000, 300)], delta) == pytest.approx(
        accountant.get_epsilon(delta), rel=1e-12
    )
    # More noise, fewer steps or a lower rate spend less.
    base = dp_sgd_epsilon(1.1, 0.01, 500, 1e-5)
    assert dp_sgd_epsilon(2.0, 0.01, 500, 1e-5) < base
    assert dp_sgd_epsilon(1.1, 0.01, 100, 1e-5) < base
    assert dp_sgd_epsilon(1.1, 0.001, 500, 1e-5) < base
    assert dp_sgd_epsilon(0.0, 0.01, 5, 1e-5) == math.inf
    assert dp_sgd_epsilon(1.0, 0.01, 0, 1e-5) == 0.0


def test_the_noise_multiplier_for_a_target_epsilon_reaches_it():
    rate, steps, delta = 128 / 60_000, 2345, 1 / 60_000
    sigma = noise_multiplier_for_epsilon(8.0, rate, steps, delta)
    assert 7.99 <= dp_sgd_epsilon(sigma, rate, steps, delta) <= 8.0
    assert dp_sgd_epsilon(sigma * 0.95, rate, steps, delta) > 8.0


def test_bad_accounting_inputs_are_refused():
    with pytest.raises(ValueError, match="sample_rate=0 must be in \\(0, 1\\]"):
        dp_sgd_epsilon(1.0, 0, 10, 1e-5)
    with pytest.raises(ValueError, match="delta=1.5 must be in"):
        dp_sgd_epsilon(1.0, 0.1, 10, 1.5)
    with pytest.raises(ValueError, match="num_samples=0 must be a whole number"):
        default_delta(0)


def test_without_opacus_the_error_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "opacus", None)  # `import opacus` now raises ImportError
    with pytest.raises(ImportError, match="pip install opacus"):
        dp_sgd_epsilon(1.0, 0.1, 10, 1e-5)
    # The defences themselves do not need it.
    assert prune([torch.ones(2)], 0.5)[0].shape == (2,)
