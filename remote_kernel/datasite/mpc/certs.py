"""A site's MPC key and self-signed certificate: ``python -m remote_kernel.datasite.mpc.certs``.

Each site makes its own pair, keeps the key (0600) and gives the certificate to its
peers, who name it in their ``mpc.peers``; parties pin each other's certificates,
so no common certificate authority is needed. The certificate names the site
(subject alternative name ``DNS:<site>``), which is what peers check on connect.

    python -m remote_kernel.datasite.mpc.certs cleveland /srv/cleveland/mpc
"""

from __future__ import annotations

import datetime
import os
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def make_certificate(name: str, directory: Path, days: int = 825) -> tuple[Path, Path]:
    """Write ``<name>.key`` (0600) and ``<name>.pem`` under ``directory``; their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_path, cert_path = directory / f"{name}.key", directory / f"{name}.pem"
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m remote_kernel.datasite.mpc.certs SITE_NAME DIRECTORY")
    key_file, cert_file = make_certificate(sys.argv[1], Path(sys.argv[2]))
    print(f"key: {key_file} (keep it here)\ncertificate: {cert_file} (give it to your peers)")
