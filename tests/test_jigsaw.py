"""The jigsaw functions alone, without a model."""

import random
import statistics

import pytest
import torch
from released_masking import released_block_mask

from mjp_hf.jigsaw import (
    block_mask,
    default_max_block,
    draw_jigsaw,
    full_shuffle,
    mask_grid,
    naive_shuffle_pixels,
    num_masked_patches,
    permutation_within_mask,
    permute_patch_pixels,
    random_jigsaw,
    shuffle_tokens,
    step_jigsaw,
)


def test_released_cap_scales_with_the_grid():
    assert default_max_block(196) == 75
    assert default_max_block(49) == 19
    assert default_max_block(4) == 2
    assert num_masked_patches(196, 0.1) == 19


def test_statistics_match_the_released_generator_at_ratio_0_1():
    # docs/METHOD.md, block mask: the released class measured: mean 18.6 of 19, 32% of draws below target, min 12.
    sizes = block_mask(4000, (14, 14), 19, generator=torch.Generator().manual_seed(0)).sum(1).float()
    assert abs(sizes.mean().item() - 18.6) < 0.15
    assert 0.26 < (sizes < 19).float().mean().item() < 0.37
    assert sizes.max().item() == 19 and sizes.min().item() >= 8


def test_statistics_match_the_plain_python_reference():
    rng = random.Random(1)
    generator = torch.Generator().manual_seed(1)
    for target in (19, 49, 98, 176):
        reference = [len(released_block_mask(14, 14, target, rng)[0]) for _ in range(1500)]
        ours = block_mask(3000, (14, 14), target, generator=generator).sum(1).float()
        assert abs(ours.mean().item() - statistics.mean(reference)) < 0.6, target
        below_ref = sum(size < target for size in reference) / len(reference)
        assert abs((ours < target).float().mean().item() - below_ref) < 0.06, target


def test_reference_places_mostly_two_or_three_blocks():
    rng = random.Random(2)
    blocks = [released_block_mask(14, 14, 19, rng)[1] for _ in range(2000)]
    assert sum(b in (2, 3) for b in blocks) / len(blocks) > 0.8


