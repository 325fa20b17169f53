"""The gradient defences a privacy-minded federated client would use instead of, or beside, MJP: pure functions over
the gradients it is about to send, and the privacy accounting of DP-SGD.

* `clip_and_noise`: the client's update clipped to global L2 norm C, then Gaussian noise of std σC on every
  coordinate (Flower's `LocalDpMod`, which states its noise as ε and δ: `gaussian_mechanism_noise_multiplier`).
* `dp_sgd`: DP-SGD's step (Abadi et al. 2016) as Opacus computes it: each example's gradient clipped to norm C,
  summed, noise of std σC added, divided by the (expected) batch size.
* `prune`: per tensor, only the largest-magnitude entries are sent, the rest zeroed (the defence proposed with
  "Deep Leakage from Gradients", Zhu et al. 2019).
* `Defense`: one of them with its parameters, validated and JSON-serialisable (what a run or an audit records).
* `dp_sgd_epsilon` / `noise_multiplier_for_epsilon`: ε at δ of a DP-SGD run, from Opacus' RDP accountant.

The functions take a mapping of name to tensor or a sequence of tensors and return a new one of the same kind (the
input is left as it is), on the gradients' devices and in their dtypes; noise comes only from the `torch.Generator`
passed in, so that the same generator state gives the same defended gradient. Opacus is needed only for the ε
functions and is imported when they are called.

What each defence protects against an honest-but-curious server, which sees every client update: local noise and
DP-SGD noise the update before it leaves the client; pruning hides the small entries but carries no formal
guarantee. Noise the server adds itself (central DP) protects the released model from its users, not the clients'
updates from the server.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..data.augmentation import splitmix64


Gradients = Mapping[str, torch.Tensor] | Sequence[torch.Tensor]

# Opacus clips with `max_grad_norm / (norm + 1e-6)` (opacus.optimizers.DPOptimizer.clip_and_accumulate); `dp_sgd`
# does the same, so that the gradient an audit attacks is the one an Opacus-trained client sends.
OPACUS_CLIP_EPSILON = 1e-6
# A ratio times a tensor size within this of a whole number counts as that number (0.29 * 100 is 28.999999999999996
# in floating point, and must prune 29 entries).
_COUNT_TOLERANCE = 1e-6

DEFENSE_KINDS = {
    "none": (),
    "dp_sgd": ("noise_multiplier", "max_grad_norm"),
    "local_noise": ("noise_multiplier", "max_grad_norm"),
    "prune": ("prune_ratio",),
}
_PARAMETER_MEANING = {
    "noise_multiplier": "sigma >= 0: the noise std is noise_multiplier * max_grad_norm",
    "max_grad_norm": "the clipping norm C > 0",
    "prune_ratio": "the share of each gradient tensor zeroed, in [0, 1)",
}
_PARAMETER_EXAMPLE = {"noise_multiplier": "1.0", "max_grad_norm": "1.0", "prune_ratio": "0.9"}

OPACUS_INSTALL_HINT = "pip install opacus (or pip install -e '.[dev]')"


# ---------------------------------------------------------------------------------------------------------------
# Checks and helpers
# ---------------------------------------------------------------------------------------------------------------


def _check_number(name: str, value, *, positive: bool, meaning: str, example: str) -> float:
    """`value` as a float when it is a finite real number > 0 (`positive`) or >= 0, else a ValueError naming it."""
    bound = "> 0" if positive else ">= 0"
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or (value <= 0 if positive else value < 0)
    ):
        raise ValueError(f"{name}={value!r} must be a finite number {bound} ({meaning}); e.g. {name}={example}.")
    return float(value)


def check_clipping(max_norm, noise_multiplier, generator=None, *, names=("max_norm", "noise_multiplier")):
    """`(max_norm, noise_multiplier)` as floats, or a ValueError naming the bad one (as `names` spell them) and the
    fix; a generator is required when there is noise to draw."""
    max_norm = _check_number(names[0], max_norm, positive=True, meaning="the clipping norm C", example="1.0")
    noise_multiplier = _check_number(
        names[1],
        noise_multiplier,
        positive=False,
        meaning=f"the noise std is {names[1]} * {names[0]}; 0 clips without noise",
        example="1.0",
    )
    if noise_multiplier > 0 and not isinstance(generator, torch.Generator):
        raise ValueError(
            f"{names[1]}={noise_multiplier:g} draws noise: pass a torch.Generator as `generator` (got "
            f"{type(generator).__name__}), e.g. torch.Generator().manual_seed(0), so that the draw can be repeated."
        )
    return max_norm, noise_multiplier


def _as_items(gradients: Gradients) -> list[tuple[object, torch.Tensor]]:
    if isinstance(gradients, Mapping):
        items = list(gradients.items())
    elif isinstance(gradients, Sequence) and not isinstance(gradients, (str, bytes)):
        items = list(enumerate(gradients))
    else:
        raise TypeError(
            f"Gradients must be a mapping of name to tensor or a list of tensors, not {type(gradients).__name__}."
        )
    for key, tensor in items:
        if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
            raise TypeError(f"Gradient {key!r} is not a floating-point tensor ({type(tensor).__name__}).")
    return items


def _rebuild(gradients: Gradients, items: list[tuple[object, torch.Tensor]]) -> Gradients:
    if isinstance(gradients, Mapping):
        return dict(items)
    return [tensor for _, tensor in items]


def _work_dtype(tensor: torch.Tensor) -> torch.dtype:
    """float32 for half-precision gradients (their norms and noise lose too much in 16 bits), else their own."""
    return torch.promote_types(tensor.dtype, torch.float32)


def keyed_generator(seed: int, stream: str, *counters: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A `torch.Generator` whose state depends only on `(seed, stream, *counters)`: e.g. `(run seed, "dp_sgd_noise",
    global step)`, so that a resumed run draws what the uninterrupted one did without saving any generator state.

    The noise is then as secret as the seed: a server that knows a client's seed can subtract its noise. Runs meant
    to protect real clients keep their seed private (or draw it from `secrets.randbits(63)`)."""
    with np.errstate(over="ignore"):  # uint64 arithmetic wraps by design
        key = splitmix64(np.uint64(int(seed) % 2**64))
        for part in (zlib.crc32(stream.encode("utf-8")), *counters):
            key = splitmix64(key ^ np.uint64(int(part) % 2**64))
    return torch.Generator(device=device).manual_seed(int(key))


