"""Appending a run to bench/RESULTS.md: heading with the time and command, the machine, the body."""

from __future__ import annotations

import datetime as dt
import os
import platform
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def machine() -> str:
    """'Machine: N CPUs (cpu), Python x.y.z.' -- the start of every section's description."""
    return (
        f"Machine: {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
        f"Python {platform.python_version()}."
    )


def append(description: str, body: list[str]) -> None:
    """A '### <UTC time> -- `python <this script> <args>`' section: description, then body lines."""
    cmd = "python " + " ".join(["bench/" + Path(sys.argv[0]).name, *sys.argv[1:]])
    head = [
        "",
        f"### {dt.datetime.now(dt.UTC):%Y-%m-%dT%H:%M:%S}+00:00 -- `{cmd}`",
        "",
        f"{machine()} {description}",
        "",
    ]
    with open(RESULTS, "a") as f:
        f.write("\n".join(head + body) + "\n")
