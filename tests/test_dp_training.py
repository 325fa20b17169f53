"""Training with the defences under the transformers Trainer: DP-SGD through Opacus (`mjp_hf.training.dp_sgd`) and
local noise or pruning through a callback (`mjp_hf.training.defense_callback`), on a tiny stock ViT on CPU.

Every check compares the gradient the optimizer actually applied (recorded by a plain SGD inside the Trainer) with an
independent computation: per-example autograd and clipping by hand, the noise's sample std, Opacus'
accountant stepped by hand; and resumes are compared with the uninterrupted run to the bit."""

import contextlib
import copy
import json
import math
import shutil
from unittest import mock

import pytest
import torch
from test_defenses import assert_gaussian_noise
from transformers import Trainer, TrainingArguments, ViTConfig, ViTForImageClassification

from mjp_hf.training import MJPTrainer
from mjp_hf.training.defense_callback import GradientDefenseCallback
from mjp_hf.training.defenses import Defense, clip_and_noise, prune
from mjp_hf.training.dp_sgd import (
    DPSGDCallback,
    DPSGDMixin,
    DPSGDSettings,
    DPSGDTrainer,
    PoissonBatchSampler,
)


NUM_SAMPLES, BATCH = 32, 8
NUM_LABELS = 3


def _model(seed=0, hidden_size=16):
    torch.manual_seed(seed)
    config = ViTConfig(
        image_size=8,
        patch_size=4,
        num_channels=3,
        hidden_size=hidden_size,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=2 * hidden_size,
        num_labels=NUM_LABELS,
    )
    return ViTForImageClassification(config)


class _Images(torch.utils.data.Dataset):
    def __init__(self, num_samples=NUM_SAMPLES):
        generator = torch.Generator().manual_seed(0)
        self.pixel_values = torch.randn(num_samples, 3, 8, 8, generator=generator)
        self.labels = torch.randint(0, NUM_LABELS, (num_samples,), generator=generator)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        return {"pixel_values": self.pixel_values[index], "labels": self.labels[index]}


class _RecordingCollator:
    """Stacks a batch and keeps it, so that a test can recompute the step from the very examples it used. (accelerate's
    loader fetches one batch ahead: `batches` may hold one more than the steps taken.)"""

    def __init__(self):
        self.batches = []

    def __call__(self, examples):
        batch = {key: torch.stack([example[key] for example in examples]) for key in examples[0]}
        self.batches.append({key: value.clone() for key, value in batch.items()})
        return batch


def _arguments(output_dir, **overrides):
    values = dict(
        per_device_train_batch_size=BATCH,
        max_steps=1,
        learning_rate=1.0,
        lr_scheduler_type="constant",
        weight_decay=0.0,
        max_grad_norm=0.0,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        use_cpu=True,
        seed=0,
    )
    values.update(overrides)
    return TrainingArguments(str(output_dir), **values)


class _RecordingSGD(torch.optim.SGD):
    """SGD that keeps, flattened, the gradient of every step it takes: what Opacus' `DPOptimizer` or a defence
    callback left in `.grad` for it."""

    def __init__(self, parameters):
        super().__init__(parameters, lr=1.0)
        self.applied = []

    def step(self, closure=None):
        parameters = [parameter for group in self.param_groups for parameter in group["params"]]
        self.applied.append(torch.cat([parameter.grad.reshape(-1).double() for parameter in parameters]))
        return super().step(closure)


def _sgd_trainer(cls, model, output_dir, collator=None, arguments=None, **kwargs):
    optimizer = _RecordingSGD(model.parameters())
    return cls(
        model=model,
        args=arguments or _arguments(output_dir),
        train_dataset=_Images(),
        data_collator=collator or _RecordingCollator(),
        optimizers=(optimizer, None),
        **kwargs,
    )


def _applied(trainer, step=0):
    """The gradient the optimizer applied at `step` (0-based), flattened in `model.parameters()` order."""
    optimizer = trainer.optimizer
    while not isinstance(optimizer, _RecordingSGD):
        optimizer = getattr(optimizer, "optimizer", None) or optimizer.original_optimizer
    return optimizer.applied[step]


