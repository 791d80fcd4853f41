"""Mock data: generation at three fidelity levels and its fidelity/privacy report.

May live here: making a mock from a private table (``generate``) and the report a
data owner reads before publishing it (``report``). The datasite calls these when
a dataset is added or re-mocked.

May not: import ``remote_kernel.datasite``, ``remote_kernel.researcher`` or
``remote_kernel.checks``; ``report`` builds on ``generate``, never the reverse.
"""