def gaussian_noise(reference: torch.Tensor, std: float, generator: torch.Generator) -> torch.Tensor:
    """N(0, std^2) noise shaped like `reference`, on its device and in its working dtype (float32 for 16-bit).

    Drawn on the generator's device and moved, so that one generator gives the same noise whatever device the
    gradient lives on."""
    dtype = _work_dtype(reference)
    noise = torch.randn(reference.shape, generator=generator, device=generator.device, dtype=dtype)
    return noise.mul_(std).to(reference.device)


def global_norm(gradients: Gradients) -> torch.Tensor:
    """The L2 norm of all the tensors taken together, as one float32 (or float64) scalar."""
    items = _as_items(gradients)
    if not items:
        return torch.zeros(())
    dtype = _work_dtype(items[0][1])
    device = items[0][1].device
    squares = [torch.linalg.vector_norm(tensor.to(dtype)).to(device) ** 2 for _, tensor in items]
    return torch.stack(squares).sum().sqrt()


# ---------------------------------------------------------------------------------------------------------------
# The defences
# ---------------------------------------------------------------------------------------------------------------


def clip_and_noise(
    gradients: Gradients, max_norm: float, noise_multiplier: float, generator: torch.Generator | None = None
) -> Gradients:
    """Local noise on the client's update, as Flower's `LocalDpMod` applies it: the update scaled by
    `min(1, max_norm / ||update||)` (its global L2 norm over all tensors), then N(0, (noise_multiplier *
    max_norm)^2) added to every coordinate.

    Noise is drawn tensor by tensor in the order given, one `torch.randn` of each tensor's shape from `generator`
    (needed when noise_multiplier > 0). A zero update stays zero before the noise."""
    max_norm, noise_multiplier = check_clipping(max_norm, noise_multiplier, generator)
    items = _as_items(gradients)
    if not items:
        return _rebuild(gradients, [])
    norm = float(global_norm(gradients))
    factor = 1.0 if norm <= max_norm else max_norm / norm
    std = noise_multiplier * max_norm
    defended = []
    for key, tensor in items:
        value = tensor.to(_work_dtype(tensor)) * factor
        if std > 0:
            value = value + gaussian_noise(tensor, std, generator)
        defended.append((key, value.to(tensor.dtype)))
    return _rebuild(gradients, defended)


