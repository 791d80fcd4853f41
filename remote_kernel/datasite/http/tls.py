"""TLS for the datasite's listeners (the researcher API and the kernel API over TCP)."""

from __future__ import annotations

import ssl


def tls_context(certfile: str, keyfile: str) -> ssl.SSLContext:
    """A server TLS context from PEM files; errors name the file that is wrong."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(certfile, keyfile)
    except (OSError, ssl.SSLError) as exc:
        raise OSError(f"cannot load TLS certificate {certfile} / key {keyfile}: {exc}") from None
    return context
