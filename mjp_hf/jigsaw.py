"""The block-wise random jigsaw of Masked Jigsaw Puzzle, as pure tensor functions.

A jigsaw has two parts:

* a **block mask** over the patch grid, drawn like BEiT's masking generator as the authors release it: rectangles
  of random area and log-uniform aspect are added one after the other until the target number of patches is
  selected, with up to 10 attempts per rectangle, giving up (and falling short of the target) when all attempts
  fail;
* a **permutation** of the selected positions among themselves (uniform, so a selected patch may stay in place;
  it still counts as shuffled). Unselected positions are fixed points.

Every function is vectorised over the batch, runs on the device of its inputs and never synchronises with the
host: the number of rectangle rounds is fixed in advance from Python integers, so finished masks simply stop
changing, and a round costs a few dozen small tensor operations on `[masks, attempts]` and `[masks, patches]`
(a summed-area table answers "how many patches of this rectangle are already selected"). Pass a `torch.Generator`
for reproducible draws.

Masks have shape `[num_masks, grid_h * grid_w]` (row-major patch order, `k = row * grid_w + col`); a permutation
is a gather index of the same shape: the token placed at position `i` comes from position `permutation[i]`.
"""

import math

import torch


# The released generator is built for a 14x14 grid with a per-block cap of 75 patches.
RELEASED_NUM_PATCHES = 196
RELEASED_MAX_BLOCK = 75
MAX_ATTEMPTS = 10
# Rounds of rectangle placement beyond `target / min_block`. The released loop runs until the target is met or a
# round fails; measured against it, 12 extra rounds leave its statistics unchanged at ratios 0.1 to 0.9.
EXTRA_ROUNDS = 12


def default_max_block(num_patches: int) -> int:
    """The released cap on one block's area (75 on 196 patches), scaled to a grid of `num_patches` patches."""
    return max(1, round(num_patches * RELEASED_MAX_BLOCK / RELEASED_NUM_PATCHES))


def num_masked_patches(num_patches: int, ratio: float) -> int:
    """Number of patches a mask aims at: `int(num_patches * ratio)`, as released."""
    return int(num_patches * ratio)