def dp_sgd(
    per_sample_gradients: Gradients,
    max_norm: float,
    noise_multiplier: float,
    generator: torch.Generator | None = None,
    expected_batch_size: int | None = None,
) -> Gradients:
    """One DP-SGD gradient as Opacus' `DPOptimizer` makes it (`loss_reduction="mean"`), from per-example gradients
    (every tensor `[batch, *parameter shape]`): each example's gradient, over all tensors, scaled by
    `min(1, max_norm / (norm + 1e-6))` (Opacus' clipping rule), summed over the batch, plus N(0, (noise_multiplier *
    max_norm)^2) per coordinate, divided by `expected_batch_size` (default: the batch's own size; Opacus divides by
    the expected size of its Poisson batches).

    At batch size 1 this is `clip_and_noise` of that one gradient, up to the 1e-6 in the clipping denominator: the
    same noise from the same generator state."""
    max_norm, noise_multiplier = check_clipping(max_norm, noise_multiplier, generator)
    items = _as_items(per_sample_gradients)
    if not items:
        return _rebuild(per_sample_gradients, [])
    sizes = {tensor.shape[0] if tensor.ndim else None for _, tensor in items}
    if len(sizes) != 1 or None in sizes:
        raise ValueError(
            f"Per-sample gradients must all have the same leading batch dimension; got sizes {sorted(map(str, sizes))}."
        )
    (batch_size,) = sizes
    divisor = batch_size if expected_batch_size is None else expected_batch_size
    if isinstance(divisor, bool) or not isinstance(divisor, int) or divisor < 1:
        raise ValueError(
            f"expected_batch_size={expected_batch_size!r} must be a whole number >= 1"
            + (" (an empty batch needs it: the mean divides by it)." if batch_size == 0 else ".")
        )
    device = items[0][1].device
    per_sample_norms = torch.stack(
        [
            torch.linalg.vector_norm(g.to(_work_dtype(g)).reshape(batch_size, math.prod(g.shape[1:])), dim=1).to(
                device
            )
            for _, g in items
        ],
        dim=1,
    ).norm(dim=1)
    factors = (max_norm / (per_sample_norms + OPACUS_CLIP_EPSILON)).clamp(max=1.0)
    std = noise_multiplier * max_norm
    defended = []
    for key, g in items:
        work = g.to(_work_dtype(g))
        summed = torch.einsum("i,i...->...", factors.to(work.device, work.dtype), work)
        if std > 0:
            summed = summed + gaussian_noise(summed, std, generator)
        defended.append((key, (summed / divisor).to(g.dtype)))
    return _rebuild(per_sample_gradients, defended)


def pruned_count(numel: int, prune_ratio: float) -> int:
    """How many of `numel` entries `prune` zeroes: floor(prune_ratio * numel), a product within 1e-6 of a whole
    number counting as that number."""
    product = prune_ratio * numel
    nearest = round(product)
    return int(nearest) if abs(product - nearest) < _COUNT_TOLERANCE else math.floor(product)


def check_prune_ratio(prune_ratio) -> float:
    if isinstance(prune_ratio, bool) or not isinstance(prune_ratio, (int, float)) or not 0 <= prune_ratio < 1:
        raise ValueError(
            f"prune_ratio={prune_ratio!r} must be in [0, 1): the share of each gradient tensor zeroed (0.9 sends the "
            "largest 10%)."
        )
    return float(prune_ratio)


def prune(gradients: Gradients, prune_ratio: float) -> Gradients:
    """Gradient pruning (Zhu et al. 2019): in every tensor the `pruned_count(numel, prune_ratio)` entries of smallest
    magnitude are zeroed and the others sent as they are, so each tensor keeps at least one entry.

    Ties: entries are ranked by magnitude, largest first, and among equal magnitudes by position in the flattened
    tensor, first first; the first `numel - pruned_count` in that order are kept."""
    prune_ratio = check_prune_ratio(prune_ratio)
    defended = []
    for key, tensor in _as_items(gradients):
        flat = tensor.reshape(-1)
        zeroed = pruned_count(flat.numel(), prune_ratio)
        if zeroed == 0:
            defended.append((key, tensor.clone()))
            continue
        order = torch.sort(flat.abs(), descending=True, stable=True).indices
        kept = torch.zeros_like(flat, dtype=torch.bool)
        kept[order[: flat.numel() - zeroed]] = True
        defended.append((key, torch.where(kept, flat, torch.zeros_like(flat)).reshape(tensor.shape)))
    return _rebuild(gradients, defended)


