"""Guards that keep MJP free: no host-device synchronisation and no graph break in the training or eval forward.

Speed itself is measured by `benchmarks/`, not here. These tests check properties that make the speed possible
and that a single careless line would break: a `.item()`, a `bool(tensor)` in an `if`, a `nonzero()`, a boolean
mask index, a `.cpu()`, a Python loop over the batch driven by tensor values.

* `SyncRecorder` records every ATen op that forces the host to wait for the device; the forward, loss and backward
  must run none. It is tested on code that does sync, so that it cannot pass by seeing nothing.
* On the `meta` device a tensor has no data: any op whose result the host must read fails there, `.cpu()` included.
* `torch.compile(fullgraph=True)` raises on any graph break (the `eager` backend traces without compiling, so these
  tests take seconds); `aot_eager` also traces the backward.
"""

import pytest
import torch
from conftest import tiny_config_kwargs
from torch.utils._python_dispatch import TorchDispatchMode

from mjp_hf import MJPViTConfig, MJPViTForImageClassification


aten = torch.ops.aten

# ATen ops whose result the host must read: on an accelerator each one waits for the device to finish.
SYNCING_OPS = {
    aten._local_scalar_dense.default,  # .item(), int(t), float(t), bool(t), `if t:`
    aten.is_nonzero.default,
    aten.nonzero.default,  # also boolean-mask indexing and torch.where(cond) with one argument
    aten.masked_select.default,
    aten.equal.default,
    aten._unique2.default,
    aten.unique_consecutive.default,
    aten.unique_dim.default,
    aten.repeat_interleave.Tensor,
    aten._assert_async.default,
    aten._assert_async.msg,
}


class SyncRecorder(TorchDispatchMode):
    """Record the syncing ops run under it, and any copy of a tensor from an accelerator to the host."""

    def __init__(self):
        super().__init__()
        self.syncs: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in SYNCING_OPS:
            self.syncs.append(str(func))
        elif func in (aten.index.Tensor, aten.index_put.default, aten.index_put_.default) and any(
            index is not None and index.dtype in (torch.bool, torch.uint8) for index in args[1]
        ):
            self.syncs.append(f"{func} with a boolean mask (its output size is read on the host)")
        elif func in (aten._to_copy.default, aten.copy_.default):
            source = args[1] if func is aten.copy_.default else args[0]
            target = kwargs.get("device", args[0].device if func is aten.copy_.default else None)
            if source.device.type != "cpu" and target is not None and torch.device(target).type == "cpu":
                self.syncs.append(f"{func} to the host")
        return func(*args, **(kwargs or {}))


def tiny_model(**overrides) -> MJPViTForImageClassification:
    torch.manual_seed(0)
    return MJPViTForImageClassification(MJPViTConfig(**tiny_config_kwargs(**overrides)))


def batch(model, batch_size=4, device="cpu"):
    config = model.config
    pixel_values = torch.randn(batch_size, config.num_channels, config.image_size, config.image_size, device=device)
    labels = torch.randint(0, config.num_labels, (batch_size,), device=device)
    return pixel_values, labels


MODES = {
    "per-batch": dict(jigsaw_per_sample=False),
    "per-sample": dict(jigsaw_per_sample=True),
    "naive": dict(jigsaw_mode="naive"),
    "no-unk-linear-head": dict(use_unk_position_embedding=False, dalr_head="linear"),
}


# --- the detector itself -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "syncing",
    [
        lambda t: t.sum().item(),
        lambda t: bool((t > 0).any()),
        lambda t: t.nonzero(),
        lambda t: t[t > 0],
        lambda t: torch.equal(t, t),
        lambda t: t.unique(),
    ],
    ids=["item", "bool", "nonzero", "mask-index", "equal", "unique"],
)
def test_sync_recorder_catches_host_reads(syncing):
    with SyncRecorder() as recorder:
        syncing(torch.randn(8))
    assert recorder.syncs


def test_sync_recorder_passes_device_side_code():
    t = torch.randn(8)
    with SyncRecorder() as recorder:
        torch.where(t > 0, t, -t).sum()
        t[:, None].expand(8, 3).gather(0, torch.zeros(1, 3, dtype=torch.long))
    assert recorder.syncs == []


def test_meta_device_refuses_host_reads():
    t = torch.randn(8, device="meta")
    for syncing in (lambda: t.sum().item(), lambda: t.nonzero(), lambda: t.cpu(), lambda: bool(t.any())):
        with pytest.raises((RuntimeError, NotImplementedError)):
            syncing()


# --- the model ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", list(MODES))
def test_training_step_never_syncs(mode):
    model = tiny_model(**MODES[mode]).train()
    pixel_values, labels = batch(model)
    for jigsaw in (None, True):  # the coin-flipped step and the forced one
        with SyncRecorder() as recorder:
            out = model(pixel_values, labels=labels, jigsaw=jigsaw)
            out.loss.backward()
        assert recorder.syncs == [], (mode, jigsaw, recorder.syncs)
        assert out.jigsaw_mask is not None


