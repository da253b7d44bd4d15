"""What the kernel says about a server process: memory, threads, fds, CPU."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class Sample:
    rss_kb: int
    threads: int
    db_fds: int
    fds: int
    cpu_s: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (all its threads), in seconds."""
    return _stat_cpu(Path(f"/proc/{pid}/stat"))


def main_thread_cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid``'s first thread alone: a server's event loop."""
    return _stat_cpu(Path(f"/proc/{pid}/task/{pid}/stat"))


def _stat_cpu(path: Path) -> float:
    stat = path.read_text()
    # The command name may contain spaces; fields resume after its ")".
    fields = stat[stat.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / _TICKS


def _status(pid: int) -> dict[str, str]:
    found: dict[str, str] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        found[key] = value.strip()
    return found


def _fd_targets(pid: int) -> list[str]:
    targets: list[str] = []
    base = f"/proc/{pid}/fd"
    for name in os.listdir(base):
        try:
            targets.append(os.readlink(f"{base}/{name}"))
        except OSError:  # closed meanwhile
            continue
    return targets


def sample(pid: int, db_path: Path | None) -> Sample:
    status = _status(pid)
    targets = _fd_targets(pid)
    db = str(db_path) if db_path is not None else None
    return Sample(
        rss_kb=int(status["VmRSS"].split()[0]),
        threads=int(status["Threads"]),
        db_fds=sum(1 for t in targets if db is not None and t == db),
        fds=len(targets),
        cpu_s=cpu_seconds(pid),
    )
