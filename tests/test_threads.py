"""mjp_hf.training.threads: the thread count follows the cores other processes leave idle, never against the user's setting.

Readings are injected (no timing here: benchmarks/busy_machine.py measures the speed)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from mjp_hf.training.threads import AdaptiveThreads, AdaptiveThreadsCallback, CpuContention, user_thread_setting


ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def two_threads():
    """torch at 2 threads for the test (the suite runs at 1), restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def replay(readings):
    """A reader that returns the given readings, one per call."""
    readings = iter(readings)
    return lambda: next(readings)


def controller(readings, environ=None, **kwargs):
    return AdaptiveThreads(
        max_threads=2, cores=2, reader=replay(readings), interval_s=0.0, environ=environ or {}, **kwargs
    )


def test_threads_follow_the_cores_others_leave_idle(two_threads):
    # Others' cores, one reading per update: idle, one busy process, two, daemons' noise, idle again.
    readings = [0.0, 1.0, 1.9, 0.1, 0.05, 0.0, 0.6, 0.15, 0.1]
    threads = controller(readings)
    seen = [threads.update() for _ in readings]
    # Down at the first busy reading; up only after two quiet readings in a row; 0.1-0.15 cores of noise is quiet.
    assert seen == [2, 1, 1, 1, 2, 2, 1, 1, 2]
    assert torch.get_num_threads() == 2 and threads.switches == 4


def test_target_on_a_bigger_machine():
    threads = AdaptiveThreads(max_threads=16, cores=16, reader=replay([]), environ={})
    assert [threads.target(others) for others in (0.0, 0.2, 0.3, 3.5, 15.9, 40.0)] == [16, 16, 15, 12, 1, 1]
    assert AdaptiveThreads(max_threads=4, cores=16, reader=replay([]), environ={}).target(0.0) == 4


@pytest.mark.parametrize(
    "environ", [{"OMP_NUM_THREADS": "2"}, {"MKL_NUM_THREADS": "2"}, {"MJP_ADAPTIVE_THREADS": "0"}]
)
def test_a_thread_count_the_user_set_is_never_overridden(two_threads, environ):
    threads = controller([1.5, 1.5], environ=environ)
    assert not threads.enabled and user_thread_setting(environ) == next(iter(environ))
    assert [threads.update(), threads.observe(1.5)] == [2, 2] and torch.get_num_threads() == 2


def test_the_wait_policy_the_user_set_is_left_alone(two_threads, monkeypatch):
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    monkeypatch.setenv("GOMP_SPINCOUNT", "1000")
    before = dict(os.environ)
    threads = AdaptiveThreads(max_threads=2, cores=2, reader=replay([1.0, 0.0, 0.0]), interval_s=0.0)
    assert threads.enabled  # a wait policy does not fix the count
    assert [threads.update() for _ in range(3)] == [1, 1, 2]
    assert dict(os.environ) == before  # no variable written or changed


def test_a_count_set_elsewhere_while_running_stands(two_threads):
    threads = controller([1.0, 0.0, 0.0, 0.0])
    assert threads.update() == 1
    torch.set_num_threads(2)  # the user, mid-run
    assert [threads.update(), threads.update()] == [2, 2] and not threads.enabled
    assert torch.get_num_threads() == 2


def test_readings_are_taken_at_most_once_per_interval(two_threads):
    calls = []

    def reader():
        calls.append(1)
        return 1.0

    threads = AdaptiveThreads(max_threads=2, cores=2, reader=reader, interval_s=3600.0, environ={})
    assert [threads.update() for _ in range(100)] == [2] * 100 and not calls  # the first interval has not passed


def test_watch_updates_between_items(two_threads):
    threads = controller([1.0, 1.0, 1.0])
    seen = [(item, torch.get_num_threads()) for item in threads.watch("abc")]
    assert seen == [("a", 2), ("b", 1), ("c", 1)]


def _write_stat(path, per_cpu_ticks):
    """A /proc/stat with the given busy (user) and idle ticks per cpu."""
    lines = [f"cpu  {int(sum(b for b, _ in per_cpu_ticks))} 0 0 {int(sum(i for _, i in per_cpu_ticks))} 0 0 0 0 0 0"]
    lines += [f"cpu{n} {int(busy)} 0 0 {int(idle)} 0 0 0 0 0 0" for n, (busy, idle) in enumerate(per_cpu_ticks)]
    path.write_text("\n".join(lines + ["intr 0", "ctxt 0", "procs_running 1"]) + "\n")