def test_given_jigsaw_and_eval_never_sync():
    model = tiny_model().train()
    pixel_values, labels = batch(model)
    mask = torch.zeros(1, 49, dtype=torch.bool)
    mask[0, [3, 4, 10, 11]] = True
    with SyncRecorder() as recorder:
        model(pixel_values, labels=labels, jigsaw_mask=mask).loss.backward()
        model.eval()
        with torch.no_grad():
            model(pixel_values)
            model(pixel_values, jigsaw=True)
    assert recorder.syncs == []


@pytest.mark.parametrize("mode", ["per-batch", "per-sample", "naive"])
def test_training_forward_runs_on_meta_tensors(mode):
    # A tensor on `meta` holds no data, so any host read (.item(), .cpu(), nonzero, `if t:`) raises here.
    model = tiny_model(**MODES[mode]).to("meta").train()
    pixel_values, labels = batch(model, device="meta")
    out = model(pixel_values, labels=labels, jigsaw=True)
    assert out.loss.device.type == "meta" and out.logits.shape == (4, model.config.num_labels)
    out.loss.backward()
    model.eval()
    assert model(pixel_values).logits.device.type == "meta"


@pytest.mark.parametrize("mode", ["per-batch", "per-sample", "naive"])
def test_training_forward_and_loss_compile_without_graph_breaks(mode):
    torch._dynamo.reset()
    model = tiny_model(**MODES[mode]).train()
    pixel_values, labels = batch(model)

    def training_loss(pixel_values, labels):
        out = model(pixel_values, labels=labels)
        return out.loss, out.jigsaw_mask

    loss, mask = torch.compile(training_loss, fullgraph=True, backend="eager")(pixel_values, labels)
    loss.backward()
    assert torch.isfinite(loss) and mask.shape[-1] == 49


def test_forced_jigsaw_and_eval_compile_without_graph_breaks():
    torch._dynamo.reset()
    model = tiny_model().train()
    pixel_values, labels = batch(model)
    forced = torch.compile(lambda x, y: model(x, labels=y, jigsaw=True).loss, fullgraph=True, backend="eager")
    assert torch.isfinite(forced(pixel_values, labels))
    model.eval()
    expected = model(pixel_values).logits
    evaluated = torch.compile(lambda x: model(x).logits, fullgraph=True, backend="eager")(pixel_values)
    torch.testing.assert_close(evaluated, expected)


def test_training_step_traces_forward_and_backward_in_one_graph():
    # aot_eager traces the joint forward/backward graph: the gradients must match eager mode exactly, with one
    # fixed jigsaw so that both runs shuffle alike.
    torch._dynamo.reset()
    model = tiny_model(jigsaw_per_sample=True).train()
    pixel_values, labels = batch(model)
    generator = torch.Generator().manual_seed(0)
    from mjp_hf.jigsaw import random_jigsaw

    mask, permutation = random_jigsaw(4, (7, 7), 0.25, generator=generator)

    def loss_fn(x, y, mask, permutation):
        return model(x, labels=y, jigsaw_mask=mask, jigsaw_permutation=permutation).loss

    model.zero_grad()
    loss_fn(pixel_values, labels, mask, permutation).backward()
    eager_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    compiled = torch.compile(loss_fn, fullgraph=True, backend="aot_eager")
    compiled(pixel_values, labels, mask, permutation).backward()
    for eager_grad, parameter in zip(eager_grads, model.parameters()):
        torch.testing.assert_close(parameter.grad, eager_grad)


def test_the_schedule_changes_the_dalr_weight_without_recompiling():
    # `set_mjp_schedule` runs every epoch; the weight is a tensor, so one compiled graph serves every value.
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    model = tiny_model(dalr_loss_weight=0.01).train()
    pixel_values, labels = batch(model)
    compiled = torch.compile(
        lambda x, y: model(x, labels=y, jigsaw=False).localization_loss, fullgraph=True, backend="eager"
    )
    compiled(pixel_values, labels)  # transformers' loss sets `config.problem_type` at the first call: a recompile
    base = compiled(pixel_values, labels)
    counters.clear()
    for weight in (0.0, 0.005, 0.0075, 0.01):
        model.set_mjp_schedule(dalr_loss_weight=weight)
        torch.testing.assert_close(compiled(pixel_values, labels), base * weight / 0.01)
    assert counters["stats"]["unique_graphs"] == 0
    # The counter sees a recompile: a weight held as a Python float is baked into the first graph and forces one.
    torch._dynamo.reset()
    counters.clear()
    holder = torch.nn.Linear(3, 1)
    holder.weight_of_loss = 0.01
    scaled = torch.compile(lambda x: holder(x).sum() * holder.weight_of_loss, fullgraph=True, backend="eager")
    for weight in (0.01, 0.005):
        holder.weight_of_loss = weight
        scaled(torch.ones(2, 3))
    assert counters["stats"]["unique_graphs"] == 2