def _per_example_gradients(model, batch):
    """Each example's gradient by plain autograd on the model as it was, one example at a time."""
    gradients = []
    for index in range(len(batch["labels"])):
        model.zero_grad()
        logits = model(pixel_values=batch["pixel_values"][index : index + 1]).logits
        torch.nn.functional.cross_entropy(logits, batch["labels"][index : index + 1]).backward()
        gradients.append(torch.cat([parameter.grad.reshape(-1).double() for parameter in model.parameters()]))
    model.zero_grad()
    return torch.stack(gradients)


# --- DP-SGD: clipping, noise, accounting ----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["hooks", "functorch"])
def test_a_dp_sgd_step_is_the_mean_of_independently_clipped_example_gradients(tmp_path, mode):
    model = _model()
    initial = copy.deepcopy(model)
    collator = _RecordingCollator()
    trainer = _sgd_trainer(
        DPSGDTrainer, model, tmp_path, collator, dp_sgd=DPSGDSettings(0.0, 1e-3, grad_sample_mode=mode)
    )
    trainer.train()
    batch = collator.batches[0]
    per_example = _per_example_gradients(initial, batch)
    norms = per_example.norm(dim=1)
    assert len(norms) > 1 and bool((norms > 1e-3).all())  # every example is clipped
    clipped = per_example * (1e-3 / norms.clamp(min=1e-3)).unsqueeze(1)
    expected = clipped.sum(dim=0) / BATCH  # Opacus divides by the expected batch size, not the drawn one
    actual = _applied(trainer)
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-12)
    # The check can tell: the unclipped mean is far from it.
    assert (per_example.mean(dim=0) - actual).norm() > 10 * actual.norm()


def test_dp_sgd_noise_has_std_sigma_c_over_the_expected_batch(tmp_path):
    updates = {}
    for sigma in (0.0, 2.0):
        trainer = _sgd_trainer(
            DPSGDTrainer, _model(hidden_size=32), tmp_path / str(sigma), dp_sgd=DPSGDSettings(sigma, 0.5)
        )
        trainer.train()
        updates[sigma] = _applied(trainer)
    # Same seed, same batch, same clipping: the difference is the noise alone, over the ~10,000 parameters.
    assert_gaussian_noise(updates[2.0] - updates[0.0], 2.0 * 0.5 / BATCH)


def test_epsilon_is_logged_every_step_and_matches_opacus_accountant_stepped_by_hand(tmp_path):
    from opacus.accountants import RDPAccountant

    trainer = _sgd_trainer(
        DPSGDTrainer, _model(), tmp_path, arguments=_arguments(tmp_path, max_steps=5), dp_sgd=DPSGDSettings(1.3, 1.0)
    )
    metrics = trainer.train().metrics
    accountant = RDPAccountant()
    delta = 1 / NUM_SAMPLES
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert [entry["step"] for entry in logged] == [1, 2, 3, 4, 5]
    for entry in logged:
        accountant.step(noise_multiplier=1.3, sample_rate=BATCH / NUM_SAMPLES)
        assert entry["dp_epsilon"] == pytest.approx(accountant.get_epsilon(delta), rel=1e-12)
        assert "grad_norm" not in entry  # the non-private batch gradient's norm is not released
    assert metrics["dp_epsilon"] == pytest.approx(accountant.get_epsilon(delta), rel=1e-12)
    record = trainer.privacy_spent()
    assert record == {
        "dp_epsilon": pytest.approx(accountant.get_epsilon(delta), rel=1e-12),
        "dp_delta": delta,
        "dp_noise_multiplier": 1.3,
        "dp_max_grad_norm": 1.0,
        "dp_sample_rate": BATCH / NUM_SAMPLES,
        "dp_steps": 5,
        "dp_accountant": "rdp",
    }
    assert 0 < record["dp_epsilon"] < math.inf


def test_an_empty_poisson_batch_is_a_step_of_noise_alone(tmp_path):
    # Batch size 1 of 32: a step draws no example with probability (31/32)^32 = 36%. Find a seed whose first is empty.
    seed = next(seed for seed in range(100) if not PoissonBatchSampler(NUM_SAMPLES, 1 / NUM_SAMPLES, seed).batch(0))
    for sigma in (0.0, 1.0):
        arguments = _arguments(tmp_path, per_device_train_batch_size=1, seed=seed)
        trainer = _sgd_trainer(
            DPSGDTrainer, _model(hidden_size=32), tmp_path, arguments=arguments, dp_sgd=DPSGDSettings(sigma, 0.5)
        )
        trainer.train()
        update = _applied(trainer)
        assert trainer.privacy_spent()["dp_steps"] == 1  # the step counts
        if sigma == 0:
            assert torch.count_nonzero(update) == 0
        else:
            assert_gaussian_noise(update, sigma * 0.5 / 1)


