"""Black-box adoption: the wheel, installed (not editable) into a fresh
virtualenv, added to a project fresh from ``django-admin startproject`` with
the README's steps exactly as written ("Adding notify to an existing
project"), then served by uvicorn: a notification published over HTTP reaches
a stream under the host's URL prefix, and the bell renders on a host page.

Slow (a virtualenv and a pip install, from pip's cache when warm), so it runs
once per test run: on the SQLite run only (the host has its own database).
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.servers import ROOT, auth, free_port, wait_for
from tests.support.wheel import build_wheel

pytestmark = [pytest.mark.adoption, pytest.mark.timeout(600)]

PREFIX = "/notifications/"
INSTALL_TIMEOUT = 420


def readme_steps() -> dict[str, str]:
    """The README's marked code blocks: ``<!-- adoption: NAME -->`` then a
    fenced block (indented as a list item's)."""
    text = (ROOT / "README.md").read_text()
    pattern = re.compile(
        r"<!-- adoption: (\w+) -->\n( *)```\w*\n(.*?)\n\2```", re.DOTALL
    )
    return {name: textwrap.dedent(body) for name, _, body in pattern.findall(text)}


def test_the_readme_has_every_step():
    assert set(readme_steps()) == {
        "install",
        "settings",
        "urls",
        "asgi",
        "run",
        "template",
    }


@pytest.fixture(scope="module")
def host(
    tmp_path_factory: pytest.TempPathFactory, database_backend: str
) -> Iterator[Path]:
    if database_backend != "sqlite":
        pytest.skip("runs once per test run, with the SQLite run")
    base = tmp_path_factory.mktemp("adoption")
    yield _adopt(base)


def _run(
    argv: list[str], cwd: Path, env: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, f"{argv}:\n{result.stdout}\n{result.stderr}"
    return result


def _check(project: Path, env: dict[str, str]) -> str:
    python = str(project.parent / "venv" / "bin" / "python")
    result = _run([python, "manage.py", "check"], project, env)
    return result.stdout + result.stderr


def _env(venv: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("NOTIFY_", "REDIS_URL", "DATABASE_URL", "DJANGO_"))
        and k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONDEVMODE")
    }
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(venv)
    return env


def _shell_lines(block: str) -> list[list[str]]:
    return [shlex.split(line) for line in block.splitlines() if line.strip()]


def _adopt(base: Path) -> Path:
    steps = readme_steps()
    dist = base / "dist"
    dist.mkdir()
    build_wheel(dist)

    venv = base / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], base, dict(os.environ))
    env = _env(venv)
    # 1. pip install, from the wheel just built (the name is not on the index
    # yet); every other requirement from the index, through pip's cache.
    (install,) = _shell_lines(steps["install"])
    assert install[:2] == ["pip", "install"]
    _run(
        [str(venv / "bin" / "python"), "-m", *install, "--find-links", str(dist)],
        base,
        env,
        timeout=INSTALL_TIMEOUT,
    )
    site = _run(
        [str(venv / "bin" / "python"), "-c", "import notify; print(notify.__file__)"],
        base,
        env,
    ).stdout
    assert str(venv) in site and str(ROOT) not in site  # installed, not editable

    _run([str(venv / "bin" / "django-admin"), "startproject", "mysite"], base, env)
    project = base / "mysite"
    package = project / "mysite"

    # 2. settings, 3. URLs: appended to startproject's files as written.
    settings = package / "settings.py"
    settings.write_text(settings.read_text() + "\n" + steps["settings"] + "\n")
    urls = package / "urls.py"
    urls.write_text(urls.read_text() + "\n" + steps["urls"] + "\n")
    # Before the ASGI step, the check warns that streams would hold threads.
    assert "notify.W002" in _check(project, env)

    # 4. ASGI: the one line replaces Django's import.
    asgi = package / "asgi.py"
    stock = "from django.core.asgi import get_asgi_application"
    assert stock in asgi.read_text()
    asgi.write_text(asgi.read_text().replace(stock, steps["asgi"].strip()))
    assert "notify.W002" not in _check(project, env)

    # The host's own page, with 6. the template snippet on it.
    templates = project / "templates"
    templates.mkdir()
    (templates / "home.html").write_text(
        "<!doctype html><title>My site</title>\n"
        f"<nav>My site {steps['template'].strip()}</nav>\n"
    )
    settings.write_text(
        settings.read_text() + '\nTEMPLATES[0]["DIRS"] = [BASE_DIR / "templates"]\n'
    )
    urls.write_text(
        urls.read_text()
        + "\nfrom django.views.generic import TemplateView\n\n"
        + 'urlpatterns += [path("", TemplateView.as_view(template_name="home.html"))]\n'
    )
    return project


