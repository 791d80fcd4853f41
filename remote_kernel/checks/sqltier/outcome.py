"""What the sound tier hands back for one query."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from remote_kernel.protocol.models import Finding, Verdict


@dataclass
class QueryOutcome:
    """What the datasite did with one query.

    ``result`` is the true aggregate (for the datasite and reviewers; it also goes
    back to the kernel, which lives inside the datasite). ``released`` is what may
    leave: the result itself, a suppressed/rounded copy, or None when a person must
    decide. ``findings`` are for reviewers; ``summary`` is content-free and safe to
    show the researcher.
    """

    sql: str
    result: pd.DataFrame
    released: pd.DataFrame | None
    verdict: Verdict
    findings: list[Finding]
    summary: str
