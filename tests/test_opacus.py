"""MJP-ViT under Opacus (DP-SGD): `make_private` trains it in both per-sample gradient modes with the jigsaw on, and
the per-sample gradients are each sample's own gradient, computed by plain autograd on that sample alone.

Opacus computes a module's per-sample gradients from its forward's inputs (the first one alone in functorch mode)
and refuses buffers beside trainable parameters; MJP-ViT needs no grad sampler of its own for either."""

import pytest
import torch
from conftest import tiny_config_kwargs

from mjp_hf import MJPViTConfig, MJPViTForImageClassification
from mjp_hf.jigsaw import permutation_within_mask


opacus = pytest.importorskip("opacus")  # in the dev extra
from opacus.grad_sample import GradSampleModule  # noqa: E402


MODES = ["hooks", "functorch"]
BATCH = 3


def tiny_model(**overrides):
    torch.manual_seed(0)
    return MJPViTForImageClassification(MJPViTConfig(**tiny_config_kwargs(dalr_loss_weight=0.5, **overrides)))


def data(count=BATCH, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(count, 3, 28, 28, generator=generator), torch.randint(0, 5, (count,), generator=generator)


@pytest.mark.parametrize("mode", MODES)
def test_make_private_trains_mjp_vit_with_the_jigsaw_on(mode):
    model = tiny_model(jigsaw_prob=1.0, jigsaw_ratio=0.3).train()
    pixel_values, labels = data(16)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(pixel_values, labels), batch_size=4)
    before = {name: parameter.detach().clone() for name, parameter in model.named_parameters()}
    private, optimizer, loader = opacus.PrivacyEngine().make_private(
        module=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.5),
        data_loader=loader,
        noise_multiplier=0.0,
        max_grad_norm=1e3,
        grad_sample_mode=mode,
        poisson_sampling=False,
    )
    for x, y in loader:
        optimizer.zero_grad()
        out = private(x, labels=y)
        assert out.jigsaw_mask.any() and out.localization_loss > 0
        out.loss.backward()
        for name, parameter in model.named_parameters():
            assert parameter.grad_sample.shape == (len(x), *parameter.shape), name
        optimizer.step()
    assert all(not torch.equal(before[name], parameter) for name, parameter in model.named_parameters())


def _per_example_gradients(model, pixel_values, labels, mask, permutation, seed):
    """Each sample's gradient, by autograd on that sample alone, with the batch's jigsaw (its own row of a
    per-sample one) and the same draws inside the model (the naive mode's pixel permutation)."""
    gradients = []
    for i in range(len(pixel_values)):
        row = slice(i, i + 1) if mask.shape[0] > 1 else slice(0, 1)
        model.zero_grad()
        model.vit.embeddings.jigsaw_generator = torch.Generator().manual_seed(seed)
        out = model(
            pixel_values[i : i + 1],
            labels=labels[i : i + 1],
            jigsaw_mask=mask[row],
            jigsaw_permutation=permutation[row],
        )
        out.loss.backward()
        gradients.append({name: parameter.grad.clone() for name, parameter in model.named_parameters()})
    return {name: torch.stack([gradient[name] for gradient in gradients]) for name in gradients[0]}


MASKS = {
    # One block for the whole batch, as released.
    "per-batch": torch.zeros(1, 49, dtype=torch.bool).index_fill_(1, torch.tensor([3, 4, 10, 11, 17]), True),
    # One block per sample, the same size each, so that the batch's mean over kept (sample, position) pairs of the
    # DALR loss is the mean of the samples' own.
    "per-sample": torch.stack(
        [
            torch.zeros(49, dtype=torch.bool).index_fill_(0, torch.tensor([3, 4, 10, 11]) + 7 * i, True)
            for i in range(BATCH)
        ]
    ),
}
VARIANTS = {
    "mjp": {},
    "naive": dict(jigsaw_mode="naive"),
    "no-unk-linear-head": dict(use_unk_position_embedding=False, dalr_head="linear"),
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("masks", list(MASKS))
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_per_sample_gradients_are_each_samples_own(mode, masks, variant):
    model = tiny_model(jigsaw_per_sample=masks == "per-sample", **VARIANTS[variant]).train()
    pixel_values, labels = data()
    mask = torch.ones(1, 49, dtype=torch.bool) if variant == "naive" else MASKS[masks]
    permutation = permutation_within_mask(mask, torch.Generator().manual_seed(1))
    expected = _per_example_gradients(model, pixel_values, labels, mask, permutation, seed=2)
    model.zero_grad()
    model.vit.embeddings.jigsaw_generator = torch.Generator().manual_seed(2)
    batch_mask = mask.expand(BATCH, -1) if masks == "per-sample" and variant == "naive" else mask
    batch_permutation = permutation.expand(BATCH, -1) if masks == "per-sample" and variant == "naive" else permutation
    private = GradSampleModule(model, force_functorch=mode == "functorch")
    private(pixel_values, labels=labels, jigsaw_mask=batch_mask, jigsaw_permutation=batch_permutation).loss.backward()
    for name, parameter in model.named_parameters():
        # Opacus scales a mean loss's per-sample gradients back to each sample's own loss.
        torch.testing.assert_close(parameter.grad_sample, expected[name], rtol=1e-4, atol=1e-6, msg=name)
    private._close()


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_opacus_finds_nothing_to_refuse(variant):
    assert GradSampleModule.validate(tiny_model(**VARIANTS[variant]), strict=True) == []
