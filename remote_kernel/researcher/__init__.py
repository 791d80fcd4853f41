"""The researcher's side: everything that runs in a notebook kernel or for one.

May live here: the datasite client (the only REST/websocket client of the
datasite API; the JupyterLab server extension uses it too), saved connections,
``%%remote`` and its fan-out, the proxy kernel, displays, values, and
``rk.data`` / ``rk.query`` as they run in a kernel -- in the researcher's own
kernel on the mock, and in the kernel a datasite starts for the researcher,
where researcher code runs (so this code is untrusted by the datasite too).

May not: import ``remote_kernel.datasite``, ``remote_kernel.checks`` or
``remote_kernel.mocks`` (import-linter contract "researcher side stays out of the
datasite"). The researcher side learns about private data only through the API.
"""
