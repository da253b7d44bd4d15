"""The scale benchmark's table and its block in docs/PERFORMANCE.md."""

from __future__ import annotations

from pathlib import Path
from typing import Any

START = "<!-- bench:scale:start -->"
END = "<!-- bench:scale:end -->"
PROBE_LIMIT_MS = 1000

R = dict[str, Any]


def _f(value: Any, digits: int = 0) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _statuses(counts: dict[str, int], floor: int = 400) -> str:
    bad = {k: v for k, v in sorted(counts.items()) if int(k) >= floor or int(k) == 0}
    return ", ".join(f"{k}×{v}" for k, v in bad.items()) or "none"


def open_line(o: R) -> str:
    return (
        f"{o['ready']}/{o['streams']} ready in {o['open_seconds']} s "
        f"({o['connect_rate']}/s); CPU per stream: workers "
        f"{o['worker_cpu_ms_per_stream']} ms, nginx {o['nginx_cpu_ms_per_stream']} ms, "
        f"loadgen {o['loadgen_cpu_ms_per_stream']} ms; RSS per stream: workers "
        f"{o['worker_rss_kib_per_stream']} KiB, nginx {o['nginx_rss_kib_per_stream']} KiB"
    )


def broadcast_line(b: R) -> str:
    probes = ", ".join(f"{k} {v['p99_ms']}" for k, v in b["probes"].items())
    return (
        f"latency p50 {b['latency_p50_ms']} p99 {b['latency_p99_ms']} ms, last client "
        f"{b['last_client_max_ms']} ms, missing {b['missing']}, dup {b['duplicates']}, "
        f"publish p99 {b['publish']['p99_ms']} ms; probes p99 (ms): {probes}"
    )


def short(error: str) -> str:
    """The first line of an error, for the table (the raw data has it all)."""
    first = error.splitlines()[0] if error else ""
    return first[:200]


def storm_line(s: R) -> str:
    if "error" in s:
        return f"{s['kind']}: FAILED {short(s['error'])}"
    return (
        f"{s['kind']}: all streaming again after {s.get('recovery_seconds')} s, "
        f"{s['reconnects']} reconnects (p99 {s['reconnect_p99_ms']} ms), missing "
        f"{s['missing']}, dup {s['duplicates']}, publish p99 {s['publish']['p99_ms']} ms, "
        f"per worker {s['streams_per_worker']}, nginx {_statuses(s['nginx_statuses'])}"
    )


