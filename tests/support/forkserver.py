"""Python processes for the tests, forked from an interpreter that has already
imported uvicorn and Django.

A test run starts about a hundred uvicorn servers and as many ``manage.py``
and ``python -c`` commands. Each fresh interpreter spends about half a second
of CPU importing uvicorn, Django and their dependencies before it reads a
setting, two thirds of what a server costs until its first answer (0.65
CPU-seconds): on CI's two shared cores, minutes in all. Here a process of the
test run (the fork server, ``python -m tests.support.forkserver``) imports
those modules once and forks a child for each such command (0.22 CPU-seconds
for a server). The child takes the command's environment, working directory
and standard streams, then runs it as the interpreter would (``-m module``,
``script.py`` or ``-c code``), and ends as it does (non-daemon threads
joined, then the atexit callbacks): a real uvicorn, a real ``manage.py``,
configured from scratch. It is killed if the fork server dies.

Only modules that keep nothing read from the environment or Django's settings
at import are imported before the fork (``PRELOADED``: not prometheus_client,
nor notify's or the project's modules); the fork server checks that Django's
settings are still unread and that it runs no other thread before each fork.
What a child still shares with the fork server: the hash seed (``random`` is
reseeded at each fork), the locale and the standard streams' encoding, and
the preloaded modules, so that one used without its own import statement
would be found here and not in a fresh interpreter.

:func:`popen` and :func:`run` stand in for ``subprocess.Popen`` and
``subprocess.run`` (with ``capture_output=True, text=True``). They fork only
``sys.executable`` commands, through the fork server for their interpreter
variables (``PYTHON*`` but ``PYTHONUNBUFFERED``, which the child applies),
started once for each such set; ``NOTIFY_TEST_FORK=0`` starts every command
afresh instead.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parents[2]

# Imported by the fork server before it forks: none of them reads os.environ
# or Django's settings at import (prometheus_client does, and notify's and the
# project's modules read settings: the children import those).
PRELOADED = (
    "asyncio",
    "uvloop",
    "httptools",
    "click",
    "uvicorn.main",
    "uvicorn.config",
    "uvicorn.server",
    "uvicorn.loops.uvloop",
    "uvicorn.protocols.http.httptools_impl",
    "uvicorn.lifespan.off",
    "asgiref.sync",
    "redis.asyncio",
    "django.db.models",
    "django.db.backends.sqlite3.base",
    "django.http",
    "django.forms",
    "django.core.handlers.asgi",
    "django.core.management",
    "django.contrib.staticfiles.handlers",
    "django.contrib.auth.hashers",
    "django.contrib.messages.api",
    "django.middleware.csrf",
    "django.views.generic",
    "django.template.loader",
    "django.template.backends.django",
)


# The fork server ------------------------------------------------------------


def _serve(control: socket.socket) -> None:
    """Fork a child for each request on ``control`` until it closes."""
    import importlib

    for name in PRELOADED:
        importlib.import_module(name)
    from django.conf import settings

    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    signal.set_wakeup_fd(wake_w)
    children: dict[int, socket.socket] = {}  # pid -> its status socket
    try:
        while True:
            readable, _, _ = select.select([control.fileno(), wake_r], [], [])
            if wake_r in readable:
                os.read(wake_r, 512)
                _reap(children)
            if control.fileno() not in readable:
                continue
            data, fds, _, _ = socket.recv_fds(control, 1 << 20, 4)
            if not data:
                return
            request = json.loads(data)
            status = socket.socket(fileno=fds[3])
            if settings.configured or threading.active_count() != 1:
                _reply(status, {"error": "fork server not pristine"})
                status.close()
                for fd in fds[:3]:
                    os.close(fd)
                continue
            pid = os.fork()
            if pid == 0:  # the child: never returns to this loop
                try:
                    _die_with_parent()
                    control.close()
                    for other in children.values():
                        other.close()
                    status.close()
                    signal.set_wakeup_fd(-1)
                    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                    os.close(wake_r)
                    os.close(wake_w)
                    _child(request, fds[:3])
                finally:
                    os._exit(1)
            for fd in fds[:3]:
                os.close(fd)
            if _reply(status, {"pid": pid}):
                children[pid] = status
            else:  # the test gave up waiting for it: nobody would stop it
                os.kill(pid, signal.SIGKILL)
                status.close()
            _reap(children)
    finally:
        _stop_all(children)


def _reap(children: dict[int, socket.socket]) -> None:
    while True:
        try:
            pid, wait_status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        status = children.pop(pid, None)
        if status is not None:
            _reply(status, {"exit": os.waitstatus_to_exitcode(wait_status)})
            status.close()


def _reply(status: socket.socket, message: dict[str, Any]) -> bool:
    try:
        status.send(json.dumps(message).encode())
    except OSError:  # the test side has closed its end
        return False
    return True


def _stop_all(children: dict[int, socket.socket]) -> None:
    """The test run is gone: stop what it left running, as its fixtures would."""
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    for _ in range(100):
        if not children:
            return
        select.select([], [], [], 0.05)
        _reap(children)
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _die_with_parent() -> None:
    """SIGKILL when the fork server dies (so when the test run does): a
    server a run started never outlives it."""
    import ctypes

    pr_set_pdeathsig = 1
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)


def _child(request: dict[str, Any], stdio: list[int]) -> None:
    """Become the requested command; exit with its exit status."""
    for target, fd in enumerate(stdio):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    unbuffered = bool(request["env"].get("PYTHONUNBUFFERED"))
    # New standard streams on the new descriptors, buffered as the
    # interpreter buffers them (stderr by line, or nothing when unbuffered).
    encoding, errors = sys.stdout.encoding, sys.stdout.errors or "strict"
    streams = {
        "stdin": io.TextIOWrapper(
            io.BufferedReader(io.FileIO(0, "r", closefd=False)), encoding, errors
        ),
        "stdout": _output(1, encoding, errors, unbuffered, by_line=False),
        "stderr": _output(2, encoding, "backslashreplace", unbuffered, by_line=True),
    }
    for name, stream in streams.items():
        setattr(sys, name, stream)
        setattr(sys, f"__{name}__", stream)
    code, interrupted = 0, False
    try:
        code = _run(request["argv"])
    except SystemExit as stop:
        code = _exit_code(stop)
    except KeyboardInterrupt:
        _print_uncaught()
        interrupted = True
    except BaseException:
        _print_uncaught()
        code = 1
    try:
        # As the interpreter ends: wait for the threads that are not daemons
        # (and the executors' workers), then the atexit callbacks.
        import atexit

        threading._shutdown()  # type: ignore[attr-defined]
        atexit._run_exitfuncs()
    finally:
        _flush()
        if interrupted:  # as an interpreter ended by Ctrl-C does
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)
        os._exit(code)


def _output(
    fd: int, encoding: str, errors: str, unbuffered: bool, by_line: bool
) -> io.TextIOWrapper:
    raw = io.FileIO(fd, "w", closefd=False)
    if unbuffered:
        return io.TextIOWrapper(raw, encoding, errors, write_through=True)
    return io.TextIOWrapper(
        io.BufferedWriter(raw), encoding, errors, line_buffering=by_line
    )


def _run(argv: list[str]) -> int:
    import runpy

    def first_path(entry: str) -> None:  # as the interpreter's sys.path[0]
        if not sys.flags.safe_path:
            sys.path[0] = entry

    sys.argv = list(argv)
    if argv[0] == "-m":
        sys.argv = [argv[1], *argv[2:]]  # runpy puts the module's path first
        first_path(os.getcwd())
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
    elif argv[0] == "-c":
        sys.argv = ["-c", *argv[2:]]
        first_path("")
        if sys.version_info >= (3, 13):  # its tracebacks quote ``-c`` code
            import linecache

            lines = argv[1].splitlines(keepends=True)
            linecache.cache["<string>"] = (len(argv[1]), None, lines, "<string>")
        _exec_main(argv[1], "<string>")
    else:
        script = os.path.abspath(argv[0])  # its __file__ is absolute
        first_path(os.path.dirname(script))
        with open(script, "rb") as source:
            _exec_main(source.read(), script, __file__=script)
    return 0


def _exec_main(source: str | bytes, filename: str, **names: str) -> None:
    main = type(sys)("__main__")
    main.__dict__.update(names, __builtins__=__builtins__)
    sys.modules["__main__"] = main
    exec(compile(source, filename, "exec"), main.__dict__)


def _exit_code(stop: SystemExit) -> int:
    if stop.code is None:
        return 0
    if isinstance(stop.code, int):
        return stop.code
    print(stop.code, file=sys.stderr)
    return 1


def _print_uncaught() -> None:
    """As the interpreter prints an uncaught exception, without the frames of
    this module and runpy that a fresh interpreter would not have run."""
    kind, error, tb = sys.exc_info()
    runpy = sys.modules.get("runpy")
    here = {__file__, "<frozen runpy>", getattr(runpy, "__file__", None)}
    while tb is not None and tb.tb_frame.f_code.co_filename in here:
        tb = tb.tb_next
    if error is not None:
        error.__traceback__ = tb
    sys.excepthook(kind, error, tb)  # type: ignore[arg-type]


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()


# The test run's side --------------------------------------------------------


def _interpreter_key(env: dict[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(
        sorted(
            (k, v)
            for k, v in env.items()
            if k.startswith("PYTHON") and k != "PYTHONUNBUFFERED"
        )
    )


class _ForkServer:
    def __init__(self, key: tuple[tuple[str, str], ...]) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
        env.update(key)
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 (closed by close())
        try:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tests.support.forkserver",
                    str(theirs.fileno()),
                ],
                env=env,
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=self.log,
                stderr=subprocess.STDOUT,
                pass_fds=[theirs.fileno()],
            )
        except BaseException:
            ours.close()
            self.log.close()
            raise
        finally:
            theirs.close()
        self.control = ours
        self.lock = threading.Lock()

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def spawn(
        self, argv: list[str], env: dict[str, str], cwd: Path | str, stdio: list[int]
    ) -> ForkedProcess:
        if not Path(cwd).is_dir():  # as Popen would say, not the child
            raise FileNotFoundError(f"no such directory: {cwd}")
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        request = json.dumps({"argv": argv, "env": env, "cwd": str(cwd)}).encode()
        try:
            with self.lock:
                socket.send_fds(self.control, [request], [*stdio, theirs.fileno()])
        except OSError as error:
            ours.close()
            raise RuntimeError(f"the fork server is gone: {self.output()}") from error
        finally:
            theirs.close()
        return ForkedProcess([sys.executable, *argv], ours, self)

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-3000:]

    def close(self) -> None:
        self.control.close()  # it stops what is left, then exits
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.log.close()


def _readable(sock: socket.socket, timeout: float | None) -> bool:
    """Whether ``sock`` has something to read within ``timeout`` seconds
    (``poll``, not ``select``: the test process may hold over 1,024 files)."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(None if timeout is None else timeout * 1000))


