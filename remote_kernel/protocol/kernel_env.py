"""The environment a datasite gives the kernels it starts: the contract between the two.

The datasite (``remote_kernel.datasite``) sets these variables when it starts a
researcher's kernel; the code that runs in that kernel (``rk.data``,
``rk.query``, in ``remote_kernel.researcher``) reads them. Only names live here.
"""

from __future__ import annotations

#: The directory of the site's datasets (private tables); set only in datasite kernels.
DATASETS_ENV = "REMOTE_KERNEL_DATASETS"
#: The datasite's name.
SITE_ENV = "REMOTE_KERNEL_SITE"
#: The Unix socket of the kernel API (``rk.query`` asks the datasite there).
API_SOCKET_ENV = "REMOTE_KERNEL_API_SOCKET"
#: This kernel's token for the kernel API (the variable's name, not a token).
API_TOKEN_ENV = "REMOTE_KERNEL_API_TOKEN"  # noqa: S105
#: Open private files handed to a sandboxed kernel by its launcher (JSON: name -> fd).
DATASET_FDS_ENV = "REMOTE_KERNEL_DATASET_FDS"