# --- the sampler ----------------------------------------------------------------------------------------------------


def test_poisson_batches_include_each_example_at_the_sample_rate_and_are_keyed_to_seed_epoch_and_index():
    num_samples, rate, draws = 50, 0.2, 2000
    sampler = PoissonBatchSampler(num_samples, rate, seed=3, steps=draws)
    batches = list(sampler)
    assert len(batches) == len(sampler) == draws
    counts = torch.zeros(num_samples)
    for batch in batches:
        assert batch == sorted(set(batch))
        counts[batch] += 1
    # Each example's count is Binomial(2000, 0.2): within 5 standard deviations of 400.
    assert bool(((counts - draws * rate).abs() <= 5 * math.sqrt(draws * rate * (1 - rate))).all())
    sizes = torch.tensor([len(batch) for batch in batches], dtype=torch.float64)
    assert abs(sizes.mean().item() - num_samples * rate) <= 5 * math.sqrt(num_samples * rate * (1 - rate) / draws)
    # Batch t of epoch e depends on (seed, e, t) alone.
    again = PoissonBatchSampler(num_samples, rate, seed=3, steps=draws)
    assert again.batch(1234) == batches[1234]
    again.set_epoch(1)
    assert [again.batch(index) for index in range(20)] != batches[:20]
    assert PoissonBatchSampler(num_samples, rate, seed=4).batch(0) != batches[0] or batches[0] == []
    assert len(PoissonBatchSampler(NUM_SAMPLES, BATCH / NUM_SAMPLES, seed=0)) == NUM_SAMPLES // BATCH


# --- checkpoints ----------------------------------------------------------------------------------------------------