class ForkedProcess:
    """What tests use of ``subprocess.Popen``: pid, poll, wait, signals."""

    def __init__(
        self, args: list[str], status: socket.socket, server: _ForkServer
    ) -> None:
        self.args = args
        self.returncode: int | None = None
        self._status = status
        self._lock = threading.Lock()  # tests stop servers from other threads
        reply = json.loads(status.recv(4096) or b"{}") if _readable(status, 30) else {}
        if "pid" not in reply:
            status.close()  # the fork server then stops the child, if any
            raise RuntimeError(
                f"the fork server did not start {args}: {reply} {server.output()}"
            )
        self.pid: int = reply["pid"]

    def poll(self) -> int | None:
        return self._collect(0)

    def wait(self, timeout: float | None = None) -> int:
        code = self._collect(timeout)
        if code is None:
            raise subprocess.TimeoutExpired(self.args, timeout or 0)
        return code

    def _collect(self, timeout: float | None) -> int | None:
        with self._lock:
            if self.returncode is None and _readable(self._status, timeout):
                reply = json.loads(self._status.recv(4096) or b"{}")
                self._status.close()
                if "exit" not in reply:  # the fork server died: so does the
                    self.returncode = -signal.SIGKILL  # child (PDEATHSIG)
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(self.pid, signal.SIGKILL)
                else:
                    self.returncode = reply["exit"]
            return self.returncode

    def __del__(self) -> None:
        self._status.close()

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            # Gone in the meantime: as Popen, nothing to signal.
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


