"""Drive ``bench/loadgen.c``: build it, run several, merge their reports.

Each generator process holds at most ``PER_PROCESS`` streams (every stream is
one file descriptor, and a process may open 20,000) and connects from its
own source address, 127.0.0.2, 127.0.0.3, …, so no single source address runs
out of ephemeral ports. Commands go to every process at once; the answers
(one JSON line each) are merged here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

from bench import servers

SOURCE = servers.ROOT / "bench" / "loadgen.c"
BUILD = servers.ROOT / "bench" / "build"
PER_PROCESS = 12_500
# An `arrivals` answer is one line: up to a few hundred histogram buckets for
# each of up to 4,096 ids.
ANSWER_LIMIT = 64 * 1024 * 1024


def build() -> Path:
    """Compile the generator with ``cc -O2`` into bench/build/ (if stale)."""
    BUILD.mkdir(exist_ok=True)
    binary = BUILD / "loadgen"
    if binary.exists() and binary.stat().st_mtime >= SOURCE.stat().st_mtime:
        return binary
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise RuntimeError("the load generator needs a C compiler (cc)")
    subprocess.run(
        [cc, "-O2", "-Wall", "-o", str(binary), str(SOURCE)], check=True, timeout=120
    )
    return binary


class Generator:
    """One loadgen process and its command pipe."""

    def __init__(self, proc: asyncio.subprocess.Process, streams: int) -> None:
        self.proc, self.streams = proc, streams

    async def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command.encode() + b"\n")
        await self.proc.stdin.drain()

    async def answer(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = await self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"loadgen {self.proc.pid} exited")
        return json.loads(line)  # type: ignore[no-any-return]


class Fleet:
    """Several generators sharing out ``len(tokens)`` streams."""

    def __init__(self, generators: list[Generator]) -> None:
        self.generators = generators

    @classmethod
    async def start(
        cls,
        port: int,
        tokens: list[str],
        workdir: Path,
        *,
        concurrency: int = 64,
        jitter_ms: int = 1000,
    ) -> Fleet:
        binary = build()
        count = -(-len(tokens) // PER_PROCESS)
        generators: list[Generator] = []
        per = -(-len(tokens) // count)
        for k in range(count):
            mine = tokens[k * per : (k + 1) * per]
            token_file = workdir / f"tokens-{k}.txt"
            token_file.write_text("".join(t + "\n" for t in mine))
            proc = await asyncio.create_subprocess_exec(
                str(binary),
                *("--port", str(port), "--tokens", str(token_file)),
                *("--src", f"127.0.0.{2 + k}", "--seed", str(k + 1)),
                *("--concurrency", str(max(1, concurrency // count))),
                *("--jitter-ms", str(jitter_ms)),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                preexec_fn=servers._child_setup,
                limit=ANSWER_LIMIT,
            )
            generators.append(Generator(proc, len(mine)))
        return cls(generators)

    @property
    def pids(self) -> list[int]:
        return [g.proc.pid for g in self.generators]

    async def ask(self, command: str) -> list[dict[str, Any]]:
        for g in self.generators:
            await g.send(command)
        async with asyncio.timeout(30):
            return [await g.answer() for g in self.generators]

    async def open(self, total: int) -> None:
        """Have ``total`` streams in all, spread evenly over the generators."""
        left = total
        for i, g in enumerate(self.generators):
            share = min(g.streams, -(-left // (len(self.generators) - i)))
            await g.send(f"open {share}")
            left -= share
        async with asyncio.timeout(30):
            for g in self.generators:
                await g.answer()

    async def stats(self) -> dict[str, Any]:
        return merge_stats(await self.ask("stats"))

    async def counts(self) -> dict[int, int]:
        merged: dict[int, int] = {}
        for answer in await self.ask("counts"):
            for id_, n in answer["ids"]:
                merged[id_] = merged.get(id_, 0) + n
        return merged

    async def arrivals(self) -> list[dict[str, Any]]:
        """Per generator and id: count, first/last arrival, histogram."""
        return [r for a in await self.ask("arrivals") for r in a["ids"]]

    async def reset(self) -> None:
        await self.ask("reset")

    async def stop(self) -> None:
        for g in self.generators:
            if g.proc.returncode is None:
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    await g.send("quit")
        for g in self.generators:
            try:
                async with asyncio.timeout(5):
                    await g.proc.wait()
            except TimeoutError:
                g.proc.kill()
                await g.proc.wait()


_SUMMED = [
    "streams",
    "ready",
    "waiting",
    "connecting",
    "opened",
    "events",
    "dups",
    "gaps",
    "losses",
    "ended",
    "reconnects",
    "conn_errors",
    "pings",
    "reset_events",
    "revoked",
    "cpu_user",
    "cpu_sys",
    "maxrss_kb",
]


def merge_stats(answers: list[dict[str, Any]]) -> dict[str, Any]:
    merged: dict[str, Any] = {k: sum(a[k] for a in answers) for k in _SUMMED}
    readies = [a["first_ready_ns"] for a in answers if a["first_ready_ns"]]
    merged["first_ready_ns"] = min(readies, default=0)
    merged["last_ready_ns"] = max(a["last_ready_ns"] for a in answers)
    status: dict[str, int] = {}
    for a in answers:
        for code, n in a["status"].items():
            status[code] = status.get(code, 0) + n
    merged["status"] = status
    for key in ("ready_ms", "reconnect_ms"):
        merged[key] = merge_hist([a[key] for a in answers])
    merged["cpu_s"] = merged["cpu_user"] + merged["cpu_sys"]
    return merged


def merge_hist(hists: list[list[list[int]]]) -> list[list[int]]:
    total: dict[int, int] = {}
    for h in hists:
        for lo, n in h:
            total[lo] = total.get(lo, 0) + n
    return [[lo, total[lo]] for lo in sorted(total)]


def hist_quantile(hist: list[list[int]], q: float) -> float | None:
    """The bucket lower bound (ms) at quantile ``q`` of a merged histogram."""
    count = sum(n for _, n in hist)
    if not count:
        return None
    rank, seen = q * (count - 1), 0
    for lo, n in hist:
        seen += n
        if seen > rank:
            return float(lo)
    return float(hist[-1][0])