def _step_rows(steps: list[R]) -> list[str]:
    def row(label: str, cells: list[str]) -> str:
        return f"| {label} | " + " | ".join(cells) + " |"

    o = [s["open"] for s in steps]
    b = [s.get("broadcast", {}) for s in steps]
    per_worker = [
        " / ".join(f"{w['threads']}, {w['db_fds']}" for w in x["workers"]) for x in o
    ]
    rows = [
        row("Streams", [_f(x["streams"]) for x in o]),
        row("Streaming when the step ended", [_f(x["ready"]) for x in o]),
        row(
            "Connect rate (streams/s until all `ready`)",
            [_f(x["connect_rate"]) for x in o],
        ),
        row(
            "Time to `ready` p50 / p99 (ms)",
            [f"{_f(x['ready_p50_ms'])} / {_f(x['ready_p99_ms'])}" for x in o],
        ),
        row(
            "Worker CPU per stream opened (ms, all workers)",
            [_f(x["worker_cpu_ms_per_stream"], 2) for x in o],
        ),
        row(
            "nginx CPU per stream opened (ms)",
            [_f(x["nginx_cpu_ms_per_stream"], 2) for x in o],
        ),
        row(
            "Load generator CPU per stream opened (ms)",
            [_f(x["loadgen_cpu_ms_per_stream"], 3) for x in o],
        ),
        row(
            "Worker RSS per stream (KiB, all workers)",
            [_f(x["worker_rss_kib_per_stream"], 1) for x in o],
        ),
        row(
            "nginx RSS per stream (KiB, all processes)",
            [_f(x["nginx_rss_kib_per_stream"], 1) for x in o],
        ),
        row("Threads, DB connections per worker", per_worker),
        row(
            "Streams per worker",
            [" / ".join(_f(w["streams"]) for w in x["workers"]) for x in o],
        ),
    ]
    if all(b):
        rows += [
            row("Broadcasts", [_f(x["broadcasts"]) for x in b]),
            row(
                "Broadcast latency p50 / p99 (ms)",
                [f"{_f(x['latency_p50_ms'])} / {_f(x['latency_p99_ms'])}" for x in b],
            ),
            row(
                "Until the last client, worst broadcast (ms)",
                [_f(x["last_client_max_ms"]) for x in b],
            ),
            row(
                "Missing / duplicate deliveries",
                [f"{x['missing']} / {x['duplicates']}" for x in b],
            ),
            row(
                "Publish request p50 / p99 / max (ms)",
                [
                    f"{_f(x['publish']['p50_ms'])} / {_f(x['publish']['p99_ms'])} / {_f(x['publish']['max_ms'])}"
                    for x in b
                ],
            ),
            row(
                "Worker CPU per delivery (µs)",
                [_f(x["worker_cpu_us_per_delivery"], 1) for x in b],
            ),
            row(
                "nginx CPU per delivery (µs)",
                [_f(x["nginx_cpu_us_per_delivery"], 1) for x in b],
            ),
            row(
                "Load generator CPU per delivery (µs)",
                [_f(x["loadgen_cpu_us_per_delivery"], 2) for x in b],
            ),
        ]
        for name in b[0]["probes"]:
            cells = [
                f"{_f(x['probes'][name]['p99_ms'])}"
                + (
                    f" ({x['probes'][name]['errors']} errors)"
                    if x["probes"][name]["errors"]
                    else ""
                )
                for x in b
            ]
            rows.append(row(f"Probe `{name}` p99 (ms, ≤ {PROBE_LIMIT_MS})", cells))
    return rows


def _recovery(storm: R) -> str:
    seconds = _f(storm.get("recovery_seconds"), 1)
    return seconds if storm.get("recovered", True) else f"{seconds} (timed out)"


def _storm_rows(storms: R) -> list[str]:
    failed = [
        f"Storm `{k}` failed: {short(v['error'])}"
        for k, v in storms.items()
        if "error" in v
    ]
    kinds = [k for k in ("kill", "rolling") if k in storms and "error" not in storms[k]]
    if failed:
        return ["", *failed, *_storm_rows({k: storms[k] for k in kinds})]
    if not kinds:
        return []
    s = [storms[k] for k in kinds]

    def row(label: str, cells: list[str]) -> str:
        return f"| {label} | " + " | ".join(cells) + " |"

    names = {
        "kill": "`kill -9` one worker, then `scripts/stack start`",
        "rolling": "`scripts/stack rolling-restart`",
    }
    return [
        "",
        "| Storm (top step, a broadcast every interval) | "
        + " | ".join(names[k] for k in kinds)
        + " |",
        "|---|" + "---|" * len(kinds),
        row(
            "Every client streaming again after (s)",
            [_recovery(x) for x in s],
        ),
        row(
            "Streams lost (of which ended by the server) / reconnected",
            [
                f"{_f(x['losses'])} ({_f(x.get('ended'))}) / {_f(x['reconnects'])}"
                for x in s
            ],
        ),
        row(
            "Loss → `ready` again p50 / p99 / max (ms)",
            [
                f"{_f(x['reconnect_p50_ms'])} / {_f(x['reconnect_p99_ms'])} / {_f(x['reconnect_max_ms'])}"
                for x in s
            ],
        ),
        row(
            "Of which connect → `ready` p50 / p99 (ms)",
            [f"{_f(x.get('ready_p50_ms'))} / {_f(x.get('ready_p99_ms'))}" for x in s],
        ),
        row(
            "Streams per worker at the end",
            [" / ".join(_f(v) for v in x["streams_per_worker"].values()) for x in s],
        ),
        row(
            "Broadcasts; missing / duplicate deliveries",
            [f"{x['broadcasts']}; {x['missing']} / {x['duplicates']}" for x in s],
        ),
        row(
            "Broadcast latency p50 / p99 (ms)",
            [f"{_f(x['latency_p50_ms'])} / {_f(x['latency_p99_ms'])}" for x in s],
        ),
        row(
            "Publish request p99 / max (ms); failures",
            [
                f"{_f(x['publish']['p99_ms'])} / {_f(x['publish']['max_ms'])}; {_statuses(x['publish']['failures'], 0)}"
                for x in s
            ],
        ),
        row(
            "Probe p99: healthz / inbox / page / static (ms)",
            [
                " / ".join(_f(v["p99_ms"]) for v in x.get("probes", {}).values()) or "—"
                for x in s
            ],
        ),
        row("nginx 5xx (access log)", [_statuses(x["nginx_statuses"], 500) for x in s]),
        row(
            "Non-200 answers the clients saw",
            [_statuses(x["loadgen_statuses"], 201) for x in s],
        ),
        row(
            "nginx error log, most frequent",
            [_errors(x.get("nginx_errors")) for x in s],
        ),
    ]