def gaussian_mechanism_noise_multiplier(epsilon: float, delta: float) -> float:
    """The noise multiplier σ of the classic Gaussian mechanism (Dwork and Roth 2014, Thm A.1), `sqrt(2 ln(1.25 /
    delta)) / epsilon`: Flower's `LocalDpMod(clipping_norm=C, sensitivity=C, epsilon, delta)` adds noise of std σC.
    The theorem holds for epsilon < 1; it is a per-release guarantee, not composed over rounds."""
    if not (0 < epsilon < 1) or not (0 < delta < 1):
        raise ValueError(
            f"epsilon={epsilon!r} and delta={delta!r} must both lie in (0, 1): the classic Gaussian mechanism "
            "holds only for epsilon < 1."
        )
    return math.sqrt(2 * math.log(1.25 / delta)) / epsilon


# ---------------------------------------------------------------------------------------------------------------
# A defence, as a run or an audit records it
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Defense:
    """A gradient defence and its parameters: `kind` is one of `DEFENSE_KINDS`; `dp_sgd` and `local_noise` take
    `noise_multiplier` and `max_grad_norm`, `prune` takes `prune_ratio`, `none` takes nothing. Anything else is
    refused when the object is made, naming the field and the fix."""

    kind: str = "none"
    noise_multiplier: float | None = None
    max_grad_norm: float | None = None
    prune_ratio: float | None = None

    def __post_init__(self):
        if self.kind not in DEFENSE_KINDS:
            raise ValueError(f"Defense kind {self.kind!r} is unknown: choose one of {', '.join(DEFENSE_KINDS)}.")
        needed = DEFENSE_KINDS[self.kind]
        for name in _PARAMETER_MEANING:
            value = getattr(self, name)
            if name in needed and value is None:
                raise ValueError(
                    f"Defense {self.kind!r} needs {name} ({_PARAMETER_MEANING[name]}): set it, e.g. "
                    f"{name}={_PARAMETER_EXAMPLE[name]}."
                )
            if name not in needed and value is not None:
                takers = [kind for kind, names in DEFENSE_KINDS.items() if name in names]
                raise ValueError(
                    f"Defense {self.kind!r} takes no {name} (got {value!r}): drop it, or choose kind "
                    f"{' or '.join(map(repr, takers))}."
                )
        if "max_grad_norm" in needed:
            check_clipping(
                self.max_grad_norm,
                self.noise_multiplier,
                torch.Generator(),
                names=("max_grad_norm", "noise_multiplier"),
            )
        if "prune_ratio" in needed:
            check_prune_ratio(self.prune_ratio)
        # Whole numbers given as ints are stored as floats, so that equal defences compare and serialise alike.
        for name in needed:
            object.__setattr__(self, name, float(getattr(self, name)))

    @property
    def parameters(self) -> dict[str, float]:
        return {name: getattr(self, name) for name in DEFENSE_KINDS[self.kind]}

    @property
    def needs_per_sample_gradients(self) -> bool:
        return self.kind == "dp_sgd"

    def to_dict(self) -> dict:
        """`{"kind": ..., **parameters}`: what `privacy.json`, a run's card and `all_results.json` record."""
        return {"kind": self.kind, **self.parameters}

    @classmethod
    def from_dict(cls, data: Mapping) -> Defense:
        unknown = sorted(set(data) - {"kind", *_PARAMETER_MEANING})
        if unknown:
            raise ValueError(
                f"A defence record holds unknown fields {unknown}; it takes kind, {', '.join(_PARAMETER_MEANING)}."
            )
        return cls(**data)

    def describe(self) -> str:
        """A short human-readable name, e.g. 'DP-SGD (σ 1, C 1)'."""
        if self.kind == "none":
            return "no defence"
        if self.kind == "prune":
            return f"pruning ({self.prune_ratio:g} of each tensor zeroed)"
        name = "DP-SGD" if self.kind == "dp_sgd" else "local noise"
        return f"{name} (σ {self.noise_multiplier:g}, C {self.max_grad_norm:g})"

    def apply(
        self,
        gradients: Gradients | None = None,
        *,
        per_sample_gradients: Gradients | None = None,
        generator: torch.Generator | None = None,
        expected_batch_size: int | None = None,
    ) -> Gradients:
        """The defended gradient. `dp_sgd` needs `per_sample_gradients`; the others take the batch's `gradients`
        (the mean over the batch, what an undefended client sends)."""
        if self.kind == "dp_sgd":
            if per_sample_gradients is None:
                raise ValueError("Defense 'dp_sgd' clips every example's gradient: pass per_sample_gradients.")
            return dp_sgd(
                per_sample_gradients, self.max_grad_norm, self.noise_multiplier, generator, expected_batch_size
            )
        if gradients is None:
            raise ValueError(f"Defense {self.kind!r} applies to the batch gradient: pass gradients.")
        if self.kind == "local_noise":
            return clip_and_noise(gradients, self.max_grad_norm, self.noise_multiplier, generator)
        if self.kind == "prune":
            return prune(gradients, self.prune_ratio)
        return _rebuild(gradients, [(key, tensor.clone()) for key, tensor in _as_items(gradients)])


