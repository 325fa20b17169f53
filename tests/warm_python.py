"""Python child processes that start in milliseconds instead of seconds, for tests that need real processes.

Every `python ...` a test starts pays ~4 s of CPU to import torch, transformers and mjp_hf before it does anything.
`WarmPython` starts one *warm* interpreter that imports them once, then forks it for every command: each child is a
real process of its own (its own pid, signals, exit status, open files, session if asked), set up as a fresh
`python -m MODULE`, `python -c CODE` or `python SCRIPT` would be: the working folder, the environment, stdin, stdout
and stderr (a pipe, a file, /dev/null or the test's own), `sys.argv` and `sys.path`, a fresh `__main__`, Python's
default signal handlers (Ctrl-C raises KeyboardInterrupt, SIGTERM kills), and the exit status Python gives a
`SystemExit`, an uncaught exception or an uncaught KeyboardInterrupt. Interpreter shutdown (atexit, non-daemon
threads, flushing) is Python's own.

Where fork or sequenced-packet Unix sockets are missing (macOS, Windows), and with MJP_TESTS_COLD_PYTHON=1 (to rule
the warm interpreter out when a test fails), the fixture is a `ColdPython`: the same interface over plain
`subprocess`, every child a fresh interpreter.

What a warm child cannot give: a module's reaction to environment variables it reads when it is imported (the warm
interpreter imported it with the test's environment; e.g. `HF_HOME` for remote code; `OMP_NUM_THREADS` and
`MKL_NUM_THREADS` are the exception: the child sets torch's thread count from them), and a process in which mjp_hf
or transformers cannot be imported. Tests about those start a plain subprocess.

    warm = WarmPython()                                   # the `warm_python` fixture of conftest.py: one per worker
    child = warm.popen(["-m", "mjp_hf.hub", "layout", ...], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = child.communicate(timeout=60)              # as subprocess.Popen, also .pid .poll() .send_signal()
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time


# The warm interpreter (`python -c SERVER FD MODULE...`): imports the modules, then serves one request at a time from
# the socket FD: a fork per command. The parent reports each child's pid and, when it has reaped it, its wait status
# (a child is reaped at once: a finished child never lingers as a zombie that `os.kill(pid, 0)` calls alive).
SERVER = r"""
import gc, importlib, json, os, select, signal, socket, sys, threading

channel = socket.socket(fileno=int(sys.argv[1]))
OWN_PATH = {os.path.abspath(entry) for entry in os.environ.get("PYTHONPATH", "").split(os.pathsep) if entry}
BASE_PATH = [entry for entry in sys.path[1:] if os.path.abspath(entry) not in OWN_PATH]


def send(**message):
    channel.send(json.dumps(message).encode())


def load(modules):
    for name in modules:
        importlib.import_module(name)
    if threading.active_count() != 1:  # a fork would lose the other threads mid-work
        raise RuntimeError(f"importing {modules} started threads: {threading.enumerate()}")
    # Out of the collector's sight: a child's collections and its shutdown then neither walk nor copy the imported
    # objects (copy-on-write), which takes a fresh interpreter about a second.
    gc.freeze()


def reap(children):
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        children.discard(pid)
        send(exited=pid, status=status)


def serve():
    load(sys.argv[2:])
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)  # the wake-up pipe does the work
    children = set()
    send(ready=os.getpid())
    while True:
        ready, _, _ = select.select([channel, wake_read], [], [])
        if wake_read in ready:
            os.read(wake_read, 4096)
        if channel in ready:
            data, fds, _, _ = socket.recv_fds(channel, 1 << 20, 3)
            if not data:  # the test side is gone: so are its children
                for pid in children:
                    os.kill(pid, signal.SIGKILL)
                raise SystemExit(0)
            request = json.loads(data)
            try:
                load(request["preload"])
            except BaseException as error:
                for fd in fds:
                    os.close(fd)
                send(id=request["id"], error=f"{type(error).__name__}: {error}")
                continue
            pid = os.fork()
            if pid == 0:
                signal.set_wakeup_fd(-1)
                for fd in (wake_read, wake_write):
                    os.close(fd)
                channel.close()
                return request, fds
            children.add(pid)
            for fd in fds:
                os.close(fd)
            send(id=request["id"], started=pid)
        reap(children)


