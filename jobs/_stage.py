"""Runs one `mbta-ray` command as a Ray job's driver (shared by the jobs/<stage>.py entrypoints).

Inside a job, Ray puts the uploaded working directory on ``sys.path`` and sets ``RAY_ADDRESS``, so
the stage's own code connects to the cluster the job runs on. The exit code is the command's: a
failing stage makes the job FAILED.
"""

from __future__ import annotations

import sys
from pathlib import Path

# The repo root, when a job file is run from a checkout without the package installed.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def run(command: list[str], argv: list[str] | None = None) -> None:
    from mbta_ray.cli import app

    app(args=[*command, *(sys.argv[1:] if argv is None else argv)], prog_name=Path(sys.argv[0]).name)