_servers: dict[tuple[tuple[str, str], ...], _ForkServer] = {}
# Tests start servers from several threads at once: one fork server per key,
# or a second one would replace the first, whose children die with it.
_servers_lock = threading.Lock()


def _server_for(argv: list[str], env: dict[str, str]) -> _ForkServer | None:
    if os.environ.get("NOTIFY_TEST_FORK", "1") == "0" or argv[0] != sys.executable:
        return None
    key = _interpreter_key(env)
    with _servers_lock:
        server = _servers.get(key)
        if server is None or not server.alive:
            if server is not None:
                server.close()  # died (killed): its children died with it
            server = _servers[key] = _ForkServer(key)
        return server


def popen(
    argv: list[str], env: dict[str, str], cwd: Path | str, stdout: IO[Any]
) -> ForkedProcess | subprocess.Popen[bytes]:
    """``subprocess.Popen(argv, env=env, cwd=cwd, stdout=stdout,
    stderr=STDOUT, stdin=DEVNULL)``, forked when it can be."""
    server = _server_for(argv, env)
    if server is None:
        return subprocess.Popen(
            argv,
            env=env,
            cwd=cwd,
            stdout=stdout,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    with open(os.devnull, "rb") as devnull:
        out = stdout.fileno()
        return server.spawn(argv[1:], env, cwd, [devnull.fileno(), out, out])


def run(
    argv: list[str], env: dict[str, str], timeout: float, cwd: Path | str = ROOT
) -> subprocess.CompletedProcess[str]:
    """``subprocess.run(argv, env=env, cwd=cwd, timeout=timeout,
    capture_output=True, text=True)``, forked when it can be."""
    server = _server_for(argv, env)
    if server is None:
        return subprocess.run(
            argv, env=env, cwd=cwd, timeout=timeout, capture_output=True, text=True
        )
    with (
        open(os.devnull, "rb") as devnull,
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
    ):
        stdio = [devnull.fileno(), out.fileno(), err.fileno()]
        child = server.spawn(argv[1:], env, cwd, stdio)
        try:
            code = child.wait(timeout)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait(10)
            raise
        return subprocess.CompletedProcess(argv, code, _text(out), _text(err))


def _text(captured: IO[bytes]) -> str:
    """As ``text=True`` decodes: the locale's encoding, universal newlines."""
    captured.seek(0)
    text = io.TextIOWrapper(captured)
    try:
        return text.read()
    finally:
        text.detach()  # the file is closed by its owner


def stop_fork_servers() -> None:
    """Stop the fork servers (and anything they still run); at the end of a run."""
    with _servers_lock:
        while _servers:
            _servers.popitem()[1].close()


if __name__ == "__main__":
    _serve(socket.socket(fileno=int(sys.argv[1])))