request, fds = serve()
# --- the child: a fresh interpreter's state, then the command at the top level, where Python's own exit handling
# applies (SystemExit, a traceback and status 1, death by SIGINT after an uncaught KeyboardInterrupt).
del serve, load, reap, send
signal.signal(signal.SIGCHLD, signal.SIG_DFL)
signal.signal(signal.SIGINT, signal.default_int_handler)
signal.signal(signal.SIGTERM, signal.SIG_DFL)
if request["new_session"]:
    os.setsid()
for target, fd in enumerate(fds):
    os.dup2(fd, target)
for fd in set(fds) - {0, 1, 2}:
    os.close(fd)
os.chdir(request["cwd"])
threads = request["env"].get("OMP_NUM_THREADS") or request["env"].get("MKL_NUM_THREADS")
if "torch" in sys.modules and threads != (os.environ.get("OMP_NUM_THREADS") or os.environ.get("MKL_NUM_THREADS")):
    if threads and threads.isdigit() and int(threads) > 0:  # what torch and OpenMP read when they are loaded
        sys.modules["torch"].set_num_threads(int(threads))
os.environ.clear()
os.environ.update(request["env"])
argv = request["argv"]
# sys.path as a fresh interpreter builds it: the command's own first entry, the child's PYTHONPATH, then the rest of
# the warm interpreter's (its own first entry and PYTHONPATH left out).
path0 = os.getcwd() if argv[0] == "-m" else "" if argv[0] == "-c" else os.path.dirname(os.path.realpath(argv[0]))
extra = [os.path.abspath(entry) for entry in request["env"].get("PYTHONPATH", "").split(os.pathsep) if entry]
sys.path[:] = [path0, *extra, *(entry for entry in BASE_PATH if entry not in extra)]
if "numpy" in sys.modules:  # a fresh process draws its own global NumPy seed
    sys.modules["numpy"].random.seed()
del channel, request, fds, target, fd, path0, extra, threads
if argv[0] == "-m":
    import runpy

    sys.argv = ["-m", *argv[2:]]
    runpy._run_module_as_main(argv[1])  # what `python -m` runs
elif argv[0] == "-c":
    import types

    main = types.ModuleType("__main__")
    sys.modules["__main__"] = main
    sys.argv = ["-c", *argv[2:]]
    exec(compile(argv[1], "<string>", "exec"), main.__dict__)
else:
    import runpy

    sys.argv = list(argv)
    runpy.run_path(argv[0], run_name="__main__")