class _StrictResumeDPSGDTrainer(DPSGDMixin, MJPTrainer):
    """DP-SGD on `MJPTrainer`, for its strict checkpoint loading: the plain Trainer's resume reads a transformers-5 ViT
    checkpoint (written under the v4 names) with strict=False and silently keeps the fresh encoder
    (docs/UPSTREAM_ISSUES.md has the issue text to file). A stock ViT has no MJP loss parts: the Trainer's own loss."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        return Trainer.compute_loss(self, model, inputs, return_outputs, num_items_in_batch)


def _dp_run(output_dir, max_steps, resume=None, restore_callbacks=False, trainer_class=_StrictResumeDPSGDTrainer):
    arguments = _arguments(
        output_dir,
        max_steps=max_steps,
        learning_rate=1e-2,
        save_strategy="steps",
        save_steps=3,
        restore_callback_states_from_checkpoint=restore_callbacks,
    )
    trainer = trainer_class(
        model=_model(),
        args=arguments,
        train_dataset=_Images(),
        data_collator=_RecordingCollator(),
        dp_sgd=DPSGDSettings(1.0, 0.5),
    )
    trainer.train(resume_from_checkpoint=resume)
    return trainer


@pytest.fixture(scope="module")
def uninterrupted_dp_run(tmp_path_factory):
    """Six DP-SGD steps (AdamW, the Trainer's default) with checkpoints at steps 3 and 6."""
    output_dir = tmp_path_factory.mktemp("dp_run")
    return output_dir, _dp_run(output_dir, 6)


@pytest.mark.parametrize("restore_callbacks", [False, True])
def test_a_resumed_dp_run_continues_the_same_batches_noise_and_accounting(
    uninterrupted_dp_run, tmp_path, restore_callbacks
):
    finished_dir, finished = uninterrupted_dp_run
    saved = json.loads((finished_dir / "checkpoint-3" / "trainer_state.json").read_text())
    assert saved["stateful_callbacks"]["DPSGDCallback"]["attributes"]["history"] == [[1.0, BATCH / NUM_SAMPLES, 3]]
    resumed_dir = tmp_path / "resumed"
    resumed_dir.mkdir()
    shutil.copytree(finished_dir / "checkpoint-3", resumed_dir / "checkpoint-3")
    resumed = _dp_run(resumed_dir, 6, resume=str(resumed_dir / "checkpoint-3"), restore_callbacks=restore_callbacks)
    # Steps 4-6 drew the same Poisson batches ...
    assert len(resumed.data_collator.batches) >= 3
    for expected, actual in zip(finished.data_collator.batches[3:], resumed.data_collator.batches, strict=True):
        assert torch.equal(expected["labels"], actual["labels"])
        assert torch.equal(expected["pixel_values"], actual["pixel_values"])
    # ... and the same noise: the weights agree to the bit.
    for (name, expected), actual in zip(finished.model.named_parameters(), resumed.model.parameters()):
        assert torch.equal(expected, actual), name
    assert resumed.dp_sgd_callback().history == [[1.0, BATCH / NUM_SAMPLES, 6]]
    assert resumed.privacy_spent() == finished.privacy_spent()


def test_resuming_a_checkpoint_trained_without_dp_sgd_is_refused(tmp_path):
    trainer = Trainer(
        model=_model(),
        args=_arguments(tmp_path, max_steps=3, save_strategy="steps", save_steps=3),
        train_dataset=_Images(),
        data_collator=_RecordingCollator(),
    )
    trainer.train()
    with pytest.raises(ValueError, match="trained for 3 steps without DP-SGD"):
        _dp_run(tmp_path, 6, resume=str(tmp_path / "checkpoint-3"))


def test_the_dp_trained_model_saves_and_loads_as_a_plain_transformers_model(uninterrupted_dp_run, tmp_path):
    _, trainer = uninterrupted_dp_run
    trainer.save_model(str(tmp_path / "saved"))
    loaded = ViTForImageClassification.from_pretrained(tmp_path / "saved")
    assert type(loaded) is ViTForImageClassification
    state = trainer.model.state_dict()
    assert loaded.state_dict().keys() == state.keys()
    for name, value in loaded.state_dict().items():
        assert torch.equal(value, state[name]), name
    # Opacus' hooks and per-example gradients are gone once training returns.
    assert not any(hasattr(parameter, "grad_sample") for parameter in trainer.model.parameters())
    assert not trainer.model._forward_hooks and not any(module._forward_hooks for module in trainer.model.modules())


# --- what DP-SGD refuses --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(max_grad_norm=1.0), "set max_grad_norm=0"),
        (dict(gradient_accumulation_steps=2), "gradient_accumulation_steps=2 .*set it to 1"),
        (dict(auto_find_batch_size=True), "auto_find_batch_size would change the batch"),
        (
            {
                "activation_checkpointing"
                if hasattr(TrainingArguments, "activation_checkpointing")
                else "gradient_checkpointing": True
            },
            "gradient checkpointing",
        ),
    ],
)
def test_dp_sgd_refuses_what_would_break_its_guarantee_before_training(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        _sgd_trainer(
            DPSGDTrainer,
            _model(),
            tmp_path,
            arguments=_arguments(tmp_path, **overrides),
            dp_sgd=DPSGDSettings(1.0, 1.0),
        )


@pytest.mark.parametrize(
    "setting, message",
    [
        ("torch_compile", "a compiled model hides its layers from Opacus' hooks: turn torch_compile off"),
        ("fp16", "fp16 scales the loss, and with it every per-example norm: use bf16 or fp32"),
        ("world_size", "training in 2 processes .*train in one process on one device"),
    ],
    ids=["torch_compile", "fp16", "several-processes"],
)
def test_dp_sgd_refuses_compilation_fp16_and_several_processes_before_training(tmp_path, setting, message):
    """docs/TRAINING.md#gradient-defences: the DP trainer refuses several processes, fp16 and `--torch_compile`
    before training. A CPU has neither fp16 training nor a second process: the arguments are set as a GPU run or a
    launcher would leave them, after they are parsed."""
    arguments = _arguments(tmp_path)
    model = _model()
    before = {name: value.clone() for name, value in model.state_dict().items()}
    with contextlib.ExitStack() as stack:
        if setting == "world_size":
            stack.enter_context(
                mock.patch.object(TrainingArguments, "world_size", new_callable=mock.PropertyMock, return_value=2)
            )
        else:
            setattr(arguments, setting, True)
        with pytest.raises(ValueError, match=f"DP-SGD cannot run this training: {message}"):
            _sgd_trainer(DPSGDTrainer, model, tmp_path, arguments=arguments, dp_sgd=DPSGDSettings(1.0, 1.0))
    assert all(torch.equal(value, before[name]) for name, value in model.state_dict().items())
    assert not any(tmp_path.iterdir()), "nothing written before the refusal"


def test_dp_sgd_refuses_a_model_with_buffers_naming_opacus_reason(tmp_path):
    class WithBatchNorm(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = torch.nn.BatchNorm1d(4)
            self.linear = torch.nn.Linear(4, NUM_LABELS)

        def forward(self, pixel_values, labels=None):
            return self.linear(self.norm(pixel_values.flatten(1)[:, :4]))

    with pytest.raises(ValueError, match="cannot compute per-example gradients for this model.*buffers"):
        _sgd_trainer(DPSGDTrainer, WithBatchNorm(), tmp_path, dp_sgd=DPSGDSettings(1.0, 1.0))


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(noise_multiplier=-1.0, max_grad_norm=1.0), "noise_multiplier=-1.0 must be a finite number >= 0"),
        (dict(noise_multiplier=1.0, max_grad_norm=0), "max_grad_norm=0 must be a finite number > 0"),
        (dict(noise_multiplier=1.0, max_grad_norm=1.0, grad_sample_mode="ghost"), "grad_sample_mode='ghost'"),
        (dict(noise_multiplier=1.0, max_grad_norm=1.0, delta=1.0), "delta=1.0 must be in"),
    ],
)
def test_bad_dp_sgd_settings_are_refused(fields, message):
    with pytest.raises(ValueError, match=message):
        DPSGDSettings(**fields)


