"""A throwaway PostgreSQL cluster for the tests, on a free loopback port.

``initdb`` makes it in a fresh temporary directory; ``pg_ctl`` starts it with
``fsync=off`` (nothing in it outlives the session), listening on 127.0.0.1
only, with its Unix socket in that directory, and stops it at the end. Every
wait is bounded. PostgreSQL refuses to run as root: as root, the directory
belongs to the ``postgres`` user (which the Debian package creates) and every
PostgreSQL program runs through ``runuser -u postgres --``; as anyone else, the
programs run as that user.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

from tests.support.servers import free_port

USER = "postgres"  # the cluster's superuser (trust authentication, loopback only)


def bindir() -> Path:
    """Where initdb and pg_ctl are: ``NOTIFY_TEST_PG_BINDIR``, else on PATH,
    else the newest /usr/lib/postgresql/<version>/bin (Debian, Ubuntu)."""
    if configured := os.environ.get("NOTIFY_TEST_PG_BINDIR"):
        return Path(configured)
    if found := shutil.which("initdb"):
        return Path(found).parent
    versions = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    if not versions:
        raise RuntimeError(
            "PostgreSQL is not installed: run scripts/test (it installs it), "
            "or `apt-get install postgresql`; or set NOTIFY_TEST_PG_BINDIR"
        )
    return Path(versions[-1]).parent


class PostgresCluster:
    def __init__(self) -> None:
        self.bin = bindir()
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="notify-pg-"))
        self.data = self.root / "data"
        self.sockets = self.root / "run"
        self.log = self.root / "postgres.log"
        self.as_root = os.geteuid() == 0
        self.started = False

    def _run(self, program: str, *args: str, timeout: float) -> None:
        argv = [str(self.bin / program), *args]
        if self.as_root:
            argv = ["runuser", "-u", USER, "--", *argv]
        result = subprocess.run(
            argv,
            cwd=self.root,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0:
            log = (
                self.log.read_text(errors="replace")[-3000:]
                if self.log.exists()
                else ""
            )
            raise RuntimeError(
                f"{program} failed ({result.returncode}):\n{result.stdout}"
                f"{result.stderr}\n{log}"
            )

    def start(self) -> None:
        self.sockets.mkdir()
        if self.as_root:
            try:
                owner = pwd.getpwnam(USER)
            except KeyError:
                raise RuntimeError(
                    "PostgreSQL refuses to run as root, and there is no "
                    f"{USER!r} user to run it as (the postgresql package creates "
                    "it); run the tests as another user"
                ) from None
            for path in (self.root, self.sockets):
                os.chown(path, owner.pw_uid, owner.pw_gid)
        self._run(
            "initdb",
            "--pgdata",
            str(self.data),
            "--username",
            USER,
            "--auth",
            "trust",
            "--encoding",
            "UTF8",
            "--no-locale",
            "--no-sync",
            "--no-instructions",
            timeout=120,
        )
        options = [
            f"-p {self.port}",
            "-c listen_addresses=127.0.0.1",
            f"-c unix_socket_directories={self.sockets}",
            "-c fsync=off",
            "-c synchronous_commit=off",
            "-c full_page_writes=off",
            "-c max_connections=300",
            "-c shared_buffers=64MB",
        ]
        self.started = True
        self._run(
            "pg_ctl",
            "start",
            "--pgdata",
            str(self.data),
            "--log",
            str(self.log),
            "--wait",
            "--timeout",
            "60",
            "-o",
            " ".join(options),
            timeout=90,
        )

    def stop(self) -> None:
        try:
            if self.started:
                try:
                    self._run(
                        "pg_ctl",
                        "stop",
                        "--pgdata",
                        str(self.data),
                        "--mode",
                        "fast",
                        "--wait",
                        "--timeout",
                        "30",
                        timeout=45,
                    )
                except (RuntimeError, subprocess.TimeoutExpired):
                    self._kill()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def _kill(self) -> None:
        """The postmaster by the pid it wrote, when pg_ctl could not stop it."""
        with contextlib.suppress(FileNotFoundError, ValueError, ProcessLookupError):
            pid = int((self.data / "postmaster.pid").read_text().split()[0])
            os.kill(pid, signal.SIGKILL)

    def url(self, name: str) -> str:
        return f"postgres://{USER}@127.0.0.1:{self.port}/{name}"

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def socket_inodes(pid: int) -> set[str]:
    """The inodes of the sockets process ``pid`` has open."""
    found = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            found.add(target[len("socket:[") : -1])
    return found


def connections_to(pid: int, port: int) -> list[str]:
    """The TCP connections process ``pid`` has open to 127.0.0.1:``port``,
    as "local-port:inode" strings."""
    inodes = socket_inodes(pid)
    found = []
    for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, state, inode = fields[1], fields[2], fields[3], fields[9]
        established = state == "01"
        if established and inode in inodes and int(remote.split(":")[1], 16) == port:
            found.append(f"{int(local.split(':')[1], 16)}:{inode}")
    return sorted(found)
