"""A private redis-server with ACL users per tracetags role, and optionally TLS.

The certificates are made in the test's temp dir with ``cryptography``: a CA, a server
certificate for 127.0.0.1 signed by it, and an unrelated CA (a client that trusts only that
one must refuse the server).
"""

from __future__ import annotations

import datetime
import ipaddress
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import redis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tracetags.embedded import find_server_binary, free_port
from tracetags.security import ROLES, Role, acl_setuser

ADMIN_PASSWORD = "admin-S3cret-pw"


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: str,
    signer: ec.EllipticCurvePrivateKey,
    *,
    ca: bool,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
    return builder.sign(signer, hashes.SHA256())


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    cert: Path
    key: Path
    #: A CA that did not sign the server's certificate.
    other_ca: Path


def make_tls_files(directory: Path) -> TlsFiles:
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, other_key, server_key = _key(), _key(), _key()
    ca = _certificate("tracetags test CA", ca_key, "tracetags test CA", ca_key, ca=True)
    other = _certificate("another CA", other_key, "another CA", other_key, ca=True)
    server = _certificate("127.0.0.1", server_key, "tracetags test CA", ca_key, ca=False)
    files = TlsFiles(
        ca=directory / "ca.pem",
        cert=directory / "server.pem",
        key=directory / "server.key",
        other_ca=directory / "other-ca.pem",
    )
    files.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files.other_ca.write_bytes(other.public_bytes(serialization.Encoding.PEM))
    files.cert.write_bytes(server.public_bytes(serialization.Encoding.PEM))
    _write_key(files.key, server_key)
    return files


class SecureRedis:
    """redis-server with a password on the default user (the admin) and one ACL user per
    role of each namespace given to :meth:`add_namespace`; over TLS when ``tls`` is given."""

    def __init__(self, directory: Path, tls: TlsFiles | None = None) -> None:
        self.directory = directory
        self.tls = tls
        self.port = free_port()
        self.binary = find_server_binary()
        directory.mkdir(parents=True, exist_ok=True)
        command = [
            self.binary,
            "--bind", "127.0.0.1",
            "--dir", str(directory),
            "--save", "",
            "--appendonly", "no",
            "--requirepass", ADMIN_PASSWORD,
            "--logfile", "redis.log",
            "--busy-reply-threshold", "200",
        ]  # fmt: skip
        if tls is None:
            command += ["--port", str(self.port)]
        else:
            command += [
                "--port", "0",
                "--tls-port", str(self.port),
                "--tls-cert-file", str(tls.cert),
                "--tls-key-file", str(tls.key),
                "--tls-ca-cert-file", str(tls.ca),
                "--tls-auth-clients", "no",
            ]  # fmt: skip
        self.process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        self._wait_ready()

    def url(
        self, user: str | None = None, password: str | None = None, *, ca: Path | None = None
    ) -> str:
        """The URL of this server as ``user`` (None: the admin, the default user)."""
        secret = ADMIN_PASSWORD if user is None else password or ""
        auth = f"{user or ''}:{quote(secret)}@"
        if self.tls is None:
            return f"redis://{auth}127.0.0.1:{self.port}/0"
        return f"rediss://{auth}127.0.0.1:{self.port}/0?ssl_ca_certs={ca or self.tls.ca}"

    def admin(self) -> redis.Redis:
        return redis.Redis.from_url(self.url())

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 10
        while True:
            if self.process.poll() is not None:
                log_file = self.directory / "redis.log"
                log = log_file.read_text()[-800:] if log_file.exists() else ""
                stderr = self.process.stderr.read().decode() if self.process.stderr else ""
                raise RuntimeError(f"redis-server exited: {stderr or log}")
            client = self.admin()
            try:
                if client.ping():
                    return
            except redis.RedisError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
            finally:
                client.close()

    def add_namespace(self, namespace: str) -> dict[Role, str]:
        """One user per role confined to ``namespace``; their URLs by role."""
        urls: dict[Role, str] = {}
        client = self.admin()
        try:
            for role in ROLES:
                user, password = f"{namespace}-{role}", f"pw-{role}-{namespace}"
                rules = acl_setuser(role, namespace, user, password)
                client.execute_command("ACL", "SETUSER", *rules)
                urls[role] = self.url(user, password)
        finally:
            client.close()
        return urls

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
