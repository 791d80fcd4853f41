"""ACRO interop: show an ACRO output with ACRO's own verdict attached for the reviewer.

ACRO (``pip install 'remote_kernel[acro]'``) checks tables it computes itself,
inside the researcher's kernel. At a datasite that kernel runs researcher
code, so ACRO's verdict is evidence the researcher could forge: the datasite
shows it to the reviewer as a hint, and auto-releases on it only where the
policy's ``trust_kernel_evidence`` says so (see docs/policy.md).

    from acro import ACRO
    acro = ACRO(suppress=True)
    table = acro.crosstab(df.sex, df.num)
    rk.acro.show(acro)        # the last ACRO output, with its status and summary
"""

from __future__ import annotations

from typing import Any

from IPython.display import display


def show(session: Any, which: int = -1) -> None:
    """Display one of an ACRO session's outputs (default: the latest) with its verdict."""
    records = list(session.results.results.values())
    if not records:
        raise ValueError("this ACRO session has no outputs yet")
    record = records[which]
    hint = {"acro": {"status": str(record.status), "summary": str(record.summary)}}
    outputs = record.output if isinstance(record.output, list) else [record.output]
    for output in outputs:
        display(output, metadata=hint)
