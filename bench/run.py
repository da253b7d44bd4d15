"""``python -m bench.run``: notify against the pure-ASGI reference, same run.

Starts redis-server, builds a fresh SQLite database with users and tokens,
then for each stream count starts one fresh uvicorn worker per target
(reference first, then notify), measures it (see ``scenario.py``) and stops
it. Writes ``bench/results/<timestamp>.json`` and the results section of
``docs/PERFORMANCE.md``. Every phase is bounded and every child is killed
at the end, or with this process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import report, servers
from bench.scenario import Plan, Scenario, Target

ROOT = servers.ROOT
RESULTS = ROOT / "bench" / "results"
DOC = ROOT / "docs" / "PERFORMANCE.md"
HEARTBEAT = "60"


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("--streams", default="1000,5000", help="comma-separated N")
    parser.add_argument("--broadcasts", type=int, default=40)
    parser.add_argument("--spacing", type=float, default=0.5, help="seconds")
    parser.add_argument(
        "--quick", action="store_true", help="200 streams, 5 broadcasts"
    )
    parser.add_argument(
        "--targets",
        default="reference,notify",
        help="reference, notify (the reference first)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="py-spy each streaming worker while it broadcasts",
    )
    parser.add_argument(
        "--gc-threshold",
        type=int,
        help="experiment: the servers' first GC generation threshold (default 700)",
    )
    parser.add_argument(
        "--auth",
        choices=("token", "session"),
        default="token",
        help="how the streams authenticate: bearer token or session cookie",
    )
    parser.add_argument(
        "--setting",
        action="append",
        default=[],
        metavar="NOTIFY_NAME=VALUE",
        help="a setting for notify's server (repeatable), e.g. "
        "NOTIFY_MAX_STREAMS_PER_USER=0",
    )
    parser.add_argument(
        "--open-concurrency",
        type=int,
        default=64,
        metavar="K",
        help="streams being opened at once (1: one after another, as users "
        "trickle in; 64: a burst)",
    )
    parser.add_argument("--no-doc", action="store_true", help="leave docs/ alone")
    parser.add_argument("--max-seconds", type=float, default=900)
    args = parser.parse_args(argv)
    if args.quick:
        args.streams, args.broadcasts = "200", 5
    args.counts = sorted({int(n) for n in args.streams.split(",") if n.strip()})
    if not args.counts or min(args.counts) <= 10:
        parser.error("--streams must be larger than 10")
    if args.open_concurrency < 1:
        parser.error("--open-concurrency must be at least 1")
    args.target_names = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = set(args.target_names) - {"reference", "notify"}
    if unknown or not args.target_names:
        parser.error(f"unknown --targets: {', '.join(sorted(unknown)) or '(none)'}")
    for setting in args.setting:
        name, equals, _ = setting.partition("=")
        if not (equals and name.startswith("NOTIFY_")):
            parser.error(f"--setting takes NOTIFY_NAME=VALUE, not {setting!r}")
    return args


def _base_env() -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("NOTIFY_", "REDIS_URL", "DATABASE_URL", "DJANGO_"))
    }
    env.update(PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1", PYTHONDONTWRITEBYTECODE="1")
    return env


def notify_env(db_path: Path, redis_url: str) -> dict[str, str]:
    return _base_env() | {
        "DJANGO_SETTINGS_MODULE": "project.settings",
        "SECRET_KEY": "bench-" + "k" * 50,
        "DATABASE_URL": f"sqlite:///{db_path}",
        "REDIS_URL": redis_url,
        "NOTIFY_PUBLISH_RATE": "1000/s",
        "NOTIFY_PADDING_BYTES": "0",
        "NOTIFY_HEARTBEAT_SECONDS": HEARTBEAT,
        "NOTIFY_LOG_LEVEL": "WARNING",
    }


def reference_env(redis_url: str) -> dict[str, str]:
    return _base_env() | {"REDIS_URL": redis_url, "NOTIFY_HEARTBEAT_SECONDS": HEARTBEAT}


def _prepare_database(env: dict[str, str], users: int, auth: str) -> dict[str, Any]:
    run = [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"]
    subprocess.run(run, env=env, cwd=ROOT, check=True, timeout=120)
    seeded = subprocess.run(
        [sys.executable, "-m", "bench.seed", str(users), auth],
        env=env,
        cwd=ROOT,
        check=True,
        timeout=300,
        capture_output=True,
        text=True,
    )
    return json.loads(seeded.stdout)  # type: ignore[no-any-return]


def _log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


async def _run(
    args: argparse.Namespace, workdir: Path, results: list[dict[str, Any]]
) -> None:
    redis, redis_url = await servers.start_redis(workdir)
    try:
        db_path = workdir / "bench.sqlite3"
        env = notify_env(db_path, redis_url)
        env.update(setting.split("=", 1) for setting in args.setting)
        _log(f"database: migrate and {max(args.counts)} users with tokens")
        seeded = await asyncio.to_thread(
            _prepare_database, env, max(args.counts), args.auth
        )
        targets = {
            "reference": Target(
                "reference",
                "bench.reference_asgi:app",
                reference_env(redis_url),
                None,
                seeded["publisher"],
                seeded["viewers"],
                args.profile,
            ),
            "notify": Target(
                "notify",
                "project.asgi:application",
                env,
                db_path,
                seeded["publisher"],
                seeded["viewers"],
                args.profile,
            ),
        }
        for n in args.counts:
            plan = Plan(
                streams=n,
                broadcasts=args.broadcasts,
                spacing=args.spacing,
                open_timeout=60 + n * 0.03,
                deliver_timeout=30 + n * 0.004,
                workdir=workdir,
                results_dir=RESULTS,
                gc_threshold=args.gc_threshold,
                open_concurrency=args.open_concurrency,
            )
            for name in args.target_names:
                _log(f"{name}: {n} streams, {args.broadcasts} broadcasts")
                try:
                    result = await Scenario(targets[name], plan).run()
                except (Exception, TimeoutError) as exc:
                    result = {"target": name, "streams": n, "error": repr(exc)}
                _log(report.one_line(result))
                results.append(result)
    finally:
        await asyncio.to_thread(redis.stop)


async def _main(args: argparse.Namespace) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="notify-bench-") as tmp:
        try:
            async with asyncio.timeout(args.max_seconds):
                await _run(args, Path(tmp), results)
        except TimeoutError:
            why = f"the run was stopped after --max-seconds {args.max_seconds:g}"
            _log(why)
            results.append({"target": "run", "streams": 0, "error": why})
    return results


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    limit = servers.raise_fd_limit()
    if limit < max(args.counts) + 200:
        _log(
            f"RLIMIT_NOFILE hard limit {limit} is too low for {max(args.counts)} streams"
        )
        return 2
    RESULTS.mkdir(parents=True, exist_ok=True)
    info = report.machine_info()
    started = time.monotonic()
    try:
        results = asyncio.run(_main(args))
    except KeyboardInterrupt:
        _log("interrupted; every server has been stopped")
        return 130
    info["duration_s"] = round(time.monotonic() - started, 1)
    info["load_after"] = os.getloadavg()
    settings = {
        "broadcasts": args.broadcasts,
        "spacing_s": args.spacing,
        "streams": args.counts,
        "heartbeat_s": float(HEARTBEAT),
        "quick": args.quick,
        "gc_threshold": args.gc_threshold,
        "auth": args.auth,
        "open_concurrency": args.open_concurrency,
    }
    document = {"machine": info, "settings": settings, "results": results}
    out = RESULTS / f"{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.write_text(json.dumps(document, indent=2))
    _log(f"raw results: {out.relative_to(ROOT)}")
    if not args.no_doc:
        report.update_doc(DOC, report.render(document, out.relative_to(ROOT)))
        _log(f"results section written to {DOC.relative_to(ROOT)}")
    failed = any("error" in r for r in results)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
