"""The fork server the tests start their Python servers and commands from
(tests/support/forkserver.py): a forked command behaves as the same command
started afresh, so the tests that use it test what a deploy runs."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.support import forkserver
from tests.support.servers import ROOT, server_base_env, wait_for

REPORT = textwrap.dedent(
    """
    import json, os, sys
    print(json.dumps({
        "argv": sys.argv,
        "path0": sys.path[0],
        "cwd": os.getcwd(),
        "given": os.environ.get("GIVEN"),
        "inherited": os.environ.get("NOTIFY_TEST_ONLY_HERE"),
    }))
    print("to stderr", file=sys.stderr)
    sys.exit(3)
    """
)

FAILING = "def f():\n    raise ValueError('no')\nf()\n"


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.delenv("NOTIFY_TEST_FORK", raising=False)  # these fork
    return server_base_env() | {"PYTHONPATH": str(ROOT)}


def both(
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    env: dict[str, str],
    cwd: Path = ROOT,
) -> tuple[subprocess.CompletedProcess[str], subprocess.CompletedProcess[str]]:
    """``argv`` forked, then started afresh (NOTIFY_TEST_FORK=0)."""
    forked = forkserver.run(argv, env, timeout=60, cwd=cwd)
    with monkeypatch.context() as fresh:
        fresh.setenv("NOTIFY_TEST_FORK", "0")
        started = forkserver.run(argv, env, timeout=60, cwd=cwd)
    return forked, started


def running(pid: int) -> bool:
    """Whether ``pid`` runs (an ended orphan stays a zombie until reaped)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status


def test_a_forked_command_gets_its_own_arguments_environment_and_streams(
    monkeypatch, env
):
    monkeypatch.setenv("NOTIFY_TEST_ONLY_HERE", "the test run's, not the child's")
    argv = [sys.executable, "-c", REPORT, "one", "two"]
    forked, started = both(monkeypatch, argv, env | {"GIVEN": "yes"})
    assert forked.returncode == started.returncode == 3
    assert forked.stderr == started.stderr == "to stderr\n"
    report = json.loads(forked.stdout)
    assert report == json.loads(started.stdout)
    assert report == {
        "argv": ["-c", "one", "two"],
        "path0": "",
        "cwd": str(ROOT),
        "given": "yes",
        "inherited": None,
    }


def test_an_uncaught_exception_reads_as_a_fresh_interpreter_prints_it(monkeypatch, env):
    forked, started = both(monkeypatch, [sys.executable, "-c", FAILING], env)
    assert forked.returncode == started.returncode == 1
    assert forked.stderr == started.stderr
    assert forked.stderr.splitlines()[-1] == "ValueError: no"
    assert "forkserver" not in forked.stderr


def test_each_child_loads_the_settings_it_is_given(env):
    code = "from django.conf import settings; print(settings.ROOT_URLCONF)"
    argv = [sys.executable, "-c", code]
    modules = {
        "project.settings": "project.urls",
        "tests.support.prefixed_settings": "tests.support.prefixed_urls",
    }
    for module, urlconf in [*modules.items(), *modules.items()]:
        loaded = forkserver.run(argv, env | {"DJANGO_SETTINGS_MODULE": module}, 60)
        assert loaded.returncode == 0, loaded.stderr
        assert loaded.stdout == urlconf + "\n"


def test_a_forked_process_is_signalled_and_reaped_with_its_exit_status(env, tmp_path):
    log = tmp_path / "child.log"
    with log.open("ab") as out:
        child = forkserver.popen(
            [
                sys.executable,
                "-c",
                "import time; print('up', flush=True); time.sleep(60)",
            ],
            env,
            ROOT,
            out,
        )
        assert isinstance(child, forkserver.ForkedProcess)
        assert child.poll() is None
        with pytest.raises(subprocess.TimeoutExpired):
            child.wait(0.2)
        child.send_signal(signal.SIGKILL)
        assert child.wait(10) == -signal.SIGKILL
        assert child.poll() == -signal.SIGKILL
        child.kill()  # gone already: nothing is signalled
        quits = forkserver.popen(
            [sys.executable, "-c", "raise SystemExit(7)"], env, ROOT, out
        )
        assert quits.wait(30) == 7
    assert log.read_text() == "up\n"


def test_a_script_runs_with_its_path_and_threads_as_a_fresh_interpreter_has_them(
    monkeypatch, env, tmp_path
):
    (tmp_path / "script.py").write_text(
        "import sys, threading, time\n"
        "print(sys.argv, __file__, sys.path[0])\n"
        "def late():\n"
        "    time.sleep(0.3)\n"
        "    print('the thread ended before the interpreter', flush=True)\n"
        "threading.Thread(target=late).start()\n"
    )
    argv = [sys.executable, "script.py", "x"]
    forked, started = both(monkeypatch, argv, env, cwd=tmp_path)
    assert forked.returncode == started.returncode == 0, forked.stderr
    assert forked.stdout == started.stdout
    assert forked.stdout.splitlines() == [
        f"['script.py', 'x'] {tmp_path / 'script.py'} {tmp_path}",
        "the thread ended before the interpreter",
    ]


def test_children_die_with_their_fork_server_and_the_next_command_gets_a_new_one(
    env, tmp_path
):
    argv = [sys.executable, "-c", "import time; time.sleep(60)"]
    with (tmp_path / "child.log").open("ab") as out:
        child = forkserver.popen(argv, env, ROOT, out)
        assert isinstance(child, forkserver.ForkedProcess)
        server = forkserver._server_for(argv, env)
        assert server is not None
        server.proc.kill()
        server.proc.wait(10)
        assert child.wait(10) == -signal.SIGKILL
        wait_for(lambda: not running(child.pid), 10, "the orphaned child's end")
    again = forkserver.run([sys.executable, "-c", "print('up')"], env, timeout=60)
    assert (again.returncode, again.stdout) == (0, "up\n")
