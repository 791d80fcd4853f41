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
#: The kernel API over TCP with TLS (``https://host:port``), for kernels on other machines
#: (a gateway's): they have no datasite socket or files, and read their tables there too.
API_URL_ENV = "REMOTE_KERNEL_API_URL"
#: The PEM certificate(s) such a kernel verifies the kernel API's TLS certificate with.
API_CA_ENV = "REMOTE_KERNEL_API_CA"
#: Open private files handed to a sandboxed kernel by its launcher (JSON: name -> fd).
DATASET_FDS_ENV = "REMOTE_KERNEL_DATASET_FDS"
