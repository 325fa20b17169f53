"""The warm interpreter of the process tests (`warm_python.py`): its children behave as fresh `python` processes in
everything those tests rely on, each case beside what `subprocess` gives for the same command."""

import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from warm_python import WarmPython


@pytest.fixture(autouse=True)
def _only_warm(warm_python):
    if not isinstance(warm_python, WarmPython):
        pytest.skip("every child is a fresh interpreter here (ColdPython)")


CHECK = """
import json, os, signal, sys
print(json.dumps({
    "argv": sys.argv, "cwd": os.getcwd(), "path": sys.path, "flag": os.environ.get("WARM_FLAG"),
    "sid": os.getsid(0) == os.getpid(), "main": __name__, "sigint": signal.getsignal(signal.SIGINT).__name__,
    "sigterm": int(signal.getsignal(signal.SIGTERM)), "mjp_hf": "mjp_hf" in sys.modules,
    "threads": __import__("torch").get_num_threads(),
}))
print("to stderr", file=sys.stderr)
"""


def _both(warm_python, args, **kwargs):
    fresh = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=60, **kwargs)
    warm = warm_python.run(args, capture_output=True, text=True, timeout=60, **kwargs)
    return fresh, warm


def test_a_child_gets_the_command_line_folder_environment_streams_and_signal_handlers(warm_python, tmp_path):
    import json

    script = tmp_path / "check.py"
    script.write_text(CHECK)
    env = {**os.environ, "WARM_FLAG": "on", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(tmp_path / "lib")}
    without_path = {name: value for name, value in env.items() if name != "PYTHONPATH"}
    for args, env in ((["-c", CHECK, "a b"], env), ([str(script), "x", "y"], without_path)):
        fresh, warm = _both(warm_python, args, cwd=tmp_path, env=env, start_new_session=True)
        assert fresh.returncode == warm.returncode == 0, warm.stderr
        assert warm.stderr == fresh.stderr == "to stderr\n"
        seen, expected = json.loads(warm.stdout), json.loads(fresh.stdout)
        assert seen.pop("mjp_hf") and not expected.pop("mjp_hf")  # the one difference: what is imported already
        assert seen == expected and seen["flag"] == "on" and seen["sid"] and seen["threads"] == 1


def test_python_dash_m_runs_the_module_as_main(warm_python, tmp_path):
    (tmp_path / "warm_probe.py").write_text(CHECK)
    fresh, warm = _both(warm_python, ["-m", "warm_probe", "--flag"], cwd=tmp_path)
    assert warm.returncode == 0 and '"main": "__main__"' in warm.stdout
    assert warm.stdout.replace('"mjp_hf": true', '"mjp_hf": false') == fresh.stdout


@pytest.mark.parametrize(
    "code, expected",
    [
        ("raise SystemExit(3)", 3),
        ("raise SystemExit('a message')", 1),
        ("raise ValueError('boom')", 1),
        ("raise KeyboardInterrupt", -signal.SIGINT),
        ("import os, signal; os.kill(os.getpid(), signal.SIGTERM); import time; time.sleep(60)", -signal.SIGTERM),
        ("import atexit; atexit.register(print, 'at exit')", 0),
    ],
)
def test_exit_status_and_output_are_those_of_a_fresh_interpreter(warm_python, code, expected):
    fresh, warm = _both(warm_python, ["-c", code])
    assert warm.returncode == fresh.returncode == expected
    assert warm.stdout == fresh.stdout
    assert warm.stderr.splitlines()[-1:] == fresh.stderr.splitlines()[-1:]


def test_signals_reach_a_waiting_child_and_a_finished_one_is_gone_at_once(warm_python, tmp_path):
    ready = tmp_path / "ready"
    code = f"import pathlib, time; pathlib.Path({str(ready)!r}).touch(); time.sleep(60)"
    for signum, status in ((signal.SIGINT, -signal.SIGINT), (signal.SIGTERM, -signal.SIGTERM)):
        ready.unlink(missing_ok=True)
        child = warm_python.popen(["-c", code], stderr=subprocess.PIPE)
        while not ready.exists():
            assert child.poll() is None
            time.sleep(0.01)
        child.send_signal(signum)
        _, err = child.communicate(timeout=30)
        assert child.returncode == status, err
        with pytest.raises(ProcessLookupError):  # reaped: no zombie that looks alive
            os.kill(child.pid, 0)


def test_children_started_from_threads_run_side_by_side(warm_python, tmp_path):
    """Two children at once, each waiting for the other's file: they only finish if both run together."""
    code = "import pathlib, sys, time\npathlib.Path(sys.argv[1]).touch()\nwhile not pathlib.Path(sys.argv[2]).exists(): time.sleep(0.01)"
    a, b = tmp_path / "a", tmp_path / "b"
    results = {}

    def start(name, mine, theirs):
        results[name] = warm_python.run(["-c", code, str(mine), str(theirs)], timeout=60).returncode

    threads = [threading.Thread(target=start, args=("a", a, b)), threading.Thread(target=start, args=("b", b, a))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == {"a": 0, "b": 0}


def test_output_goes_to_a_file_or_merges_into_stdout(warm_python, tmp_path):
    log = tmp_path / "log"
    with open(log, "w") as handle:
        child = warm_python.popen(
            ["-c", "import sys; print('out', flush=True); print('err', file=sys.stderr)"],
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
        assert child.wait(timeout=60) == 0
    assert log.read_text() == "out\nerr\n"


def test_a_wait_that_times_out_says_so_and_the_child_can_still_be_killed(warm_python):
    child = warm_python.popen(["-c", "import time; time.sleep(60)"])
    with pytest.raises(subprocess.TimeoutExpired):
        child.wait(timeout=0.2)
    child.kill()
    assert child.wait(timeout=30) == -signal.SIGKILL