def test_cpu_contention_is_machine_time_minus_own_time_on_our_cores(tmp_path):
    stat = tmp_path / "stat"
    _write_stat(stat, [(100, 900), (100, 900), (100, 900)])
    clock, own = [10.0], [5.0]
    reader = CpuContention(str(stat), clock=lambda: clock[0], own_cpu_seconds=lambda: own[0], cpus=[0, 1])
    ticks = reader.ticks_per_second
    # Over 2 s: cpu0 and cpu1 busy for 1.5 s each (3 s), of which this process 1.2 s; cpu2 (not ours) busy 2 s.
    _write_stat(stat, [(100 + 1.5 * ticks, 900), (100 + 1.5 * ticks, 900), (100 + 2 * ticks, 900)])
    clock[0], own[0] = 12.0, 6.2
    assert reader() == pytest.approx((3.0 - 1.2) / 2)
    clock[0], own[0] = 13.0, 7.2  # nothing else ran: this process alone
    _write_stat(stat, [(100 + 2.0 * ticks, 900), (100 + 2.0 * ticks, 900), (100 + 2 * ticks, 900)])
    assert reader() == 0.0


def test_no_proc_stat_means_no_change(tmp_path, two_threads):
    reader = CpuContention(str(tmp_path / "missing"))
    assert not reader.available and reader() is None
    threads = AdaptiveThreads(max_threads=2, cores=2, reader=reader, interval_s=0.0, environ={})
    assert not threads.enabled and threads.update() == 2


def test_the_callback_leaves_accelerator_runs_alone(two_threads):
    threads = controller([1.0, 1.0])
    callback = AdaptiveThreadsCallback(threads)
    callback.on_step_end(SimpleNamespace(device=torch.device("cuda")), None, None)
    assert torch.get_num_threads() == 2
    callback.on_step_end(SimpleNamespace(device=torch.device("cpu")), None, None)
    assert torch.get_num_threads() == 1


# The example runs the callback: tests/test_example.py::test_the_example_adapts_threads_between_steps_and_batches.


def test_one_controller_per_process_and_it_can_stand_down(two_threads):
    from mjp_hf.training import threads as module

    shared = module.adaptive_threads()
    assert module.adaptive_threads() is shared
    enabled = shared.enabled
    try:
        shared.stand_down()
        assert not shared.enabled and shared.observe(2.0) == 2 and torch.get_num_threads() == 2
    finally:
        shared.enabled = enabled


def test_watch_leaves_accelerator_loops_alone(two_threads):
    threads = controller([1.0, 1.0])
    assert list(threads.watch(range(3), device="cuda")) == [0, 1, 2] and torch.get_num_threads() == 2


def _busy_shared_controller(monkeypatch):
    """The process-wide controller, replaced by one that reads a busy machine (others use 1.5 of 2 cores) at every
    update: whatever runs it drops torch to one thread."""
    from mjp_hf.training import threads as module

    busy = AdaptiveThreads(max_threads=2, cores=2, reader=lambda: 1.5, interval_s=0.0, environ={})
    monkeypatch.setattr(module, "_shared", busy)
    return busy