@contextlib.contextmanager
def _served(project: Path, command: list[str], port: int) -> Iterator[str]:
    venv = project.parent / "venv"
    argv = [str(venv / "bin" / command[0]), *command[1:], "--port", str(port)]
    log = (project / "uvicorn.log").open("wb")
    proc = subprocess.Popen(
        argv,
        cwd=project,
        env=_env(venv),
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if proc.poll() is not None:
            raise RuntimeError((project / "uvicorn.log").read_text()[-3000:])
        with contextlib.suppress(httpx.HTTPError):
            httpx.get(url + "/", timeout=1)
            return True
        return False

    try:
        wait_for(up, 60, "the host's uvicorn")
        yield url
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        log.close()


def _manage(project: Path, *argv: str, extra: dict[str, str] | None = None) -> str:
    venv = project.parent / "venv"
    return _run(
        [str(venv / "bin" / "python"), "manage.py", *argv],
        project,
        _env(venv) | (extra or {}),
    ).stdout


async def test_a_host_project_streams_publishes_and_shows_the_bell(host: Path) -> None:
    steps = readme_steps()
    migrate, serve = _shell_lines(steps["run"])
    assert migrate[:2] == ["python", "manage.py"]
    _manage(host, *migrate[2:])
    _manage(
        host,
        "createsuperuser",
        "--noinput",
        "--username",
        "alice",
        "--email",
        "alice@example.com",
        extra={"DJANGO_SUPERUSER_PASSWORD": "correct-horse-battery"},
    )
    token = _manage(host, "notify_token", "create", "alice", "--publish").strip()
    assert token.startswith("ntf_"), token

    assert serve[0] == "uvicorn"
    with _served(host, serve, free_port()) as url:
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            await _stream_receives_a_published_notification(client, token)
            await _the_bell_renders_on_a_host_page(client)


async def _stream_receives_a_published_notification(
    client: httpx.AsyncClient, token: str
) -> None:
    async with client.stream("GET", PREFIX + "events/", headers=auth(token)) as stream:
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        lines = stream.aiter_lines()
        deadline = time.monotonic() + 20
        async for line in lines:
            if line == "event: ready":
                break
            assert time.monotonic() < deadline
        published = await client.post(
            PREFIX + "api/notifications",
            json={"audience": "all", "title": "Hello from the host"},
            headers=auth(token),
        )
        assert published.status_code == 201, published.text
        sent_id = published.json()["id"]
        seen: list[str] = []
        async for line in lines:
            seen.append(line)
            if line.startswith("data: ") and "Hello from the host" in line:
                break
            assert time.monotonic() < deadline, seen
        assert f"id: {sent_id}" in seen
        assert "event: notification" in seen


async def _the_bell_renders_on_a_host_page(client: httpx.AsyncClient) -> None:
    anonymous = await client.get("/")
    assert anonymous.status_code == 200
    assert "data-notify-bell" not in anonymous.text

    login = await client.get("/admin/login/")
    csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', login.text)
    assert csrf is not None
    signed_in = await client.post(
        "/admin/login/?next=/",
        data={
            "csrfmiddlewaretoken": csrf.group(1),
            "username": "alice",
            "password": "correct-horse-battery",
        },
    )
    assert signed_in.status_code == 302, signed_in.text

    page = await client.get("/")
    assert page.status_code == 200
    assert "data-notify-bell" in page.text
    assert f'href="{PREFIX}"' in page.text  # the inbox, under the prefix
    assert "bell.js" in page.text
