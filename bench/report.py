"""Machine facts and the markdown results section of docs/PERFORMANCE.md."""

from __future__ import annotations

import datetime
import os
import platform
import shutil
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

START = "<!-- bench:results:start -->"
END = "<!-- bench:results:end -->"
RSS_TARGET_KIB = 16.0
SETUP_TARGET_MS = 1.0
PUBLISH_TARGET_MS = 2.0
THROUGHPUT_TARGET = 0.9
FLAT_AT = 2000


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _redis_version() -> str:
    binary = shutil.which("redis-server") or "redis-server"
    try:
        out = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=5
        )
    except OSError:
        return "unknown"
    for part in out.stdout.split():
        if part.startswith("v="):
            return part[2:]
    return out.stdout.strip()


def machine_info() -> dict[str, Any]:
    versions = {}
    for package in ("Django", "uvicorn", "uvloop", "httptools", "asgiref", "redis"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "absent"
    versions["redis-server"] = _redis_version()
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "cpu": _cpu_model(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "versions": versions,
        "load_before": os.getloadavg(),
    }


def one_line(r: dict[str, Any]) -> str:
    if "error" in r:
        return f"{r['target']} @ {r['streams']}: FAILED {r['error']}"
    return (
        f"{r['target']} @ {r['streams']}: {r['rss_per_stream_kib']:.1f} KiB/stream, "
        f"setup {r['setup_cpu_ms_per_stream']:.2f} ms CPU/stream, "
        f"{r['deliveries_per_cpu_s']:.0f} deliveries/CPU-s, "
        f"p50 {r['latency_p50_ms']:.0f} ms p99 {r['latency_p99_ms']:.0f} ms, "
        f"missing {r['missing']}"
    )


R = dict[str, Any]


def _at(r: R, count: int, key: str) -> int | None:
    sample = r["samples"].get(str(count))
    return None if sample is None else int(sample[key])


# Threads of a notify worker that may hold a database connection whatever the
# number of streams: NOTIFY_SYNC_THREADS (4) request threads, the Opener, the
# token last-use writer and the retention pruner. Which of the request threads
# has been used by 10 streams is chance, so connections pass when they stay
# within that bound rather than at the 10-stream count.
DB_THREADS = 4 + 3


def _flat(r: R, count: int, key: str) -> tuple[str, bool]:
    low, high = _at(r, 10, key), _at(r, count, key)
    if low is None or high is None or (key == "db_fds" and r["target"] == "reference"):
        return "—", True
    bound = DB_THREADS if key == "db_fds" else low
    return f"{low} → {high}", high <= max(low, bound)


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}×" if b else "—"


def _yes(ok: bool) -> str:
    return "yes" if ok else "**no**"


def _gc_share(r: R) -> str:
    share = r["gc"]["cpu_s"] / max(r["broadcast_cpu_s"], 1e-9)
    return f"{share:.0%} ({'/'.join(map(str, r['gc']['collections']))})"


def _publish_cpu(r: R) -> str:
    return _with_loop(r["publish_cpu_ms"], r.get("publish_loop_cpu_ms"), 2)


def _setup_cpu(r: R) -> str:
    return _with_loop(
        r["setup_cpu_ms_per_stream"], r.get("setup_loop_cpu_ms_per_stream"), 2
    )


def _with_loop(total: float, loop: float | None, digits: int) -> str:
    """``total (loop)``; older results have no loop share."""
    shown = f"{total:.{digits}f}"
    return shown if loop is None else f"{shown} ({loop:.{digits}f})"


# label, value, number for the ratio (or None), target, met
Metric = tuple[str, Any, Any, str, Any]


def _metrics(n: int) -> list[Metric]:
    def threads(r: R) -> str:
        return _flat(r, n, "threads")[0]

    def dbs(r: R) -> str:
        return _flat(r, n, "db_fds")[0]

    def latency(r: R) -> str:
        return f"{r['latency_p50_ms']:.0f} / {r['latency_p99_ms']:.0f}"

    def missing(r: R) -> str:
        dup = f" (+{r['duplicates']} duplicates)" if r["duplicates"] else ""
        return f"{r['missing']}{dup}"

    rss = "rss_per_stream_kib"
    return [
        (
            "Server RSS per idle stream (KiB)",
            lambda r: f"{r[rss]:.1f}",
            lambda r: r[rss],
            f"≤ {RSS_TARGET_KIB:g} KiB",
            lambda r, _: r[rss] <= RSS_TARGET_KIB,
        ),
        (
            "Threads at 10 → N streams",
            threads,
            None,
            "flat",
            lambda r, _: _flat(r, n, "threads")[1],
        ),
        (
            "DB connections at 10 → N streams",
            dbs,
            None,
            f"≤ {DB_THREADS}",
            lambda r, _: _flat(r, n, "db_fds")[1],
        ),
        (
            "Stream setup CPU per connection (ms; of which the event loop)",
            _setup_cpu,
            lambda r: r["setup_cpu_ms_per_stream"],
            f"≤ {SETUP_TARGET_MS:g} ms",
            lambda r, _: r["setup_cpu_ms_per_stream"] <= SETUP_TARGET_MS,
        ),
        (
            "Deliveries per CPU-second of the streaming worker",
            lambda r: f"{r['deliveries_per_cpu_s']:,.0f}",
            lambda r: r["deliveries_per_cpu_s"],
            f"≥ {THROUGHPUT_TARGET}×",
            lambda r, ref: (
                r["deliveries_per_cpu_s"]
                >= THROUGHPUT_TARGET * ref["deliveries_per_cpu_s"]
            ),
        ),
        (
            "… counting the publishing worker's CPU too",
            lambda r: f"{r['all_in_deliveries_per_cpu_s']:,.0f}",
            lambda r: r["all_in_deliveries_per_cpu_s"],
            "",
            None,
        ),
        (
            "… cyclic GC share of that CPU (collections gen0/1/2)",
            _gc_share,
            None,
            "",
            None,
        ),
        (
            "GC-tracked objects at N streams",
            lambda r: f"{r['gc']['tracked_objects']:,}",
            lambda r: r["gc"]["tracked_objects"],
            "",
            None,
        ),
        (
            "Publish request CPU (ms, publishing worker; of which its event loop)",
            _publish_cpu,
            None,
            f"≤ {PUBLISH_TARGET_MS:g} ms",
            lambda r, _: r["publish_cpu_ms"] <= PUBLISH_TARGET_MS,
        ),
        ("Broadcast latency p50 / p99 (ms)", latency, None, "", None),
        (
            "Missing events (of N × broadcasts)",
            missing,
            None,
            "0",
            lambda r, _: r["missing"] == 0 and r["duplicates"] == 0,
        ),
    ]


