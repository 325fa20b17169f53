"""A plain-Python transcription of the released block-mask loop (docs/METHOD.md, block mask), the reference that
`mjp_hf.jigsaw.block_mask` is measured against. Slow and sequential on purpose."""

import math


def released_block_mask(grid_h, grid_w, target, rng, min_block=8, max_block=75, min_aspect=0.3, attempts=10):
    """Return (set of selected flat indices, number of blocks placed)."""
    mask = [[0] * grid_w for _ in range(grid_h)]
    count, blocks = 0, 0
    log_lo, log_hi = math.log(min_aspect), math.log(1 / min_aspect)
    while count < target:
        remaining = min(target - count, max_block)
        delta = 0
        for _ in range(attempts):
            area = rng.uniform(min_block, remaining)
            aspect = math.exp(rng.uniform(log_lo, log_hi))
            h = int(round(math.sqrt(area * aspect)))
            w = int(round(math.sqrt(area / aspect)))
            if w < grid_w and h < grid_h:
                top = rng.randint(0, grid_h - h)
                left = rng.randint(0, grid_w - w)
                new = sum(1 for i in range(top, top + h) for j in range(left, left + w) if not mask[i][j])
                if 0 < new <= remaining:
                    for i in range(top, top + h):
                        for j in range(left, left + w):
                            mask[i][j] = 1
                    delta = new
            if delta > 0:
                break
        if delta == 0:
            break
        count += delta
        blocks += 1
    return {i * grid_w + j for i in range(grid_h) for j in range(grid_w) if mask[i][j]}, blocks