def block_mask(
    num_masks: int,
    grid_size: tuple[int, int],
    num_masked: int,
    *,
    min_block: int = 8,
    max_block: int | None = None,
    min_aspect: float = 0.3,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.BoolTensor:
    """Draw `num_masks` independent block-wise masks on a `grid_size` patch grid.

    Args:
        num_masks: how many masks to draw (1 for a batch-wide mask, the batch size for per-sample masks).
        grid_size: `(grid_h, grid_w)` in patches.
        num_masked: target number of selected patches; the result may fall short, as the released one does.
        min_block: smallest block area; capped at `max_block` so that grids smaller than one block still work.
        max_block: largest block area; `None` scales the released 75-of-196 cap to this grid.
        min_aspect: smallest aspect ratio; aspects are log-uniform on `[min_aspect, 1 / min_aspect]`.
        generator: source of randomness; its device is used when given.
        device: device of the result when no generator is given.

    Returns:
        `BoolTensor` of shape `[num_masks, grid_h * grid_w]`, `True` where a patch is selected.
    """
    grid_h, grid_w = grid_size
    num_patches = grid_h * grid_w
    if not 0 <= num_masked <= num_patches:
        raise ValueError(f"num_masked={num_masked} is outside [0, {num_patches}] for a {grid_h}x{grid_w} grid.")
    if generator is not None:
        device = generator.device
    if num_masked == 0:
        return torch.zeros(num_masks, num_patches, dtype=torch.bool, device=device)

    max_block = default_max_block(num_patches) if max_block is None else max_block
    min_block = min(min_block, max_block)
    # Every placed block adds at least one patch, so rounds beyond the target number of patches never place one.
    num_rounds = min(num_masked, math.ceil(num_masked / min_block) + EXTRA_ROUNDS)
    log_aspect_lo, log_aspect_hi = math.log(min_aspect), -math.log(min_aspect)

    # All the randomness up front, four uniforms per (round, mask, attempt): area, aspect, top, left.
    draws = torch.rand(num_rounds, num_masks, MAX_ATTEMPTS, 4, generator=generator, device=device)
    # random.uniform(a, b) is a + (b - a) * U whatever the order of a and b; here a = min_block, b = the round's cap,
    # so area = min_block * (1 - U) + cap * U, of which the first term is known in advance.
    area_draws = draws[..., 0]
    area_offsets = min_block * (1 - area_draws)
    # h = round(sqrt(area * aspect)) and w = round(sqrt(area / aspect)): sqrt(area) times a per-attempt scale.
    sqrt_aspect = torch.exp(0.5 * (log_aspect_lo + (log_aspect_hi - log_aspect_lo) * draws[..., 1]))
    side_scales = torch.stack((sqrt_aspect, sqrt_aspect.reciprocal()), dim=-1)  # [R, M, A, (h, w)]
    corner_draws = draws[..., 2:]  # [R, M, A, (top, left)]

    # Sizes and corners are small integers, exact in float32, which spares every round a cast.
    grid_hw = torch.tensor([grid_h, grid_w], dtype=torch.float32, device=device)
    # A block must be strictly smaller than the grid, as released; a grid one patch wide allows height 1.
    max_hw = torch.tensor([max(grid_h - 1, 1), max(grid_w - 1, 1)], dtype=torch.float32, device=device)
    corner_signs = torch.tensor([[1.0, -1.0], [-1.0, 1.0]], device=device)
    coords = torch.arange(max(grid_h, grid_w), dtype=torch.float32, device=device)

    mask = torch.zeros(num_masks, grid_h, grid_w, dtype=torch.bool, device=device)
    # Summed-area table of the mask, zero-padded: any rectangle's selected patches are four lookups in it, so a
    # round costs O(masks * (patches + attempts)) whatever the size of the rectangles tried.
    table = torch.zeros(num_masks, grid_h + 1, grid_w + 1, dtype=torch.float32, device=device)
    table_size = (grid_h + 1) * (grid_w + 1)
    active = torch.ones(num_masks, 1, dtype=torch.bool, device=device)
    for round_index in range(num_rounds):
        table[:, 1:, 1:] = mask.cumsum(1, dtype=torch.float32).cumsum(2)
        count = table[:, -1, -1:]  # [M, 1]
        cap = (num_masked - count).clamp(max=max_block)
        area = torch.addcmul(area_offsets[round_index], cap, area_draws[round_index])  # [M, A]
        sides = (area.sqrt().unsqueeze(-1) * side_scales[round_index]).round()  # [M, A, (h, w)]
        fits = (sides <= max_hw).all(-1)
        start = (corner_draws[round_index] * (grid_hw + 1 - sides).clamp(min=1)).floor()
        # Attempts that do not fit are refused below; clipping keeps their table lookups in range.
        stop = torch.minimum(start + sides, grid_hw)
        bounds = torch.stack((start, stop), dim=-1)  # [M, A, (row, col), (start, stop)]
        rows = bounds[..., 0, :].unsqueeze(-1) * (grid_w + 1)  # [M, A, 2, 1]
        cols = bounds[..., 1, :].unsqueeze(-2)  # [M, A, 1, 2]
        lookups = table.view(num_masks, table_size).gather(1, (rows + cols).long().view(num_masks, 4 * MAX_ATTEMPTS))
        overlap = (lookups.view(num_masks, MAX_ATTEMPTS, 2, 2) * corner_signs).sum((-2, -1))
        new = sides.prod(-1) - overlap
        ok = fits & (new > 0) & (new <= cap) & active

        # The first successful attempt wins: failed attempts leave no trace, so drawing all at once is exact.
        # A mask whose round placed nothing is finished, as the released loop gives up there.
        active = ok.any(-1, keepdim=True)
        first = ok.to(torch.uint8).argmax(-1)
        chosen = bounds.gather(1, first.view(num_masks, 1, 1, 1).expand(-1, 1, 2, 2)).squeeze(1)  # [M, 2, 2]
        spans = (coords >= chosen[..., :1]) & (coords < chosen[..., 1:])  # [M, (row, col), max(H, W)]
        mask |= spans[:, 0, :grid_h, None] & spans[:, 1, None, :grid_w] & active.unsqueeze(-1)
    return mask.view(num_masks, num_patches)


def permutation_within_mask(mask: torch.BoolTensor, generator: torch.Generator | None = None) -> torch.LongTensor:
    """A uniform random permutation of each row's selected positions among themselves.

    Returns a gather index of the shape of `mask`: position `i` receives the token from `permutation[..., i]`, a
    selected position whenever `i` is selected, and `i` itself otherwise.
    """
    num_patches = mask.shape[-1]
    positions = torch.arange(num_patches, device=mask.device).expand_as(mask)
    # Both sorts put the selected positions first: `slots` in ascending order, `sources` in random order; the
    # unselected positions follow in ascending order in both, so they map to themselves.
    slots = torch.argsort(torch.where(mask, positions, positions + num_patches), dim=-1)
    noise = torch.rand(mask.shape, generator=generator, device=mask.device)
    sources = torch.argsort(torch.where(mask, noise, positions + 1.0), dim=-1)
    return torch.empty_like(slots).scatter_(-1, slots, sources)


def shuffle_tokens(tokens: torch.Tensor, permutation: torch.LongTensor) -> torch.Tensor:
    """Reorder `tokens` `[batch, num_patches, dim]` by a gather index `[batch or 1, num_patches]`."""
    batch_size, num_patches, dim = tokens.shape
    # Whole token rows are copied with index_select, several times faster than an element-wise gather, forward and
    # backward, on CPU and GPU alike.
    if permutation.shape[0] == 1:
        return tokens.index_select(1, permutation[0])
    offsets = torch.arange(0, batch_size * num_patches, num_patches, device=permutation.device).unsqueeze(1)
    rows = (permutation + offsets).view(batch_size * num_patches)
    return tokens.reshape(batch_size * num_patches, dim).index_select(0, rows).view(batch_size, num_patches, dim)


def random_jigsaw(
    num_masks: int,
    grid_size: tuple[int, int],
    ratio: float,
    *,
    min_block: int = 8,
    max_block: int | None = None,
    min_aspect: float = 0.3,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> tuple[torch.BoolTensor, torch.LongTensor]:
    """A block mask selecting about `ratio` of the grid and a permutation of the selected positions."""
    mask = block_mask(
        num_masks,
        grid_size,
        num_masked_patches(grid_size[0] * grid_size[1], ratio),
        min_block=min_block,
        max_block=max_block,
        min_aspect=min_aspect,
        generator=generator,
        device=device,
    )
    return mask, permutation_within_mask(mask, generator)


def full_shuffle(
    num_masks: int,
    num_patches: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> tuple[torch.BoolTensor, torch.LongTensor]:
    """Every position selected and permuted: the naive-shuffle ablation's patch order."""
    if generator is not None:
        device = generator.device
    mask = torch.ones(num_masks, num_patches, dtype=torch.bool, device=device)
    return mask, permutation_within_mask(mask, generator)


def draw_jigsaw(
    config,
    num_masks: int,
    grid_size: tuple[int, int],
    *,
    ratio: float | None = None,
    probability: float = 1.0,
    mode: str | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> tuple[torch.BoolTensor, torch.LongTensor]:
    """The jigsaw `(mask, permutation)` of one training step, drawn as an `MJPViTConfig` describes it.

    Args:
        config: supplies `jigsaw_mode`, `jigsaw_ratio` and the block shape (`jigsaw_min_block`, `jigsaw_max_block`,
            `jigsaw_min_aspect`).
        num_masks: 1 for a batch-wide jigsaw, the batch size for per-sample ones.
        grid_size: `(grid_h, grid_w)` in patches.
        ratio: the shuffle ratio instead of `config.jigsaw_ratio`.
        probability: chance that a mask row is kept; a row that loses the coin flip is empty (no position moves).
            The flip is a device tensor, so a training step never waits on the host.
        mode: `"mjp"` (block-wise) or `"naive"` (every patch) instead of `config.jigsaw_mode`.
        generator: source of randomness; its device is used when given.
        device: device of the result when no generator is given.
    """
    if generator is not None:
        device = generator.device
    num_patches = grid_size[0] * grid_size[1]
    if (config.jigsaw_mode if mode is None else mode) == "naive":
        mask, permutation = full_shuffle(num_masks, num_patches, generator=generator, device=device)
    else:
        mask = block_mask(
            num_masks,
            grid_size,
            num_masked_patches(num_patches, config.jigsaw_ratio if ratio is None else ratio),
            min_block=config.jigsaw_min_block,
            max_block=config.jigsaw_max_block,
            min_aspect=config.jigsaw_min_aspect,
            generator=generator,
            device=device,
        )
        permutation = None
    if probability < 1.0:
        heads = torch.rand(num_masks, 1, generator=generator, device=device) < probability
        mask = mask & heads
    if permutation is None:
        # Drawn after the coin flip, as the training step always has (tests pin the generator's draws).
        permutation = permutation_within_mask(mask, generator)
    elif probability < 1.0:
        permutation = torch.where(mask, permutation, torch.arange(num_patches, device=mask.device))
    return mask, permutation


def permute_patch_pixels(
    pixel_values: torch.Tensor, patch_size: tuple[int, int], pixel_permutation: torch.LongTensor
) -> torch.Tensor:
    """Permute the pixels inside every patch by one permutation of the `patch_h * patch_w` pixel positions,
    shared by all patches, channels and samples (the naive-shuffle ablation, as released).

    Pixels past the last whole patch (which the patch embedding never sees) are left as they are.
    """
    batch_size, channels, height, width = pixel_values.shape
    patch_h, patch_w = patch_size
    grid_h, grid_w = height // patch_h, width // patch_w
    covered = pixel_values[:, :, : grid_h * patch_h, : grid_w * patch_w]
    patches = covered.reshape(batch_size, channels, grid_h, patch_h, grid_w, patch_w).permute(0, 1, 2, 4, 3, 5)
    patches = patches.reshape(batch_size, channels, grid_h, grid_w, patch_h * patch_w)[..., pixel_permutation]
    patches = patches.reshape(batch_size, channels, grid_h, grid_w, patch_h, patch_w).permute(0, 1, 2, 4, 3, 5)
    patches = patches.reshape(batch_size, channels, grid_h * patch_h, grid_w * patch_w)
    if covered.shape == pixel_values.shape:
        return patches
    result = pixel_values.clone()
    result[:, :, : grid_h * patch_h, : grid_w * patch_w] = patches
    return result


def random_pixel_permutation(
    patch_size: tuple[int, int], generator: torch.Generator | None = None, device: torch.device | str | None = None
) -> torch.LongTensor:
    """One random permutation of the pixel positions of a patch."""
    if generator is not None:
        device = generator.device
    return torch.randperm(patch_size[0] * patch_size[1], generator=generator, device=device)


def complete_given_jigsaw(
    jigsaw_mask: torch.BoolTensor | None,
    jigsaw_permutation: torch.LongTensor | None,
    batch_size: int,
    grid_size: tuple[int, int],
    generator: torch.Generator | None = None,
) -> tuple[torch.BoolTensor, torch.LongTensor]:
    """A caller's jigsaw, checked and completed: a mask alone gets a random permutation within it, a permutation
    alone the mask of the positions it moves. Raises a `ValueError` naming the argument for a wrong shape or dtype,
    or a permutation row that is not one (a check that reads the tensor on the host, skipped while compiling)."""
    num_patches = grid_size[0] * grid_size[1]
    for name, value in (("jigsaw_mask", jigsaw_mask), ("jigsaw_permutation", jigsaw_permutation)):
        if value is not None and (
            value.ndim != 2 or value.shape[0] not in (1, batch_size) or value.shape[1] != num_patches
        ):
            raise ValueError(
                f"{name} must have shape (batch_size or 1, num_patches) = ({batch_size} or 1, {num_patches}) for a "
                f"{grid_size[0]}x{grid_size[1]} patch grid, got {tuple(value.shape)}."
            )
    if jigsaw_mask is not None and jigsaw_mask.dtype != torch.bool:
        raise ValueError(f"jigsaw_mask must be a bool tensor, got {jigsaw_mask.dtype}.")
    if jigsaw_permutation is not None and jigsaw_permutation.dtype != torch.long:
        raise ValueError(f"jigsaw_permutation must be a long (int64) tensor, got {jigsaw_permutation.dtype}.")
    if jigsaw_permutation is None:
        jigsaw_permutation = permutation_within_mask(jigsaw_mask, generator)
    elif not torch.compiler.is_compiling():  # a compiled step must not leave its graph to read the tensor
        check_permutation(jigsaw_permutation)
    if jigsaw_mask is None:
        jigsaw_mask = jigsaw_permutation != torch.arange(num_patches, device=jigsaw_permutation.device)
    return jigsaw_mask, jigsaw_permutation


def check_permutation(permutation: torch.LongTensor) -> None:
    """Raise if a row of a gather index is not a permutation of `0 .. num_patches - 1`."""
    num_patches = permutation.shape[-1]
    expected = torch.arange(num_patches, device=permutation.device)
    bad_rows = (permutation.sort(dim=-1).values != expected).any(-1).nonzero().flatten().tolist()
    if bad_rows:
        row = permutation[bad_rows[0]]
        out_of_range = row[(row < 0) | (row >= num_patches)].tolist()
        problem = (
            f"values out of range {out_of_range[:8]}"
            if out_of_range
            else f"repeated values {sorted(set(row[row.bincount(minlength=num_patches)[row] > 1].tolist()))[:8]}"
        )
        raise ValueError(
            f"jigsaw_permutation row {bad_rows[0]} is not a permutation of 0..{num_patches - 1} ({problem}); pass "
            "each position exactly once, e.g. `torch.randperm(num_patches)` or the identity outside the mask."
        )


def step_jigsaw(
    config,
    batch_size: int,
    grid_size: tuple[int, int],
    jigsaw: bool | None = None,
    jigsaw_mask: torch.BoolTensor | None = None,
    jigsaw_permutation: torch.LongTensor | None = None,
    *,
    training: bool = False,
    enabled: bool = True,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> tuple[torch.BoolTensor, torch.LongTensor] | tuple[None, None]:
    """A forward step's `(jigsaw_mask, jigsaw_permutation)`, or `(None, None)` without a jigsaw: the caller's,
    checked and completed (`complete_given_jigsaw`), or drawn as `config` describes (`draw_jigsaw`). `jigsaw=None` is a
    training step's: in `training` a coin flip with `config.jigsaw_prob` (0 unless `enabled`), else none; `True`
    forces a jigsaw, `False` refuses a given one."""
    if jigsaw_mask is not None or jigsaw_permutation is not None:
        if jigsaw is False:
            raise ValueError("jigsaw=False contradicts the jigsaw_mask/jigsaw_permutation passed; drop one of them.")
        return complete_given_jigsaw(jigsaw_mask, jigsaw_permutation, batch_size, grid_size, generator)
    if jigsaw is False or (jigsaw is None and not training):
        return None, None
    probability = 1.0 if jigsaw else (config.jigsaw_prob if enabled else 0.0)
    num_masks = batch_size if config.jigsaw_per_sample else 1
    return draw_jigsaw(config, num_masks, grid_size, probability=probability, generator=generator, device=device)


def naive_shuffle_pixels(
    pixel_values: torch.Tensor,
    patch_size: tuple[int, int],
    jigsaw_mask: torch.BoolTensor,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The naive-shuffle ablation's pixels: one random permutation of the pixels inside every patch, for the samples
    whose `jigsaw_mask` row selects something (a step that lost the coin flip keeps its pixels in place)."""
    pixel_permutation = random_pixel_permutation(patch_size, generator, pixel_values.device)
    permuted = permute_patch_pixels(pixel_values, patch_size, pixel_permutation)
    return torch.where(jigsaw_mask.any(-1).view(-1, 1, 1, 1), permuted, pixel_values)


def mask_grid(
    jigsaw_mask: torch.BoolTensor | None, grid_size: tuple[int, int], batch_size: int, like: torch.Tensor
) -> torch.Tensor:
    """`jigsaw_mask` (`[batch_size or 1, grid_h * grid_w]`; `None`: nothing selected) as a `[batch_size, grid_h,
    grid_w]` grid of 1 (selected) and 0, in the dtype and on the device of `like`."""
    if jigsaw_mask is None:
        jigsaw_mask = torch.zeros(1, grid_size[0] * grid_size[1], dtype=torch.bool, device=like.device)
    return jigsaw_mask.to(like.dtype).view(-1, *grid_size).expand(batch_size, -1, -1)
