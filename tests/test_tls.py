"""TLS verification is on unless explicitly disabled: an untrusted certificate stops the run."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from pipeline.errors import ExitCode
from pipeline.fakeserver import FakeServerOptions, start_fake_server
from tests.conftest import run_pipeline
from tests.pdfgen import write_pdf


@pytest.fixture
def self_signed(tmp_path: Path) -> ssl.SSLContext:
    """A server context with a fresh self-signed certificate for 127.0.0.1 (no CA trusts it)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    return context


async def test_untrusted_certificate_stops_the_run_with_exit_3(tmp_path: Path,
                                                               self_signed: ssl.SSLContext) -> None:
    server = await start_fake_server(FakeServerOptions(), ssl_context=self_signed)
    try:
        assert server.url.startswith("https://")
        for i in range(5):
            write_pdf(tmp_path / f"in/d{i}.pdf", f"d{i}", 1)
        report = await run_pipeline(tmp_path / "in", tmp_path / "out", server.url)
        assert report.exit_code == ExitCode.FATAL
        assert "certificate" in (report.message or "")
        assert server.stats.answered_ok == 0
        assert report.documents_failed == 0, "a refused certificate is no document's fault"

        trusting = await run_pipeline(tmp_path / "in", tmp_path / "out", server.url,
                                      verify_tls=False)
        assert trusting.exit_code == 0 and trusting.documents_done == 5
    finally:
        await server.stop()