def _cells(metric: Metric, r: R, ref: R) -> list[str]:
    _, value, number, _, _ = metric
    cells = [value(r)]
    if r is not ref:
        cells.append(_ratio(number(r), number(ref)) if number else "")
    return cells


def _table(
    by_key: dict[tuple[str, int], R], counts: list[int], names: list[str]
) -> list[str]:
    header = ["Metric", "N"]
    for name in names:
        header += [name] if name == "reference" else [name, "÷ reference"]
    header += ["Target", f"Met ({names[1]})"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for n in counts:
        results = [by_key[(name, n)] for name in names]
        ref, main = results[0], results[1]
        for metric in _metrics(n):
            cells = [metric[0], str(n)]
            for r in results:
                cells += _cells(metric, r, ref)
            met = metric[4]
            cells += [metric[3], "" if met is None else _yes(met(main, ref))]
            lines.append("| " + " | ".join(cells) + " |")
    flat_n = max(counts)
    if flat_n > FLAT_AT:
        cells = [f"Threads; DB connections at 10 → {FLAT_AT:,} streams", str(FLAT_AT)]
        for name in names:
            r = by_key[(name, flat_n)]
            t, d = _flat(r, FLAT_AT, "threads")[0], _flat(r, FLAT_AT, "db_fds")[0]
            cells += [f"{t}; {d}"] if name == "reference" else [f"{t}; {d}", ""]
        main = by_key[(names[1], flat_n)]
        ok = _flat(main, FLAT_AT, "threads")[1] and _flat(main, FLAT_AT, "db_fds")[1]
        cells += ["flat", _yes(ok)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def render(document: R, raw: Path) -> str:
    info, settings = document["machine"], document["settings"]
    results = [r for r in document["results"] if "error" not in r]
    by_key = {(r["target"], r["streams"]): r for r in results}
    present = {r["target"] for r in results}
    names = [t for t in ("reference", "notify") if t in present]
    counts = [n for n in settings["streams"] if all((t, n) in by_key for t in names)]
    v = info["versions"]
    experiment = (
        f" GC first-generation threshold set to {settings['gc_threshold']} in every server."
        if settings.get("gc_threshold")
        else ""
    )
    opening = settings.get("open_concurrency", 64)
    opened = (
        " Streams opened one after another."
        if opening == 1
        else f" Streams opened {opening} at a time."
    )
    lines = [
        f"Run of {info['date']} ({info['duration_s']:.0f} s): {info['nproc']} CPUs "
        f"({info['cpu']}), Linux {info['kernel']}, Python {info['python']}, "
        f"Django {v['Django']}, uvicorn {v['uvicorn']} (uvloop {v['uvloop']}, httptools {v['httptools']}), "
        f"asgiref {v['asgiref']}, redis-py {v['redis']}, redis-server {v['redis-server']}. "
        f"Load average before/after: {info['load_before'][0]:.2f} / {info['load_after'][0]:.2f}. "
        f"{settings['broadcasts']} broadcasts {settings['spacing_s']:g} s apart"
        f"{' (quick mode)' if settings['quick'] else ''}.{opened}{experiment} "
        f"Raw data: `{raw}`.",
        "",
    ]
    if len(names) >= 2 and counts:
        lines += _table(by_key, counts, names)
    errors = [
        f"- {r['target']} at {r['streams']} streams failed: `{r['error']}`"
        for r in document["results"]
        if "error" in r
    ]
    return "\n".join(lines + ([""] + errors if errors else []))


def update_doc(path: Path, section: str) -> None:
    text = (
        path.read_text()
        if path.exists()
        else f"# Performance\n\n## Results\n\n{START}\n{END}\n"
    )
    if START not in text or END not in text:
        text = text.rstrip("\n") + f"\n\n## Results\n\n{START}\n{END}\n"
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    path.write_text(f"{head}{START}\n{section}\n{END}{tail}")
