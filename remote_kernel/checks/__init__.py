"""The output checks, as pure code: what may leave the datasite, and why.

May live here: the output filter pipeline (``filter``), the policy (``policy``),
the disclosure-control rules (``rules``), the leak index and scan (``leaks``),
and the sound aggregate tier (``sqltier``). Functions take data and return
findings and verdicts.

May not: do I/O of its own (no network, no store, no files beyond what a caller
hands in), or import ``remote_kernel.datasite``, ``remote_kernel.researcher`` or
``remote_kernel.labapp`` (import-linter contract "checks are pure"). The
datasite core calls the checks; the checks never call back.
"""
