"""The datasite's HTTP layer: tornado app, thin handlers, the kernel API, throttling.

Handlers authenticate, check the role, call one method of the core
(:class:`remote_kernel.datasite.core.DatasiteCore`) and write a view from
:mod:`remote_kernel.datasite.views`; errors become JSON through the one status
table in :mod:`remote_kernel.protocol.errors`. The core does not import this package.
"""
