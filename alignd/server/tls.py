"""TLS for both transports from the `[tls]` PEM files; with `client_ca_file`, mutual TLS: a
client must present a certificate signed by that CA."""

from __future__ import annotations

import ssl
from pathlib import Path

import grpc

from alignd.config import ConfigError, TLSOptions


def grpc_credentials(tls: TLSOptions) -> grpc.ServerCredentials:
    """gRPC's credentials from the same files (load `http_context` first: gRPC's own errors do
    not say which file is wrong)."""
    pair = (Path(tls.key_file).read_bytes(), Path(tls.cert_file).read_bytes())
    ca = Path(tls.client_ca_file).read_bytes() if tls.client_ca_file else None
    return grpc.ssl_server_credentials([pair], root_certificates=ca, require_client_auth=ca is not None)


def http_context(tls: TLSOptions) -> ssl.SSLContext:
    """The HTTP API's TLS context; loading it checks the files (ConfigError naming the one at fault)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(tls.cert_file, tls.key_file)
    except (ssl.SSLError, OSError) as error:
        raise ConfigError(
            f"tls.cert_file, tls.key_file: not a PEM certificate chain and its private key: {error}"
        ) from None
    if tls.client_ca_file:
        try:
            context.load_verify_locations(tls.client_ca_file)
        except (ssl.SSLError, OSError) as error:
            raise ConfigError(f"tls.client_ca_file: not a PEM CA certificate: {error}") from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def describe(tls: TLSOptions) -> str:
    if not tls.cert_file:
        return "plaintext"
    return "mTLS" if tls.client_ca_file else "TLS"
