"""Diagnostics attached to a server under test: GC totals and py-spy."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

from bench import servers

GC_PROBE_DIR = servers.ROOT / "bench" / "gcprobe"


def gc_env(stats_file: Path, threshold: int | None = None) -> dict[str, str]:
    """Environment that loads ``gcprobe/sitecustomize.py`` into a server."""
    env = {
        "PYTHONPATH": f"{GC_PROBE_DIR}{os.pathsep}{servers.ROOT}",
        "BENCH_GC_STATS": str(stats_file),
    }
    if threshold is not None:
        env["BENCH_GC_THRESHOLD"] = str(threshold)
    return env


def gc_totals(pid: int, stats_file: Path, *, objects: bool) -> dict[str, Any]:
    """Ask the server for its GC totals (SIGUSR2 also counts tracked objects)."""
    stats_file.unlink(missing_ok=True)
    os.kill(pid, signal.SIGUSR2 if objects else signal.SIGUSR1)
    deadline = time.monotonic() + 20
    while not stats_file.exists():
        if time.monotonic() > deadline:
            raise TimeoutError("the server did not report its GC totals")
        time.sleep(0.02)
    return json.loads(stats_file.read_text())  # type: ignore[no-any-return]


def gc_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    gens = [str(g) for g in range(3)]
    return {
        "cpu_s": sum(after["gc"][g]["cpu_s"] - before["gc"][g]["cpu_s"] for g in gens),
        "collections": [
            after["gc"][g]["collections"] - before["gc"][g]["collections"] for g in gens
        ],
        "tracked_objects": after.get("tracked_objects"),
    }


class Profiler:
    """py-spy recording one phase of one server (``--profile``)."""

    def __init__(self, enabled: bool, results: Path) -> None:
        self.enabled, self.results = enabled, results
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self, pid: int, name: str) -> None:
        if not self.enabled:
            return
        # Native frames (the C garbage collector, syscalls) need the process
        # paused at each sample, which slows it down: opt in.
        native = os.environ.get("BENCH_PROFILE_NATIVE") == "1"
        self.proc = await asyncio.create_subprocess_exec(
            servers.pyspy(),
            "record",
            "--pid",
            str(pid),
            "--format",
            "raw",
            "--rate",
            "500",
            "--native" if native else "--nonblocking",
            "--output",
            str(self.results / f"profile-{name}.txt"),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )

    async def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        proc.send_signal(signal.SIGINT)  # py-spy writes its output and exits
        try:
            async with asyncio.timeout(30):
                await proc.wait()
        except TimeoutError:
            proc.kill()
            await proc.wait()