def test_mjp_vit_under_dp_sgd_trains_and_records_epsilon_or_is_refused_with_opacus_reason(tmp_path):
    """MJP-ViT holds buffers in its embeddings until the DALR head moves out of them; until then DP-SGD refuses it,
    naming Opacus' reason; after, it trains and records ε like the stock ViT."""
    from opacus.grad_sample import GradSampleHooks

    from mjp_hf import MJPViTConfig, MJPViTForImageClassification

    class MJPDPSGDTrainer(DPSGDMixin, MJPTrainer):
        pass

    torch.manual_seed(0)
    config = MJPViTConfig(
        image_size=8,
        patch_size=4,
        num_channels=3,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=NUM_LABELS,
        jigsaw_prob=1.0,
        jigsaw_ratio=0.25,
        jigsaw_min_block=1,
        jigsaw_max_block=2,
    )
    model = MJPViTForImageClassification(config)
    build = lambda: _sgd_trainer(  # noqa: E731
        MJPDPSGDTrainer, model, tmp_path, arguments=_arguments(tmp_path, max_steps=2), dp_sgd=DPSGDSettings(1.0, 1.0)
    )
    if GradSampleHooks.validate(model, strict=False):
        with pytest.raises(ValueError, match="cannot compute per-example gradients.*buffers"):
            build()
    else:
        trainer = build()
        assert trainer.train().metrics["dp_epsilon"] > 0
        assert trainer.privacy_spent()["dp_steps"] == 2


# --- local noise and pruning in training ----------------------------------------------------------------------------


def _plain_gradient(model, batch):
    model.zero_grad()
    model(**batch).loss.backward()
    gradient = {name: parameter.grad.detach().clone() for name, parameter in model.named_parameters()}
    model.zero_grad()
    return gradient


def _callback_step(tmp_path, defense, max_grad_norm=0.0, seed=0, steps=1):
    model = _model(hidden_size=32)
    initial = copy.deepcopy(model)
    collator = _RecordingCollator()
    trainer = _sgd_trainer(
        Trainer,
        model,
        tmp_path,
        collator,
        arguments=_arguments(tmp_path, max_grad_norm=max_grad_norm, seed=seed, max_steps=steps),
        callbacks=[GradientDefenseCallback(defense)],
    )
    trainer.train()
    applied = torch.cat([_applied(trainer, step) for step in range(steps)])
    return applied, _plain_gradient(initial, collator.batches[0]), model


