"""TLS for both transports from the `[tls]` PEM files; with `client_ca_file`, mutual TLS: a
client must present a certificate signed by that CA."""

from __future__ import annotations

import ssl
from pathlib import Path

import grpc

from alignd.config import ConfigError, TLSOptions


def _read(tls: TLSOptions, name: str) -> bytes:
    try:
        return Path(getattr(tls, name)).read_bytes()
    except OSError as error:
        raise ConfigError(f"tls.{name}: {error.strerror}: {getattr(tls, name)!r}") from None


def grpc_credentials(tls: TLSOptions) -> grpc.ServerCredentials:
    pair = (_read(tls, "key_file"), _read(tls, "cert_file"))
    ca = _read(tls, "client_ca_file") if tls.client_ca_file else None
    return grpc.ssl_server_credentials([pair], root_certificates=ca, require_client_auth=ca is not None)


def http_context(tls: TLSOptions) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(tls.cert_file, tls.key_file)
        if tls.client_ca_file:
            context.load_verify_locations(tls.client_ca_file)
            context.verify_mode = ssl.CERT_REQUIRED
    except (ssl.SSLError, OSError) as error:
        raise ConfigError(f"tls: cannot load the certificate files: {error}") from None
    return context


def describe(tls: TLSOptions) -> str:
    if not tls.cert_file:
        return "plaintext"
    return "mTLS" if tls.client_ca_file else "TLS"
