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


#: Stages whose Ray logs go to a file unless --verbose: a job's output *is* its log (`ray job logs`,
#: the dashboard), so jobs show Ray's and the workers' logs there, as a plain Ray job would.
_QUIET_BY_DEFAULT = {"ingest", "tune", "distill", "pipeline"}


def run(command: list[str], argv: list[str] | None = None) -> None:
    from mbta_ray.cli import app

    args = [*command, *(sys.argv[1:] if argv is None else argv)]
    if command[-1] in _QUIET_BY_DEFAULT and not {"--verbose", "-v", "--help"} & set(args):
        args.append("--verbose")
    app(args=args, prog_name=Path(sys.argv[0]).name)