def test_a_mask_of_one_block_is_a_rectangle():
    # With the per-block cap at the target and a small grid, the first block usually meets the target alone.
    masks = block_mask(300, (14, 14), 12, min_block=12, max_block=12, generator=torch.Generator().manual_seed(3))
    rectangles = 0
    for mask in masks.view(300, 14, 14):
        rows, cols = mask.nonzero(as_tuple=True)
        box = mask[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        rectangles += bool(box.all())
    assert rectangles > 100


@pytest.mark.parametrize("grid", [(2, 2), (1, 5), (3, 3), (7, 7), (8, 16)])
def test_small_and_non_square_grids_work(grid):
    num_patches = grid[0] * grid[1]
    target = max(1, num_patches // 2)
    mask = block_mask(500, grid, target, generator=torch.Generator().manual_seed(0))
    assert mask.shape == (500, num_patches)
    sizes = mask.sum(1)
    assert (sizes <= target).all()
    assert sizes.float().mean() > 0


def test_zero_target_selects_nothing_and_bad_target_is_refused():
    assert not block_mask(3, (14, 14), 0).any()
    with pytest.raises(ValueError, match="num_masked=200"):
        block_mask(1, (14, 14), 200)


def test_permutation_moves_only_selected_positions_among_themselves():
    generator = torch.Generator().manual_seed(0)
    mask, permutation = random_jigsaw(64, (14, 14), 0.25, generator=generator)
    positions = torch.arange(196).expand(64, -1)
    assert torch.equal(permutation.sort(-1).values, positions)  # every row is a permutation
    assert torch.equal(permutation[~mask], positions[~mask])  # unselected positions are fixed points
    assert mask.gather(1, permutation)[mask].all()  # selected positions receive selected tokens
    moved = (permutation != positions) & mask
    assert moved.sum() > 0.8 * mask.sum()  # a uniform permutation moves almost all of them


def test_permutation_is_uniform_over_the_selected_positions():
    mask = torch.zeros(20000, 10, dtype=torch.bool)
    mask[:, [2, 5, 7]] = True
    permutation = permutation_within_mask(mask, torch.Generator().manual_seed(0))
    sources = permutation[:, 2]
    for source in (2, 5, 7):
        assert abs((sources == source).float().mean().item() - 1 / 3) < 0.02


def test_shuffle_tokens_gathers_by_position():
    tokens = torch.arange(2 * 4 * 3, dtype=torch.float).view(2, 4, 3)
    permutation = torch.tensor([[0, 3, 2, 1]])
    shuffled = shuffle_tokens(tokens, permutation)
    assert torch.equal(shuffled[:, 1], tokens[:, 3]) and torch.equal(shuffled[:, 3], tokens[:, 1])
    assert torch.equal(shuffled[:, [0, 2]], tokens[:, [0, 2]])
    per_sample = torch.tensor([[0, 1, 2, 3], [1, 0, 2, 3]])
    shuffled = shuffle_tokens(tokens, per_sample)
    assert torch.equal(shuffled[0], tokens[0]) and torch.equal(shuffled[1, 0], tokens[1, 1])


def test_generator_makes_draws_reproducible():
    first = random_jigsaw(8, (14, 14), 0.1, generator=torch.Generator().manual_seed(7))
    second = random_jigsaw(8, (14, 14), 0.1, generator=torch.Generator().manual_seed(7))
    third = random_jigsaw(8, (14, 14), 0.1, generator=torch.Generator().manual_seed(8))
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert not torch.equal(first[0], third[0])


def test_full_shuffle_selects_everything():
    mask, permutation = full_shuffle(3, 49, torch.Generator().manual_seed(0))
    assert mask.all() and torch.equal(permutation.sort(-1).values, torch.arange(49).expand(3, -1))


def test_pixel_permutation_is_shared_by_every_patch():
    pixels = torch.randn(2, 3, 8, 12)
    permutation = torch.randperm(16, generator=torch.Generator().manual_seed(0))
    permuted = permute_patch_pixels(pixels, (4, 4), permutation)
    for top in (0, 4):
        for left in (0, 4, 8):
            patch = pixels[:, :, top : top + 4, left : left + 4].reshape(2, 3, 16)
            expected = patch[..., permutation].reshape(2, 3, 4, 4)
            assert torch.equal(permuted[:, :, top : top + 4, left : left + 4], expected)


def test_pixels_outside_whole_patches_stay():
    pixels = torch.randn(1, 1, 10, 10)
    permuted = permute_patch_pixels(pixels, (4, 4), torch.randperm(16))
    assert torch.equal(permuted[..., 8:, :], pixels[..., 8:, :])
    assert torch.equal(permuted[..., :, 8:], pixels[..., :, 8:])


def test_draw_jigsaw_follows_the_config_mode_ratio_and_coin():
    from mjp_hf import MJPViTConfig

    config = MJPViTConfig(jigsaw_ratio=0.25, jigsaw_min_block=2)
    mask, permutation = draw_jigsaw(config, 3, (8, 8), generator=torch.Generator().manual_seed(0))
    # Without a coin flip it is exactly `random_jigsaw` at the config's settings, draw for draw.
    expected = random_jigsaw(3, (8, 8), 0.25, min_block=2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(mask, expected[0]) and torch.equal(permutation, expected[1])
    # A coin lost on every row: nothing moves.
    mask, permutation = draw_jigsaw(config, 3, (8, 8), probability=0.0, generator=torch.Generator().manual_seed(0))
    assert not mask.any() and torch.equal(permutation, torch.arange(64).expand(3, -1))
    naive = MJPViTConfig(jigsaw_mode="naive")
    assert draw_jigsaw(naive, 2, (4, 4))[0].all()
    # `mode` and `ratio` override the config: a block mask at the given ratio for a naive model.
    mask, _ = draw_jigsaw(naive, 2, (8, 8), ratio=0.25, mode="mjp", generator=torch.Generator().manual_seed(1))
    assert not mask.all() and (mask.sum(-1) <= num_masked_patches(64, 0.25)).all()


def test_step_jigsaw_decides_between_given_drawn_and_none():
    from mjp_hf import MJPViTConfig

    config = MJPViTConfig(jigsaw_ratio=0.25, jigsaw_min_block=2, jigsaw_prob=1.0, jigsaw_per_sample=True)
    assert step_jigsaw(config, 3, (8, 8)) == (None, None)  # eval mode, nothing asked
    assert step_jigsaw(config, 3, (8, 8), training=True, jigsaw=False) == (None, None)
    mask, permutation = step_jigsaw(config, 3, (8, 8), training=True, generator=torch.Generator().manual_seed(0))
    assert mask.shape == permutation.shape == (3, 64) and mask.any(-1).all()
    # The schedule's switch off: the step draws, and its coin is lost on every row.
    mask, _ = step_jigsaw(config, 3, (8, 8), training=True, enabled=False)
    assert mask.shape == (3, 64) and not mask.any()
    # A given mask gets a permutation within it; a given permutation, the mask of what it moves.
    given = torch.zeros(1, 64, dtype=torch.bool)
    given[0, [1, 2, 9]] = True
    mask, permutation = step_jigsaw(config, 3, (8, 8), None, given, generator=torch.Generator().manual_seed(0))
    assert torch.equal(mask, given) and torch.equal(permutation[~given], torch.arange(64)[~given[0]])
    swap = torch.arange(64)[None].clone()
    swap[0, [3, 4]] = torch.tensor([4, 3])
    assert step_jigsaw(config, 3, (8, 8), None, None, swap)[0].nonzero()[:, 1].tolist() == [3, 4]
    with pytest.raises(ValueError, match="jigsaw=False contradicts"):
        step_jigsaw(config, 3, (8, 8), False, given)


def test_mask_grid_and_the_naive_pixel_shuffle():
    like = torch.zeros(2, dtype=torch.bfloat16)
    mask = torch.zeros(1, 6, dtype=torch.bool)
    mask[0, 4] = True
    grid = mask_grid(mask, (2, 3), 5, like)
    assert grid.shape == (5, 2, 3) and grid.dtype == torch.bfloat16 and grid[:, 1, 1].eq(1).all() and grid.sum() == 5
    assert not mask_grid(None, (2, 3), 4, like).any()
    pixels = torch.randn(2, 3, 8, 8)
    per_sample = torch.tensor([[True, False], [False, False]])  # the second sample lost its coin flip
    shuffled = naive_shuffle_pixels(pixels, (4, 4), per_sample, torch.Generator().manual_seed(0))
    expected = permute_patch_pixels(pixels, (4, 4), torch.randperm(16, generator=torch.Generator().manual_seed(0)))
    assert torch.equal(shuffled[0], expected[0]) and torch.equal(shuffled[1], pixels[1])