"""


class _Runs:
    """`run`, as `subprocess.run` has it, over the class's `popen` (a child's pipes close when `communicate` returns)."""

    def run(self, args, *, timeout=None, capture_output=False, check=False, **kwargs) -> subprocess.CompletedProcess:
        if capture_output:
            kwargs["stdout"] = kwargs["stderr"] = subprocess.PIPE
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        child = self.popen(args, **kwargs)
        try:
            out, err = child.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            child.kill()
            child.communicate()
            raise
        done = subprocess.CompletedProcess(child.args, child.returncode, out, err)
        if check:
            done.check_returncode()
        return done


class WarmPython(_Runs):
    """A warm interpreter that has imported `preload` (default: mjp_hf, and with it torch and transformers); its
    `popen` and `run` mirror `subprocess.Popen` and `subprocess.run` for Python command lines."""

    def __init__(self, preload=("mjp_hf",), env=None):
        self._channel, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.server = subprocess.Popen(
            [sys.executable, "-c", SERVER, str(theirs.fileno()), *preload],
            pass_fds=[theirs.fileno()],
            stdin=subprocess.DEVNULL,
            env=env,
        )
        theirs.close()
        self._lock = threading.Lock()  # one request on the socket at a time
        self._changed = threading.Condition()
        self._started: dict[int, int | str] = {}  # request id: pid, or the error of the warm interpreter
        self._statuses: dict[int, int] = {}  # pid: wait status
        self._next_id = 0
        self._gone = False
        ready = json.loads(self._channel.recv(1 << 16) or b"{}")
        if "ready" not in ready:
            self.server.wait()
            raise RuntimeError(f"the warm interpreter did not start (exit {self.server.returncode})")
        self._reader = threading.Thread(target=self._read, name="warm-python-reader", daemon=True)
        self._reader.start()

    def _read(self):
        while True:
            try:
                data = self._channel.recv(1 << 16)
            except OSError:
                data = b""
            with self._changed:
                if not data:
                    self._gone = True
                    self._changed.notify_all()
                    return
                message = json.loads(data)
                if "exited" in message:
                    self._statuses[message["exited"]] = message["status"]
                elif "started" in message:
                    self._statuses.pop(message["started"], None)  # an earlier child's pid, used again
                    self._started[message["id"]] = message["started"]
                else:
                    self._started[message["id"]] = message["error"]
                self._changed.notify_all()

    def popen(
        self,
        args,
        *,
        cwd=None,
        env=None,
        stdin=None,
        stdout=None,
        stderr=None,
        start_new_session=False,
        text=False,
        universal_newlines=None,
        preload=(),
    ) -> WarmChild:
        """Start `args` (`["-m", MODULE, ...]`, `["-c", CODE, ...]` or `[SCRIPT, ...]`, with or without
        `sys.executable` in front) in a forked child. `preload`: modules the warm interpreter imports first (never
        the module `-m` runs: it would then exist twice)."""
        args = [os.fspath(arg) for arg in args]
        if args and args[0] == sys.executable:
            args = args[1:]
        child = WarmChild(self, args, bool(text or universal_newlines))
        to_close = []
        fds = [
            child._stream(0, stdin, to_close),
            child._stream(1, stdout, to_close),
            child._stream(2, stderr, to_close),
        ]
        if stderr == subprocess.STDOUT:
            fds[2] = fds[1]
        request = {
            "argv": args,
            "cwd": os.fspath(cwd) if cwd is not None else os.getcwd(),
            "env": dict(os.environ if env is None else env),
            "new_session": bool(start_new_session),
            "preload": list(preload),
        }
        with self._lock:
            request["id"] = self._next_id
            self._next_id += 1
            try:
                socket.send_fds(self._channel, [json.dumps(request).encode()], fds)
            finally:
                for fd in to_close:
                    os.close(fd)
            with self._changed:
                self._changed.wait_for(lambda: request["id"] in self._started or self._gone)
                started = self._started.pop(request["id"], "the warm interpreter is gone")
        if isinstance(started, str):
            child._close_pipes()
            raise RuntimeError(f"could not start {args}: {started}")
        child.pid = started
        return child

    def _status(self, pid: int, timeout: float | None) -> int | None:
        with self._changed:
            self._changed.wait_for(lambda: pid in self._statuses or self._gone, timeout)
            return self._statuses.get(pid)

    def close(self) -> None:
        """Stop the warm interpreter (it kills any child still running)."""
        self._channel.shutdown(socket.SHUT_RDWR)  # wakes the reader thread; the warm interpreter reads the end
        self._channel.close()
        self.server.wait(timeout=60)


class WarmChild:
    """One forked child, with the parts of `subprocess.Popen` tests use."""

    def __init__(self, warm: WarmPython, args, text: bool):
        self._warm, self.args, self._text = warm, args, text
        self.pid: int | None = None
        self.returncode: int | None = None
        self.stdin = self.stdout = self.stderr = None
        self._buffers: dict[str, list[bytes]] = {}

    def _stream(self, target: int, spec, to_close: list[int]) -> int:
        """The file descriptor the child gets as `target` (0, 1 or 2) for a Popen-style `spec`."""
        if spec is None:
            return target  # the test's own stdin, stdout or stderr, as Popen inherits them
        if spec == subprocess.STDOUT:
            return 1  # replaced by the child's stdout in popen
        if spec == subprocess.DEVNULL:
            fd = os.open(os.devnull, os.O_RDWR)
            to_close.append(fd)
            return fd
        if spec == subprocess.PIPE:
            read, write = os.pipe()
            mine, theirs = (write, read) if target == 0 else (read, write)
            to_close.append(theirs)
            name = ("stdin", "stdout", "stderr")[target]
            setattr(self, name, open(mine, "wb" if target == 0 else "rb", buffering=0))
            return theirs
        return spec if isinstance(spec, int) else spec.fileno()

    def _close_pipes(self):
        for stream in (self.stdin, self.stdout, self.stderr):
            if stream is not None and not stream.closed:
                stream.close()

    def poll(self) -> int | None:
        return self.wait(timeout=0, raise_on_timeout=False)

    def wait(self, timeout: float | None = None, raise_on_timeout: bool = True) -> int | None:
        if self.returncode is None:
            status = self._warm._status(self.pid, timeout)
            if status is None:
                if not raise_on_timeout:
                    return None
                if self._warm._gone:
                    raise RuntimeError("the warm interpreter is gone")
                raise subprocess.TimeoutExpired(self.args, timeout)
            self.returncode = os.waitstatus_to_exitcode(status)
            with self._warm._changed:
                self._warm._statuses.pop(self.pid, None)
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.returncode is None:
            os.kill(self.pid, signum)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def communicate(self, input=None, timeout: float | None = None):
        """Read stdout and stderr (the pipes among them) to their end, then wait; as `Popen.communicate`, a
        `TimeoutExpired` keeps what was read, and a later call goes on from there."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if self.stdin is not None and not self.stdin.closed:
            if input:
                self.stdin.write(input.encode() if isinstance(input, str) else input)
            self.stdin.close()
        streams = {name: getattr(self, name) for name in ("stdout", "stderr") if getattr(self, name) is not None}
        with selectors.DefaultSelector() as selector:
            for name, stream in streams.items():
                if not stream.closed:
                    selector.register(stream, selectors.EVENT_READ, name)
            while selector.get_map():
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise subprocess.TimeoutExpired(self.args, timeout)
                for key, _ in selector.select(remaining):
                    chunk = os.read(key.fd, 1 << 16)
                    if chunk:
                        self._buffers.setdefault(key.data, []).append(chunk)
                    else:
                        selector.unregister(key.fileobj)
                        key.fileobj.close()
        self.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return tuple(self._output(name) if name in streams else None for name in ("stdout", "stderr"))

    def _output(self, name: str):
        data = b"".join(self._buffers.get(name, []))
        if not self._text:
            return data
        return data.decode("utf-8", errors="replace").replace("\r\n", "\n").replace("\r", "\n")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._close_pipes()
        self.wait()


