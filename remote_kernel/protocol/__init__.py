"""What crosses the boundary, and what both sides agree on.

May live here: the states and verdicts (``models``), the exception root and its
HTTP status table (``errors``), names (``names``), the environment a datasite
gives its kernels (``kernel_env``) and the safe half of the value codec
(``values``: mime types, canonical Arrow, decoding without running anything).

May not: anything that does I/O, talks to a datasite, holds private data, or
unpickles. This package imports nothing else from ``remote_kernel``
(import-linter contract "protocol is the bottom layer").
"""
