"""`glitches certs`: a local certificate authority and one certificate per role for a deployment.

Writes into a directory:
  ca.pem, ca-key.pem           the CA (keep ca-key.pem offline once the certificates are made)
  ROLE.pem, ROLE-key.pem       for each role (default: scheduler, gpu-worker, fpga-worker, gateway, client)

Every role certificate is valid for both TLS server and client authentication (a daemon serves and
dials its peers with one identity) and names, as subject alternative names, localhost, 127.0.0.1, ::1,
this machine's host name and every --host given (DNS names or IP addresses). Keys are ECDSA P-256
and written with mode 0600. Uses the `cryptography` package.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_ROLES = ("scheduler", "gpu-worker", "fpga-worker", "gateway", "client")
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")


@dataclass(frozen=True)
class RoleFiles:
    cert: Path
    key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "GLITCHES"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _alt_names(hosts: tuple[str, ...]) -> x509.SubjectAlternativeName:
    names = []
    for host in dict.fromkeys(hosts):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)  # also when the file already existed with wider permissions


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def make_ca(out: Path, days: int) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name("GLITCHES local CA")).issuer_name(_name("GLITCHES local CA"))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    _write_cert(out / "ca.pem", cert)
    _write_key(out / "ca-key.pem", key)
    return cert, key


def make_role(out: Path, role: str, hosts: tuple[str, ...], days: int, ca_cert: x509.Certificate,
              ca_key: ec.EllipticCurvePrivateKey) -> RoleFiles:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name(role)).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=True, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(_alt_names(hosts), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    files = RoleFiles(out / f"{role}.pem", out / f"{role}-key.pem")
    _write_cert(files.cert, cert)
    _write_key(files.key, key)
    return files


def make_certs(out: Path, roles: tuple[str, ...] = DEFAULT_ROLES, hosts: tuple[str, ...] = (),
               days: int = 365) -> dict[str, RoleFiles]:
    """A fresh CA in `out` and a certificate + key per role, valid for `days` days; returns the role files."""
    if days < 1:
        raise ValueError(f"--days must be at least 1, got {days}")
    for role in roles:
        if not role or "/" in role or role.startswith("."):
            raise ValueError(f"a role name must be a plain file name, got {role!r}")
    out.mkdir(parents=True, exist_ok=True)
    ca_cert, ca_key = make_ca(out, days)
    all_hosts = (*LOCAL_HOSTS, socket.gethostname(), *hosts)
    return {role: make_role(out, role, all_hosts, days, ca_cert, ca_key) for role in roles}


def missing_files(folder: Path, roles: tuple[str, ...]) -> str:
    """What a certificate directory lacks for `roles` (ca.pem, ROLE.pem, ROLE-key.pem), as a message; "" if complete."""
    names = ("ca.pem", *(f"{role}{suffix}.pem" for role in roles for suffix in ("", "-key")))
    missing = [name for name in names if not (folder / name).is_file()]
    if not missing:
        return ""
    return f"--tls-dir {folder} lacks {', '.join(missing)}: make them with `glitches certs --out {folder}`"