class WarmSubprocess:
    """The `subprocess` module, but for `Popen` of a Python command line (`[sys.executable, ...]`), which starts a
    warm child: set it as a module's `subprocess` (monkeypatch) to make the Python processes that module starts warm.
    Anything else goes to `subprocess` itself."""

    def __init__(self, warm: WarmPython, preload=()):
        self._warm, self._preload = warm, tuple(preload)

    def __getattr__(self, name):
        return getattr(subprocess, name)

    def Popen(self, args, **kwargs):  # noqa: N802 - the name it stands in for
        if not args or args[0] != sys.executable:
            return subprocess.Popen(args, **kwargs)
        return self._warm.popen(args, preload=self._preload, **kwargs)


class ColdPython(_Runs):
    """`WarmPython`'s interface over plain `subprocess` (every child a fresh interpreter): where fork or Unix
    sequenced-packet sockets are missing, or with MJP_TESTS_COLD_PYTHON=1 to rule the warm interpreter out."""

    def popen(self, args, *, preload=(), env=None, **kwargs) -> subprocess.Popen:
        args = [os.fspath(arg) for arg in args]
        if not args or args[0] != sys.executable:
            args = [sys.executable, *args]
        if env is None:  # the modules the test imports, as the warm interpreter has them
            env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        return subprocess.Popen(args, env=env, **kwargs)

    def close(self) -> None:
        pass


def python_for_tests():
    """A `WarmPython` where this system allows one, else a `ColdPython`."""
    if os.environ.get("MJP_TESTS_COLD_PYTHON") == "1" or not (hasattr(os, "fork") and hasattr(socket, "send_fds")):
        return ColdPython()
    try:
        socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)[0].close()
    except OSError:  # macOS: no sequenced-packet Unix sockets
        return ColdPython()
    return WarmPython()