def test_local_noise_in_training_clips_the_batch_gradient_and_adds_sigma_c_noise(tmp_path):
    defense = Defense("local_noise", noise_multiplier=0.0, max_grad_norm=1e-3)
    update, gradient, _ = _callback_step(tmp_path, defense)
    expected = clip_and_noise(gradient, 1e-3, 0.0)
    torch.testing.assert_close(
        update, torch.cat([t.reshape(-1).double() for t in expected.values()]), rtol=1e-5, atol=1e-12
    )
    assert update.norm().item() == pytest.approx(1e-3, rel=1e-5)
    noisy, gradient, _ = _callback_step(tmp_path, Defense("local_noise", noise_multiplier=2.0, max_grad_norm=1e-3))
    clipped = torch.cat([t.reshape(-1).double() for t in clip_and_noise(gradient, 1e-3, 0.0).values()])
    assert_gaussian_noise(noisy - clipped, 2.0 * 1e-3)


def test_local_noise_comes_after_the_trainers_own_clipping(tmp_path):
    # The Trainer clips the batch gradient to 1e-6 first; the noise (std 1) comes after and is not shrunk.
    update, gradient, _ = _callback_step(
        tmp_path, Defense("local_noise", noise_multiplier=1.0, max_grad_norm=1.0), max_grad_norm=1e-6
    )
    assert_gaussian_noise(update, 1.0)


def test_pruning_in_training_sends_the_largest_entries_after_the_trainers_clipping(tmp_path):
    update, gradient, model = _callback_step(tmp_path, Defense("prune", prune_ratio=0.9))
    expected = prune(gradient, 0.9)
    torch.testing.assert_close(
        update, torch.cat([t.reshape(-1).double() for t in expected.values()]), rtol=1e-6, atol=0
    )
    # With the Trainer's clipping at 1e-4: pruning comes after it, so the sent gradient's norm is below 1e-4 (it
    # would be exactly 1e-4 had the clipping come after the pruning).
    clipped_then_pruned, gradient, _ = _callback_step(tmp_path, Defense("prune", prune_ratio=0.9), max_grad_norm=1e-4)
    norm = torch.cat([t.reshape(-1).double() for t in gradient.values()]).norm().item()
    assert norm > 1e-4
    assert clipped_then_pruned.norm().item() < 0.99e-4
    scaled = {name: tensor * (1e-4 / norm) for name, tensor in gradient.items()}
    expected = torch.cat([t.reshape(-1).double() for t in prune(scaled, 0.9).values()])
    torch.testing.assert_close(clipped_then_pruned, expected, rtol=1e-5, atol=1e-14)


def test_local_noise_is_keyed_to_seed_and_step_so_runs_repeat(tmp_path):
    defense = Defense("local_noise", noise_multiplier=1.0, max_grad_norm=1.0)
    first, _, _ = _callback_step(tmp_path / "a", defense, steps=2)
    second, _, _ = _callback_step(tmp_path / "b", defense, steps=2)
    other_seed, _, _ = _callback_step(tmp_path / "c", defense, steps=2, seed=1)
    assert torch.equal(first, second)
    assert not torch.equal(first, other_seed)
    # Each step draws fresh noise (std 1 here, far above the clipped gradient's entries): the two steps' updates are
    # uncorrelated, where noise keyed to the seed alone would repeat.
    step_0, step_1 = first.reshape(2, -1)
    assert abs(torch.corrcoef(torch.stack([step_0, step_1]))[0, 1].item()) < 0.1


def test_the_callback_refuses_dp_sgd_and_a_dp_sgd_trainer(tmp_path):
    with pytest.raises(ValueError, match="DPSGDMixin"):
        GradientDefenseCallback(Defense("dp_sgd", noise_multiplier=1.0, max_grad_norm=1.0))
    trainer = _sgd_trainer(
        DPSGDTrainer,
        _model(),
        tmp_path,
        dp_sgd=DPSGDSettings(1.0, 1.0),
        callbacks=[GradientDefenseCallback(Defense("prune", prune_ratio=0.5))],
    )
    with pytest.raises(ValueError, match="use one or the other"):
        trainer.train()
    assert isinstance(trainer.dp_sgd_callback(), DPSGDCallback)
