"""nginx in front of uvicorn workers, rendered from the top-level nginx.conf.

The tests run nginx exactly as ``scripts/stack`` does, from the same template,
on free loopback ports and in a temporary directory, in the foreground.
"""

from __future__ import annotations

import getpass
import os
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

from django.contrib.auth.hashers import PBKDF2PasswordHasher

from tests.support import forkserver
from tests.support.servers import ROOT, Process, _port_open, free_port, need, wait_for

TEMPLATE = ROOT / "nginx.conf"

# A proxy that holds responses back, like some corporate proxies and antivirus
# products do: it buffers, ignores the application's ``X-Accel-Buffering: no``
# and compresses without flushing, so the stream's first bytes (headers
# included) sit in its 64 KiB buffers until they fill up. Complete responses,
# such as long polls, pass through.
BUFFERING_SERVER = """
    server {
        listen %(listen)s;
        server_name _;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_set_header Host $http_host;
        location /static/ {
            alias %(static_root)s/;
        }
        location / {
            proxy_pass http://notify_app;
            proxy_buffering on;
            proxy_ignore_headers X-Accel-Buffering;
            proxy_buffer_size 64k;
            proxy_buffers 16 64k;
            proxy_busy_buffers_size 512k;
            # Compressing without flushing holds small writes back too.
            gzip on;
            gzip_types text/event-stream application/json;
            gzip_min_length 0;
            gzip_buffers 16 64k;
            proxy_read_timeout 1h;
        }
    }
"""


# Open streams the rendered nginx accepts (and each worker may hold).
STREAM_CAP = 1000


class QuickPBKDF2PasswordHasher(PBKDF2PasswordHasher):
    """The servers' algorithm (hashes carry their round count, so the servers
    verify these), with few rounds: test users are made in milliseconds."""

    iterations = 1000


def render(
    template: str,
    *,
    listen: str,
    upstreams: Iterable[int],
    static_root: Path,
    run_dir: Path,
    extra_servers: str = "",
) -> str:
    """Fill in the ``{{ name }}`` slots of nginx.conf, sized for the tests' few
    streams (``scripts/stack`` derives these numbers from its target)."""
    ports = list(upstreams)
    servers = " ".join(f"server 127.0.0.1:{port} max_fails=0;" for port in ports)
    stream_servers = " ".join(
        f"server 127.0.0.1:{port} max_fails=0 max_conns={STREAM_CAP};" for port in ports
    )
    values = {
        "user": getpass.getuser(),
        "run_dir": str(run_dir),
        "listen": listen,
        "listen_backlog": "511",
        "worker_processes": "1",
        "worker_connections": "4096",
        "worker_rlimit_nofile": "8192",
        "stream_cap": str(STREAM_CAP),
        "upstream_servers": servers,
        "stream_servers": stream_servers,
        "static_root": str(static_root).rstrip("/"),
        "extra_servers": extra_servers,
        "upstream_source": "",  # a few streams: one address is plenty
    }
    lines = []
    for line in template.splitlines(keepends=True):
        if not line.lstrip().startswith("#"):  # comments keep naming the slots
            for name, value in values.items():
                line = line.replace("{{ " + name + " }}", value)
            if "{{" in line:
                raise ValueError(f"nginx.conf has a slot render() cannot fill: {line}")
        lines.append(line)
    return "".join(lines)


class Nginx(Process):
    """nginx in the foreground with a rendered copy of nginx.conf."""

    def __init__(self, run_dir: Path, upstreams: list[int], static_root: Path) -> None:
        self.port = free_port()
        self.buffered_port = free_port()
        self.run_dir = run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        extra = BUFFERING_SERVER % {
            "listen": f"127.0.0.1:{self.buffered_port}",
            "static_root": str(static_root),
        }
        self.conf = run_dir / "nginx.conf"
        self.conf.write_text(
            render(
                TEMPLATE.read_text(),
                listen=f"127.0.0.1:{self.port}",
                upstreams=upstreams,
                static_root=static_root,
                run_dir=run_dir,
                extra_servers=extra,
            )
        )
        binary = need("nginx", "nginx")
        argv = [binary, "-p", str(run_dir), "-c", str(self.conf), "-g", "daemon off;"]
        super().__init__(argv, dict(os.environ), run_dir / "nginx-stdout.log")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def buffered_url(self) -> str:
        return f"http://127.0.0.1:{self.buffered_port}"

    def start(self) -> None:
        check = subprocess.run(
            [*self.argv[:5], "-t"], capture_output=True, text=True, timeout=10
        )
        if check.returncode != 0:
            raise RuntimeError(f"nginx -t failed:\n{check.stderr}")
        super().start()

        def listening() -> bool:
            if not self.running:
                raise RuntimeError(f"nginx exited:\n{self.output()[-3000:]}")
            return _port_open(self.port) and _port_open(self.buffered_port)

        wait_for(listening, 10, "nginx")

    def error_log(self) -> str:
        path = self.run_dir / "nginx-error.log"
        return path.read_text(errors="replace") if path.exists() else ""


def collectstatic(static_root: Path, env: dict[str, str]) -> None:
    """``manage.py collectstatic`` into ``static_root``, as a deploy would."""
    result = forkserver.run(
        [sys.executable, "manage.py", "collectstatic", "--noinput", "-v", "0"],
        env | {"STATIC_ROOT": str(static_root)},
        timeout=60,
    )
    if result.returncode != 0:
        raise RuntimeError(f"collectstatic failed:\n{result.stderr}")
