"""TLS for every gRPC link: one identity (certificate + key) and one trust root (CA) per process.

A daemon given a certificate and key serves TLS; given a CA as well it also *requires* a client
certificate signed by that CA (mutual TLS), unless client_auth is "none" (e.g. a scheduler whose
public clients authenticate with API keys only). Every channel a process opens (scheduler to workers,
GPU worker to FPGA worker, SDK and gateway to the scheduler) verifies the server against the CA and
presents the process's own certificate, so the same three files make a process both a TLS server and
an mTLS client. `glitches certs` writes a CA and per-role certificates for a deployment.

server_name overrides the host name checked against the server's certificate (gRPC's
ssl_target_name_override): useful where peers are reached by pod IPs that no certificate can list.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc

from glitches.services.runtime.errors import InvalidArgument

CLIENT_AUTH_CHOICES = ("require", "none")


@dataclass(frozen=True)
class TlsConfig:
    ca: str = ""  # PEM file: the CA that signs peers' certificates (trust root)
    cert: str = ""  # PEM file: this process's certificate chain
    key: str = ""  # PEM file: this process's private key
    client_auth: str = "require"  # as a server with a CA: "require" a client certificate, or "none"
    server_name: str = ""  # name expected in servers' certificates instead of the address's host

    def __post_init__(self):
        if bool(self.cert) != bool(self.key):
            raise InvalidArgument("give --tls-cert and --tls-key together (a certificate needs its private key)")
        if self.client_auth not in CLIENT_AUTH_CHOICES:
            raise InvalidArgument(f"--tls-client-auth must be one of {', '.join(CLIENT_AUTH_CHOICES)}, "
                                  f"got {self.client_auth!r}")
        if self.enabled and not self.ca:
            raise InvalidArgument("TLS needs --tls-ca: the CA that signed the peers' certificates "
                                  "(`glitches certs` makes one)")

    @property
    def enabled(self) -> bool:
        return bool(self.ca or self.cert)

    def _read(self, path: str, what: str) -> bytes:
        try:
            return Path(path).read_bytes()
        except OSError as error:
            raise InvalidArgument(f"cannot read the TLS {what} {path!r}: {error.strerror}") from None

    def server_credentials(self) -> grpc.ServerCredentials:
        """TLS with this process's certificate; mTLS (client certificate required) when client_auth says so."""
        if not self.cert:
            raise InvalidArgument("a TLS server needs --tls-cert and --tls-key")
        pair = (self._read(self.key, "key"), self._read(self.cert, "certificate"))
        mutual = self.client_auth == "require"
        return grpc.ssl_server_credentials([pair], root_certificates=self._read(self.ca, "CA") if mutual else None,
                                           require_client_auth=mutual)

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """Verify servers against the CA; present this process's certificate when it has one."""
        key = self._read(self.key, "key") if self.key else None
        chain = self._read(self.cert, "certificate") if self.cert else None
        return grpc.ssl_channel_credentials(root_certificates=self._read(self.ca, "CA"), private_key=key,
                                            certificate_chain=chain)

    def channel_options(self) -> list[tuple[str, str]]:
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []


PLAINTEXT = TlsConfig()


def from_env(environ) -> TlsConfig:
    """The client-side TLS settings of GLITCHES_TLS_CA / _CERT / _KEY / _SERVER_NAME (all unset: plaintext)."""
    return TlsConfig(ca=environ.get("GLITCHES_TLS_CA", ""), cert=environ.get("GLITCHES_TLS_CERT", ""),
                     key=environ.get("GLITCHES_TLS_KEY", ""), server_name=environ.get("GLITCHES_TLS_SERVER_NAME", ""))
