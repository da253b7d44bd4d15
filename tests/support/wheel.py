"""Build notify's wheel from this checkout, as a release would."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def build_wheel(outdir: Path, *, timeout: float = 120) -> Path:
    """``python -m build --wheel`` into ``outdir``; returns the wheel's path.

    No isolated build environment: the build backend (hatchling) is installed
    with the test extras, so the build needs no network.
    """
    subprocess.run(
        [
            sys.executable,
            "-m",
            "build",
            "--wheel",
            "--no-isolation",
            "--outdir",
            str(outdir),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
        timeout=timeout,
    )
    (wheel,) = outdir.glob("*.whl")
    return wheel