# ---------------------------------------------------------------------------------------------------------------
# DP-SGD's privacy accounting (Opacus)
# ---------------------------------------------------------------------------------------------------------------


def require_opacus():
    """The `opacus` module, or an ImportError saying how to install it."""
    try:
        import opacus
    except ImportError as error:
        raise ImportError(
            f"DP-SGD needs Opacus, which is not installed: {OPACUS_INSTALL_HINT}. The other defences "
            "(local noise, pruning) work without it."
        ) from error
    return opacus


def default_delta(num_samples: int) -> float:
    """δ = 1 / N, N the number of training examples (the convention this project reports ε at)."""
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples={num_samples!r} must be a whole number >= 1 (the training set's size).")
    return 1.0 / num_samples


def _check_accounting(sample_rate, steps, delta) -> None:
    if not 0 < sample_rate <= 1:
        raise ValueError(f"sample_rate={sample_rate!r} must be in (0, 1]: the expected batch size over N.")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps={steps!r} must be a whole number >= 0 (optimizer steps taken).")
    if not 0 < delta < 1:
        raise ValueError(f"delta={delta!r} must be in (0, 1); this project uses 1 / N (default_delta).")


def dp_sgd_epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
    """ε at δ of `steps` DP-SGD steps with Poisson sampling at `sample_rate` and noise multiplier σ, from Opacus'
    RDP accountant (its default orders). σ = 0 is no privacy: ε = inf; no step is ε = 0."""
    _check_accounting(sample_rate, steps, delta)
    if noise_multiplier < 0:
        raise ValueError(f"noise_multiplier={noise_multiplier!r} must be >= 0.")
    if steps == 0:
        return 0.0
    if noise_multiplier == 0:
        return math.inf
    require_opacus()
    from opacus.accountants import RDPAccountant

    accountant = RDPAccountant()
    accountant.history = [(float(noise_multiplier), float(sample_rate), steps)]
    return float(accountant.get_epsilon(delta=delta))


def history_epsilon(history: Sequence[Sequence], delta: float) -> float:
    """ε at δ of an RDP accountant's history `[(noise_multiplier, sample_rate, steps), ...]` (a run whose σ or
    sample rate changed on a resume has several entries)."""
    history = [(float(sigma), float(rate), int(steps)) for sigma, rate, steps in history if int(steps) > 0]
    if not history:
        return 0.0
    for sigma, rate, steps in history:
        _check_accounting(rate, steps, delta)
    if any(sigma == 0 for sigma, _, _ in history):
        return math.inf
    require_opacus()
    from opacus.accountants import RDPAccountant

    accountant = RDPAccountant()
    accountant.history = list(history)
    return float(accountant.get_epsilon(delta=delta))


def noise_multiplier_for_epsilon(target_epsilon: float, sample_rate: float, steps: int, delta: float) -> float:
    """The smallest σ (to Opacus' tolerance of 0.01 in ε) whose `steps` steps at `sample_rate` stay within
    `target_epsilon` at δ: Opacus' `get_noise_multiplier` with the RDP accountant."""
    _check_accounting(sample_rate, steps, delta)
    if not target_epsilon > 0:
        raise ValueError(f"target_epsilon={target_epsilon!r} must be > 0.")
    require_opacus()
    from opacus.accountants.utils import get_noise_multiplier

    return float(
        get_noise_multiplier(
            target_epsilon=target_epsilon, target_delta=delta, sample_rate=sample_rate, steps=steps, accountant="rdp"
        )
    )


__all__ = [
    "DEFENSE_KINDS",
    "Defense",
    "clip_and_noise",
    "default_delta",
    "dp_sgd",
    "dp_sgd_epsilon",
    "gaussian_mechanism_noise_multiplier",
    "global_norm",
    "history_epsilon",
    "keyed_generator",
    "noise_multiplier_for_epsilon",
    "prune",
    "pruned_count",
    "require_opacus",
]