def _tiny_model():
    from mjp_hf import MJPViTForImageClassification
    from mjp_hf.training.presets import config_from_preset

    torch.manual_seed(0)
    shape = dict(num_labels=2, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    return MJPViTForImageClassification(config_from_preset("demo", **shape)).eval()


def test_a_library_call_leaves_the_thread_count_alone_on_a_busy_machine(two_threads, monkeypatch):
    """`robustness.predict` and the other evaluation loops change no process-wide setting: a notebook's torch keeps
    its thread count however busy the machine. Their `between_batches` hook runs after each batch."""
    from mjp_hf.evaluation import robustness

    busy = _busy_shared_controller(monkeypatch)
    model, pixel_values = _tiny_model(), torch.randn(6, 3, 28, 28)
    robustness.predict(model, pixel_values, batch_size=2)
    robustness.jigsaw_accuracy(model, pixel_values, torch.zeros(6, dtype=torch.long), batch_size=2, progress=False)
    robustness.prediction_consistency(model, pixel_values, batch_size=2, progress=False)
    assert torch.get_num_threads() == 2 and busy.switches == 0
    calls = []
    robustness.predict(model, pixel_values, batch_size=2, between_batches=lambda: calls.append(1))
    assert len(calls) == 3, "one call after each of the 3 batches"


def _run_evaluation_command_line(name, model, tmp_path, image_folder, monkeypatch, *flags):
    """`python -m mjp_hf.evaluation.<name>` in this process on `model` (saved with two labels) and two image
    classes, writing to `tmp_path / "out"`."""
    import runpy
    import warnings

    model_dir = tmp_path / "model"
    model.config.id2label, model.config.label2id = {0: "cat", 1: "dog"}, {"cat": 0, "dog": 1}
    model.save_pretrained(model_dir)
    data = tmp_path / "data" / "test"
    for label in ("cat", "dog"):
        shutil.copytree(image_folder / label, data / label)
    argv = [name, "--model_name_or_path", str(model_dir), "--output_dir", str(tmp_path / "out")]
    argv += ["--data_dir", str(tmp_path / "data"), "--device", "cpu", *flags]
    monkeypatch.setattr(sys, "argv", argv)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # runpy: the module is already imported
        runpy.run_module(f"mjp_hf.evaluation.{name}", run_name="__main__")


def test_the_command_line_adapts_the_thread_count(two_threads, monkeypatch, tmp_path, image_folder):
    """`python -m mjp_hf.evaluation.robustness` runs its main through `run_command_line`, which passes the
    process's controller: on a busy machine the evaluation drops to one thread."""
    busy = _busy_shared_controller(monkeypatch)
    _run_evaluation_command_line(
        "robustness", _tiny_model(), tmp_path, image_folder, monkeypatch, "--corruptions", "none", "--batch_size", "4"
    )
    assert (tmp_path / "out" / "robustness.json").is_file()
    assert torch.get_num_threads() == 1 and busy.switches == 1


def test_no_evaluation_module_imports_the_thread_controller():
    """The evaluation modules import nothing of `mjp_hf.training.threads` (their command lines get it through
    `mjp_hf.training.command_line`, inside `if __name__ == "__main__"`)."""
    import ast

    import mjp_hf.evaluation

    folder = Path(mjp_hf.evaluation.__file__).parent
    controller_names = {"threads", "adaptive_threads", "AdaptiveThreads", "AdaptiveThreadsCallback"}

    def imports_the_controller(path: Path) -> bool:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import) and any(alias.name.split(".")[-1] == "threads" for alias in node.names):
                return True
            if isinstance(node, ast.ImportFrom) and (
                (node.module or "").split(".")[-1] == "threads"
                or any(alias.name in controller_names for alias in node.names)
            ):
                return True
        return False

    importing = sorted(
        path.relative_to(folder).as_posix() for path in folder.rglob("*.py") if imports_the_controller(path)
    )
    assert importing == []
    code = (
        "import sys; import mjp_hf.evaluation.robustness, mjp_hf.evaluation.position, mjp_hf.evaluation.privacy; "
        "print('mjp_hf.training.threads' in sys.modules)"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert loaded.stdout.strip() == "False", loaded.stdout + loaded.stderr[-2000:]


def test_the_privacy_audit_leaves_the_thread_count_alone_and_its_command_line_adapts_it(
    two_threads, monkeypatch, tmp_path, image_folder
):
    """`evaluate_privacy` as a library call leaves torch's thread count alone on a busy machine; `python -m
    mjp_hf.evaluation.privacy` runs through `run_command_line`, whose controller drops it to one thread."""
    from mjp_hf.evaluation import privacy

    busy = _busy_shared_controller(monkeypatch)
    model = _tiny_model()
    arguments = dict(attacks=("analytic",), multi_round_counts=(), progress=False)
    privacy.evaluate_privacy(
        model, torch.randn(2, 3, 28, 28), torch.tensor([1, 0]), privacy.PixelNormalization(), **arguments
    )
    assert torch.get_num_threads() == 2 and busy.switches == 0

    _run_evaluation_command_line(
        "privacy", model, tmp_path, image_folder, monkeypatch, "--num_images", "2", "--attacks", "analytic"
    )
    assert (tmp_path / "out" / "privacy.json").is_file()
    assert torch.get_num_threads() == 1 and busy.switches == 1


def test_a_run_whose_threads_moved_says_so_at_the_end(two_threads, caplog):
    """Steps at each count are reported at WARNING (a run slowed by another process should say why); a run whose
    count never moved says nothing."""
    cpu = SimpleNamespace(device=torch.device("cpu"))
    callback = AdaptiveThreadsCallback(controller([0.0, 0.0, 1.0, 1.0, 1.0]))
    for _ in range(4):
        callback.on_step_end(cpu, None, None)
    with caplog.at_level("WARNING", logger="mjp_hf.training.threads"):
        callback.on_train_end(cpu, None, None)
    assert callback.steps_at == {2: 3, 1: 1}, "the third reading finds a core taken: the fourth step runs at 1"
    assert "training steps 3 at 2, 1 at 1 thread(s) (1 changes" in caplog.text

    caplog.clear()
    torch.set_num_threads(2)
    steady = AdaptiveThreadsCallback(controller([0.0] * 5))
    for _ in range(4):
        steady.on_step_end(cpu, None, None)
    with caplog.at_level("WARNING", logger="mjp_hf.training.threads"):
        steady.on_train_end(cpu, None, None)
    assert steady.steps_at == {2: 4} and caplog.text == ""
