"""The --tls-* flags: the same names and GLITCHES_TLS_* variables on every daemon and every command that
dials the scheduler (services.tls.TlsConfig holds what they mean)."""

from __future__ import annotations

import click

from glitches.services.runtime.errors import GlitchesError as ServiceError


def tls_flags(server: bool) -> list:
    flags = [
        click.option("--tls-ca", default="", envvar="GLITCHES_TLS_CA",
                     help="PEM CA that signs every peer's certificate; turns TLS on (`glitches certs` makes one)."),
        click.option("--tls-cert", default="", envvar="GLITCHES_TLS_CERT",
                     help="PEM certificate of this process (served, and shown to servers for mTLS)."),
        click.option("--tls-key", default="", envvar="GLITCHES_TLS_KEY", help="PEM private key of --tls-cert."),
        click.option("--tls-server-name", default="", envvar="GLITCHES_TLS_SERVER_NAME",
                     help="Name expected in servers' certificates instead of their address's host."),
    ]
    if server:
        flags.append(click.option("--tls-client-auth", default="require", envvar="GLITCHES_TLS_CLIENT_AUTH",
                                  type=click.Choice(["require", "none"]), show_default=True,
                                  help="With TLS: require a client certificate signed by --tls-ca (mTLS)."))
        flags.append(click.option("--tls-peer-roles/--no-tls-peer-roles", default=True,
                                  envvar="GLITCHES_TLS_PEER_ROLES", show_default=True,
                                  help="Workers under mTLS: Prefill/Decode/Release only from the `scheduler` "
                                       "certificate, TransferKV only from `gpu-worker` (by subject CN)."))
    return flags


def client_tls_options(fn):
    """--tls-* flags of the commands that dial the scheduler; they become one `tls` argument."""
    for option in reversed(tls_flags(server=False)):
        fn = option(fn)
    return fn


def client_tls(kwargs: dict):
    """Pop the --tls-* values of client_tls_options into a TlsConfig (UsageError when half-given)."""
    from glitches.services.auth.tls import TlsConfig

    try:
        return TlsConfig(ca=kwargs.pop("tls_ca"), cert=kwargs.pop("tls_cert"), key=kwargs.pop("tls_key"),
                         server_name=kwargs.pop("tls_server_name"))
    except ServiceError as error:
        raise click.UsageError(str(error)) from None