def _errors(counts: R | None, top: int = 4) -> str:
    """The most frequent kinds of error-log line, "count× message"."""
    if counts is None:
        return "—"
    if not counts:
        return "none"
    ranked = sorted(counts.items(), key=lambda kv: -kv[1])[:top]
    return "; ".join(f"{_f(n)}× {kind.replace('|', '/')}" for kind, n in ranked)


def render(out: R, raw: Path) -> str:
    m = out["machine"]
    st = out["settings"]
    quick = "`--quick`, " if st.get("quick") else ""
    workers = len(out.get("ports", {}).get("workers", []))
    lines = [
        f"Run of {m['date']} ({m.get('duration_s', '?')} s): {m['nproc']} CPUs "
        f"({m['cpu']}), Python {m['python']}, uvicorn {m['versions']['uvicorn']}, "
        f"{quick}{workers} workers, broadcasts {st['interval']:g} s apart. "
        f"Load average before/after: {m['load_before'][0]:.2f} / "
        f"{m.get('load_after', [0])[0]:.2f}. Raw data: `{raw}`.",
        "",
    ]
    if "error" in out:
        lines += [f"**The run failed:** {short(out['error'])}", ""]
    steps = out["steps"]
    if steps:
        lines += [
            "| Step | " + " | ".join(f"{s['open']['streams']:,}" for s in steps) + " |"
        ]
        lines += ["|---|" + "---|" * len(steps)]
        lines += _step_rows(steps)[1:]
    rate = out.get("rate")
    if rate:
        rungs = "; ".join(
            f"{r['rate']:g}/s: p99 {_f(r['latency_p99_ms'])} ms, missing {r['missing']}"
            for r in rate["rungs"]
        )
        capped = ", the top of a quick run's ladder" if st.get("quick") else ""
        best = rate["sustained_per_s"]
        sustained = "none of the rungs" if best is None else f"{best:g}/s"
        lines += [
            "",
            f"Highest broadcast rate sustained at {steps[-1]['open']['streams']:,} "
            f"streams: **{sustained}**{capped}. Rungs: {rungs}.",
        ]
    lines += _storm_rows(out.get("storms", {}))
    return "\n".join(lines)


def update_doc(doc: Path, block: str) -> None:
    text = doc.read_text()
    if START not in text or END not in text:
        raise RuntimeError(f"{doc} has no {START} … {END} block")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    doc.write_text(f"{head}{START}\n{block}\n{END}{tail}")
