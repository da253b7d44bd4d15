"""The production-like stack (``scripts/stack``) as the scale benchmark runs it.

Its own runtime directory (``NOTIFY_STACK_DIR``), free ports, a fresh SQLite
database and static root in a temporary directory; everything else is the
shipped default except ``NOTIFY_PUBLISH_RATE=1000/s``. The workers and nginx
are found through their pid files; ``stop()`` runs ``scripts/stack stop`` and
then kills whatever a pid file still names.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench import procstat, servers
from tests.support.servers import free_ports, port_free

ROOT = servers.ROOT
STACK = ROOT / "scripts" / "stack"
_STATUS = re.compile(rb'" (\d{3}) ')
# An error-log line: "2026/11/30 18:11:02 [error] 123#123: *4567 connect() failed
# (111: Connection refused) while connecting to upstream, client: …". Its kind
# is the level and the message up to ", client:", without the connection
# number, which differs per line.
_ERROR = re.compile(rb"^\S+ \S+ \[(\w+)\] \d+#\d+: (?:\*\d+ )?(.*?)(?:, client: .*)?$")


MAX_WORKERS = 16  # ports kept free for the stack's own choice of workers
API_WORKERS = 1  # the stack's default: workers for the API, after the stream workers


@dataclass
class Stack:
    """``workers`` None: as many as ``scripts/stack`` sizes for ``streams``."""

    workdir: Path
    workers: int | None
    streams: int
    ports: list[int] = field(default_factory=list)
    log_offset: int = 0
    error_offset: int = 0
    # more NOTIFY_* settings for the workers (--worker-env), e.g. a smaller
    # NOTIFY_OPEN_BACKLOG to give a small run a big run's busy workers
    worker_env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # nginx, redis, then the workers' consecutive ports (streams, then API)
        self.ports = free_ports((self.workers or MAX_WORKERS) + API_WORKERS + 2)
        self.dir = self.workdir / "stack"
        self.db_path = self.workdir / "scale.sqlite3"

    @property
    def port(self) -> int:
        return self.ports[0]

    @property
    def worker_ports(self) -> list[int]:
        """The ports the stack started workers on (from its pid files)."""
        found = {int(f.stem.split("-", 1)[1]) for f in self.dir.glob("uvicorn-*.pid")}
        return [p for p in self.ports[2:] if p in found]

    def env(self) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("NOTIFY_", "REDIS_URL", "DATABASE_URL", "DJANGO_"))
        }
        if self.workers is not None:
            env["NOTIFY_STACK_WORKERS"] = str(self.workers)
        return (
            env
            | {
                "PYTHONUNBUFFERED": "1",
                "DJANGO_SETTINGS_MODULE": "project.settings",
                "SECRET_KEY": "scale-" + "k" * 50,
                "DATABASE_URL": f"sqlite:///{self.db_path}",
                "STATIC_ROOT": str(self.workdir / "static"),
                "NOTIFY_PUBLISH_RATE": "1000/s",
                "NOTIFY_STACK_DIR": str(self.dir),
                "NOTIFY_STACK_PORT": str(self.port),
                "NOTIFY_STACK_REDIS_PORT": str(self.ports[1]),
                "NOTIFY_STACK_WORKER_PORT": str(self.ports[2]),
                "NOTIFY_STACK_STREAMS": str(self.streams),
            }
            | self.worker_env
        )

    def run(self, command: str, timeout: float = 240) -> None:
        """``scripts/stack COMMAND``, its output appended to stack.log."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with (self.workdir / "stack.log").open("ab") as log:
            done = subprocess.run(
                ["bash", str(STACK), command],
                env=self.env(),
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                timeout=timeout,
                preexec_fn=servers.raise_fd_limit,
            )
        if done.returncode != 0:
            tail = (self.workdir / "stack.log").read_text(errors="replace")[-2000:]
            last = ([line for line in tail.splitlines() if line.strip()] or [""])[-1]
            raise RuntimeError(
                f"scripts/stack {command} exited with {done.returncode}: {last}\n{tail}"
            )

    async def arun(self, command: str, within: float = 240) -> None:
        await asyncio.to_thread(self.run, command, within)

    def seed(self, users: int) -> tuple[list[str], str]:
        """Migrate, then users with tokens: (viewer tokens, publisher token)."""
        env = self.env()
        migrate = [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"]
        subprocess.run(migrate, env=env, cwd=ROOT, check=True, timeout=120)
        seed = [sys.executable, "-m", "bench.scale_seed", str(users), str(self.workdir)]
        subprocess.run(seed, env=env, cwd=ROOT, check=True, timeout=300)
        viewers = (self.workdir / "viewers.txt").read_text().split()
        return viewers, (self.workdir / "publisher.txt").read_text().strip()

    def _pid(self, name: str) -> int | None:
        try:
            pid = int((self.dir / f"{name}.pid").read_text().strip())
            os.kill(pid, 0)
        except (OSError, ValueError):
            return None
        return pid

    def worker_pids(self) -> dict[int, int]:
        """Worker port → pid, for the workers that are running."""
        found = {p: self._pid(f"uvicorn-{p}") for p in self.worker_ports}
        return {p: pid for p, pid in found.items() if pid is not None}

    def nginx_pids(self) -> list[int]:
        master = self._pid("nginx")
        if master is None:
            return []
        pids = [master]
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2 :].split()[1]) == master:
                pids.append(int(entry.name))
        return pids

    def cpu(self) -> tuple[float, float]:
        """CPU seconds so far: (all workers, all nginx processes)."""
        return _cpu(self.worker_pids().values()), _cpu(self.nginx_pids())

    def samples(self) -> dict[int, procstat.Sample]:
        out = {}
        for port, pid in self.worker_pids().items():
            try:
                out[port] = procstat.sample(pid, self.db_path)
            except OSError:
                continue
        return out

    def nginx_rss_kb(self) -> int:
        total = 0
        for pid in self.nginx_pids():
            try:
                total += procstat.sample(pid, None).rss_kb
            except OSError:
                continue
        return total

    def access_log(self) -> Path:
        for candidate in (
            self.dir / "nginx-access.log",
            self.dir / "log" / "nginx-access.log",
        ):
            if candidate.exists():
                return candidate
        return self.dir / "nginx-access.log"

    def error_log(self) -> Path:
        return self.dir / "nginx-error.log"

    def mark_log(self) -> None:
        log, errors = self.access_log(), self.error_log()
        self.log_offset = log.stat().st_size if log.exists() else 0
        self.error_offset = errors.stat().st_size if errors.exists() else 0

    def errors_since_mark(self) -> dict[str, int]:
        """nginx's error-log lines since ``mark_log()``, counted by kind:
        "[error] connect() failed (111: Connection refused) while connecting
        to upstream" and the like, the connection number and client left out."""
        log = self.error_log()
        if not log.exists():
            return {}
        with log.open("rb") as f:
            f.seek(self.error_offset)
            data = f.read()
        counts: dict[str, int] = {}
        for line in data.splitlines():
            match = _ERROR.match(line)
            if match is None:
                continue
            level, message = match.groups()
            kind = f"[{level.decode()}] {message.decode(errors='replace')}"
            counts[kind] = counts.get(kind, 0) + 1
        return dict(sorted(counts.items(), key=lambda kv: -kv[1]))

    def keep_logs(self, into: Path) -> None:
        """Copy nginx's logs, the workers' logs and stack.log into ``into``."""
        into.mkdir(parents=True, exist_ok=True)
        for name in ("nginx-error.log", "nginx-access.log", "nginx.conf"):
            if (self.dir / name).exists():
                shutil.copy2(self.dir / name, into / name)
        if (self.dir / "log").is_dir():
            shutil.copytree(self.dir / "log", into / "log", dirs_exist_ok=True)
        if (self.workdir / "stack.log").exists():
            shutil.copy2(self.workdir / "stack.log", into / "stack.log")

    def statuses_since_mark(self) -> dict[str, int]:
        """HTTP statuses nginx logged since ``mark_log()``."""
        log = self.access_log()
        if not log.exists():
            return {}
        with log.open("rb") as f:
            f.seek(self.log_offset)
            data = f.read()
        counts: dict[str, int] = {}
        for match in _STATUS.finditer(data):
            code = match.group(1).decode()
            counts[code] = counts.get(code, 0) + 1
        return counts

    def kill_leftovers(self) -> None:
        for pidfile in self.dir.glob("*.pid"):
            try:
                os.kill(int(pidfile.read_text().strip()), signal.SIGKILL)
            except (OSError, ValueError):
                continue


def _cpu(pids: object) -> float:
    total = 0.0
    for pid in pids:  # type: ignore[attr-defined]
        try:
            total += procstat.cpu_seconds(pid)
        except OSError:
            continue
    return total


def established(port: int) -> int:
    """Established TCP connections whose local port is ``port``."""
    out = subprocess.run(
        ["ss", "-Htn", "state", "established", f"( sport = :{port} )"],
        capture_output=True,
        text=True,
        timeout=10,
    ).stdout
    return sum(1 for line in out.splitlines() if line.strip())


def wait_port(port: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not port_free(port):
            return
        time.sleep(0.1)
