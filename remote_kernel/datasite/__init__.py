"""Inside the trust boundary: the datasite server, which holds the private data.

May live here: the core (``core.DatasiteCore``: sessions, the output path, reviews;
no HTTP in it), the store and its audit chain, the views (what each role may
see: invariant 1), kernels and their sandbox, the datasite directory's config
and datasets, and ``http/`` (tornado app, handlers, the kernel API, throttling).

May not: import ``remote_kernel.researcher`` or ``remote_kernel.labapp``
(import-linter contract "the datasite never runs researcher-side code"): code a
researcher sends runs only in a kernel process, never in this package's process.
"""
