"""Security over real gRPC on loopback: mutual TLS with a CA made in the test, sockets
that listen on loopback only, and no patient data (PHI) in any log line.

One dedicated tritonserver runs with mutual TLS and ``--log-verbose=1`` (so the PHI
scan covers Triton's verbose log too); a TLS-only variant is started briefly in one
test; everything else uses the session ``server``.  Certificates are generated here
with ``cryptography``: a throwaway CA, a server certificate for 127.0.0.1/localhost,
a client certificate, and a second, untrusted CA with its own client.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import asyncio
import os
import pickle
import re
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest

pytest.importorskip("cryptography")
pytest.importorskip("pynetdicom")
pytest.importorskip("highdicom")

from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID  # noqa: E402
from pydicom.uid import generate_uid  # noqa: E402

from cxr.client import AsyncDetectorClient, DetectorClient, DetectorError  # noqa: E402
from cxr.client.errors import tls_hint  # noqa: E402
from cxr.client.pacs import PacsBridge, PacsConfig  # noqa: E402
from cxr.server.launcher import TritonServer  # noqa: E402
from cxr.server.net import free_port
from dicomnet import Destination, send  # noqa: E402  (tests/dicomnet.py)

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
WAIT_S = 60.0  # generous: the 2-core CI box also runs the server

# --------------------------------------------------------------------------- a throwaway PKI


@dataclass(frozen=True)
class Pki:
    ca: Path  # trusted CA: signed the server and the good client
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # an unrelated CA: signed the rogue client
    rogue_cert: Path
    rogue_key: Path


def _write(folder: Path, stem: str, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> tuple[Path, Path]:
    cert_path, key_path = folder / f"{stem}.pem", folder / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path


def _builder(subject: str, issuer: x509.Name, key: ec.EllipticCurvePrivateKey) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.timezone.utc)
    return (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(issuer).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1)))


def make_ca(folder: Path, name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate, Path]:
    """A self-signed CA certificate (may sign leaves only) and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (_builder(name, subject, key)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    return key, cert, _write(folder, name, key, cert)[0]


def make_leaf(folder: Path, name: str, ca_key, ca_cert: x509.Certificate, *, server: bool) -> tuple[Path, Path]:
    """A certificate signed by the CA: for a server (SAN 127.0.0.1 + localhost) or a client."""
    key = ec.generate_private_key(ec.SECP256R1())
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (_builder(name, ca_cert.subject, key)
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]), critical=False)
    return _write(folder, name, key, builder.sign(ca_key, hashes.SHA256()))


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca_key, ca_cert, ca = make_ca(folder, "test-ca")
    other_key, other_cert, other_ca = make_ca(folder, "other-ca")
    server_cert, server_key = make_leaf(folder, "server", ca_key, ca_cert, server=True)
    client_cert, client_key = make_leaf(folder, "client", ca_key, ca_cert, server=False)
    rogue_cert, rogue_key = make_leaf(folder, "rogue", other_key, other_cert, server=False)
    return Pki(ca, server_cert, server_key, client_cert, client_key, other_ca, rogue_cert, rogue_key)


def mtls(pki: Pki) -> dict:
    """DetectorClient keywords of the good client."""
    return {"ssl": True, "root_certificates": pki.ca, "certificate_chain": pki.client_cert,
            "private_key": pki.client_key}


@pytest.fixture(scope="module")
def mtls_server(repository, pki, tmp_path_factory):
    """A dedicated server: gRPC with mutual TLS, verbose Triton log."""
    log_file = tmp_path_factory.mktemp("mtls") / "tritonserver.log"
    srv = TritonServer(model_repository=repository, grpc_port=free_port(), http_port=free_port(),
                       metrics_port=free_port(), log_file=log_file, log_verbose=1,
                       tls_cert=pki.server_cert, tls_key=pki.server_key, tls_ca=pki.ca)
    with srv:
        yield srv
    assert srv.process.poll() is not None, "tritonserver still running after teardown"


@pytest.fixture(scope="module")
def study(synth_data) -> Path:
    return sorted((synth_data / "dicom").glob("*.dcm"))[0]


def _same(a, b) -> None:
    assert [d.label for d in a.detections] == [d.label for d in b.detections]
    np.testing.assert_allclose([d.score for d in a.detections], [d.score for d in b.detections], atol=1e-5)
    np.testing.assert_allclose([d.box_xyxy_px for d in a.detections], [d.box_xyxy_px for d in b.detections], atol=1e-3)


def _log_gains(log_file: Path, start: int, needle: str, timeout: float = 10.0) -> str:
    """Text appended to ``log_file`` after byte ``start`` once it holds ``needle`` (or after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while True:
        with open(log_file, "rb") as f:
            f.seek(start)
            text = f.read().decode(errors="replace")
        if needle.lower() in text.lower() or time.monotonic() > deadline:
            return text
        time.sleep(0.1)


# ------------------------------------------------------------------------------------ TLS


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_mtls_client_gets_the_same_result_as_over_plaintext(mtls_server, server, pki, study, host):
    """Both SAN entries verify; TLS changes the transport, not one box or score."""
    with DetectorClient(url=f"{host}:{mtls_server.grpc_port}", timeout_s=WAIT_S, **mtls(pki)) as secure, \
            DetectorClient(url=server.url, timeout_s=WAIT_S) as plain:
        over_tls, over_plain = secure.predict(study), plain.predict(study)
    assert over_tls.detections, "the tiny model should detect something on this study"
    _same(over_tls, over_plain)


REFUSED = {
    # client keywords, what the server's log says about the handshake (None: the client refuses first)
    "no-client-certificate": (lambda p: {"ssl": True, "root_certificates": p.ca}, "did not return a certificate"),
    "plaintext-client": (lambda p: {}, "wrong version number"),
    "client-certificate-from-another-ca": (
        lambda p: {"ssl": True, "root_certificates": p.ca, "certificate_chain": p.rogue_cert,
                   "private_key": p.rogue_key}, "certificate verify failed"),
    "server-not-signed-by-the-trusted-ca": (
        lambda p: {"ssl": True, "root_certificates": p.other_ca, "certificate_chain": p.client_cert,
                   "private_key": p.client_key}, None),
}
# What DetectorError's hint says for each refused client: the likely fix, not just "TLS".
HINTS = {
    "no-client-certificate": "hint: the server may require a client certificate (mutual TLS)",
    "plaintext-client": "hint: the server may require TLS: pass ssl=True / --ssl and the CA",
    "client-certificate-from-another-ca": "hint: the server may have refused the client certificate (mutual TLS)",
    "server-not-signed-by-the-trusted-ca": "hint: the server's certificate is not signed by root_certificates",
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_mtls_server_refuses_the_handshake(mtls_server, pki, study, case):
    """Each wrong client fails at the handshake, for the right reason, with a hint that names the fix.

    gRPC reports a refused handshake as UNAVAILABLE, the same status as a server that
    is restarting, so the SDK counts it as retryable: with retries=0 it fails at once.
    The hint is in ``str(err)`` after gave_up, and survives pickling (task queues).
    """
    kwargs, server_says = REFUSED[case]
    start = mtls_server.log_file.stat().st_size
    with DetectorClient(url=f"127.0.0.1:{mtls_server.grpc_port}", timeout_s=10.0, retries=0, **kwargs(pki)) as client:
        with pytest.raises(DetectorError) as info:
            client.predict(study)
    err = info.value
    assert err.status == "UNAVAILABLE" and err.retryable
    assert err.gave_up and HINTS[case] in str(err), str(err)
    assert str(err).index(err.gave_up) < str(err).index("; hint: ")
    client_kwargs = kwargs(pki)
    assert err.hint == tls_hint(err, ssl=bool(client_kwargs), client_certificate="certificate_chain" in client_kwargs,
                                url=client.url)  # the same text `cxr predict` prints
    again = pickle.loads(pickle.dumps(err))
    assert (again.hint, str(again)) == (err.hint, str(err))
    if server_says is None:  # the client rejected the server's certificate itself
        assert "CERTIFICATE_VERIFY_FAILED" in err.message
    else:
        assert server_says in _log_gains(mtls_server.log_file, start, server_says)


def test_tls_only_server_needs_no_client_certificate(repository, pki, study, tmp_path):
    """Without --tls-ca the server encrypts but accepts any client that trusts its CA; plaintext still fails."""
    srv = TritonServer(model_repository=repository, grpc_port=free_port(), http_port=free_port(),
                       metrics_port=free_port(), log_file=tmp_path / "tritonserver.log",
                       tls_cert=pki.server_cert, tls_key=pki.server_key)
    assert srv.tls == "tls"
    with srv:
        url = f"localhost:{srv.grpc_port}"
        with DetectorClient(url=url, timeout_s=WAIT_S, ssl=True, root_certificates=pki.ca) as client:
            assert client.predict(study).detections
        with DetectorClient(url=url, timeout_s=10.0, retries=0) as plain:
            with pytest.raises(DetectorError, match="UNAVAILABLE") as info:
                plain.predict(study)
        assert HINTS["plaintext-client"] in str(info.value), str(info.value)


def test_async_client_gets_the_same_hint(mtls_server, pki, study):
    """AsyncDetectorClient gives up through the same path: no client certificate, the mutual-TLS hint."""
    async def run() -> None:
        async with AsyncDetectorClient(url=f"127.0.0.1:{mtls_server.grpc_port}", timeout_s=10.0, retries=0,
                                       ssl=True, root_certificates=pki.ca) as client:
            await client.predict(study)

    with pytest.raises(DetectorError) as info:
        asyncio.run(run())
    assert HINTS["no-client-certificate"] in str(info.value), str(info.value)


def test_a_name_missing_from_the_server_certificate_gets_the_san_hint(mtls_server, pki, study):
    """Right CA, right client certificate, wrong name: [::ffff:127.0.0.1] reaches the server's dual-stack
    socket like 127.0.0.1 does, but is not one of the certificate's subjectAltName entries."""
    url = f"[::ffff:127.0.0.1]:{mtls_server.grpc_port}"
    with DetectorClient(url=url, timeout_s=10.0, retries=0, **mtls(pki)) as client:
        with pytest.raises(DetectorError) as info:
            client.predict(study)
    err = info.value
    if "Connection refused" in err.message:
        pytest.skip("the server's gRPC socket is not dual-stack here: loopback has no second name to try")
    assert "Hostname Verification" in err.message, err.message  # gRPC's own check, not a CA problem
    assert "hint: the server's certificate is trusted but its subjectAltName does not cover '[::ffff:127.0.0.1]'" \
        in str(err), str(err)


def test_tls_client_against_a_plaintext_server_is_told_the_server_may_not_use_tls(server, pki, study):
    with DetectorClient(url=server.url, timeout_s=10.0, retries=0, ssl=True, root_certificates=pki.ca) as client:
        with pytest.raises(DetectorError) as info:
            client.predict(study)
    assert "WRONG_VERSION_NUMBER" in info.value.message, info.value.message
    assert "hint: the server may not use TLS (it answered in plaintext)" in str(info.value), str(info.value)


@pytest.mark.parametrize("case", ["plaintext-client", "no-client-certificate", "client-certificate-from-another-ca"])
def test_nothing_listening_gets_no_tls_hint(pki, study, case):
    """"Connection refused" means the server is down, not a TLS problem, whatever the client's TLS options."""
    dead = f"127.0.0.1:{free_port()}"  # bound then released: nothing listens there
    with DetectorClient(url=dead, timeout_s=10.0, retries=1, backoff_s=0.01, **REFUSED[case][0](pki)) as client:
        with pytest.raises(DetectorError) as info:
            client.predict(study)
    err = info.value
    assert err.status == "UNAVAILABLE" and "Connection refused" in err.message, err.message
    assert err.gave_up, "the client must have given up (where the hint would be attached)"
    assert err.hint == "" and "hint" not in str(err), str(err)
    assert pickle.loads(pickle.dumps(err)).hint == ""


def test_cli_predict_without_a_client_certificate_fails_with_a_tls_hint(mtls_server, pki, study):
    """`cxr predict` with only --tls-ca against the mTLS server (the working call is in the PHI test)."""
    # 127.0.0.1, not localhost: gRPC also tries ::1 (where nothing listens) and the
    # CLI can only read the last address's error.
    url = f"127.0.0.1:{mtls_server.grpc_port}"
    refused = subprocess.run([sys.executable, "-m", "cxr.cli", "predict", str(study), "--url", url, "--timeout", "5",
                              "--tls-ca", str(pki.ca)], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert refused.returncode == 1
    assert "hint: the server may require a client certificate (mutual TLS)" in refused.stderr, refused.stderr


# ------------------------------------------------------------------------------ loopback


def _listening(pid: int) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket process ``pid`` listens on, from /proc."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:  # closed since the listing
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = set()
    for table, size in (("tcp", 4), ("tcp6", 16)):
        path = Path("/proc/net") / table
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            cols = line.split()
            local, state, inode = cols[1], cols[3], cols[9]
            if state != "0A" or inode not in inodes:  # 0A = LISTEN
                continue
            addr_hex, port_hex = local.split(":")
            raw = bytes.fromhex(addr_hex)
            # /proc prints the address as host-order 32-bit words
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, size, 4))
            ip = ipaddress.ip_address(raw)
            # gRPC listens on an IPv6 socket even for 127.0.0.1: ::ffff:127.0.0.1
            ip = getattr(ip, "ipv4_mapped", None) or ip
            found.add((str(ip), int(port_hex, 16)))
    return found


def _non_loopback_address() -> str | None:
    """An IPv4 address of this machine other than loopback, or None (no packets are sent)."""
    for probe in ("192.0.2.1", "10.255.255.255", "172.16.255.255", "192.168.255.255"):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.connect((probe, 9))  # UDP connect: only picks the route's source address
            except OSError:
                continue
            addr = s.getsockname()[0]
        if not ipaddress.ip_address(addr).is_loopback and addr != "0.0.0.0":
            return addr
    return None


def test_default_server_listens_on_loopback_only(server):
    """The session server (default host) has exactly its three sockets, all on 127.0.0.1."""
    assert _listening(server.process.pid) == {("127.0.0.1", server.grpc_port), ("127.0.0.1", server.http_port),
                                              ("127.0.0.1", server.metrics_port)}
    addr = _non_loopback_address()
    if addr is None:
        pytest.skip("this machine has no non-loopback IPv4 address to connect from")
    for port in (server.grpc_port, server.http_port, server.metrics_port):
        with pytest.raises((ConnectionRefusedError, TimeoutError)):  # refused, or dropped by a firewall
            socket.create_connection((addr, port), timeout=3).close()


# ------------------------------------------------------------------------------------ PHI

PHI = {
    "PatientName": "Phidoe^Phijane^Phimiddle",
    "PatientID": "PHI-ID-73519",
    "PatientBirthDate": "19450102",
    "OtherPatientIDs": "PHI-OTHER-5521",
    "AccessionNumber": "ACC-PHI-8841",
    "PatientAddress": "12 Phistreet, Phitown",
    "ReferringPhysicianName": "Phidoctor^Phiwho",
}
# Every spelling a log might use: name components, IDs, the birth date as written
# by DICOM, ISO, US, European and spelled-out formats.
NEEDLES = ("Phidoe", "Phijane", "Phimiddle", "PHI-ID-73519", "PHI-OTHER-5521", "ACC-PHI-8841",
           "Phistreet", "Phitown", "Phidoctor", "19450102", "1945-01-02", "01/02/1945", "02/01/1945", "02.01.1945",
           "1945/01/02", "2 Jan 1945", "January 2, 1945")


def phi_hits(sources: dict[str, str]) -> list[str]:
    """'source: line' for every line of every source that holds a needle (case-insensitive)."""
    pattern = re.compile("|".join(re.escape(n) for n in NEEDLES), re.IGNORECASE)
    return [f"{name}: {line.strip()[:200]}" for name, text in sources.items()
            for line in text.splitlines() if pattern.search(line)]


def test_the_phi_scan_can_fail():
    assert phi_hits({"x": "ok\nDOB 1945-01-02\n", "y": "name PHIDOE^PHIJANE"}) == \
        ["x: DOB 1945-01-02", "y: name PHIDOE^PHIJANE"]
    assert phi_hits({"z": "study 3f2a9c delivered: 2 findings"}) == []


@pytest.fixture(scope="module")
def phi_studies(synth_data, tmp_path_factory) -> tuple[Path, Path]:
    """A DX study carrying PHI, and the same PHI with pixel data cut to a third (undecodable)."""
    folder = tmp_path_factory.mktemp("phi")
    source = next(f for f in sorted((synth_data / "dicom").glob("*.dcm"))
                  if pydicom.dcmread(f, stop_before_pixels=True).Modality == "DX")
    paths = []
    for name, broken in (("study_a.dcm", False), ("study_b.dcm", True)):
        ds = pydicom.dcmread(source)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        for keyword, value in PHI.items():
            setattr(ds, keyword, value)
        if broken:
            ds.PixelData = ds.PixelData[: len(ds.PixelData) // 3]
        ds.save_as(folder / name)
        paths.append(folder / name)
    raw = paths[1].read_bytes()
    assert all(v.encode() in raw for v in PHI.values()), "the test studies must carry the PHI they test for"
    return paths[0], paths[1]


@pytest.mark.usefixtures("sr_and_gsps_pass_dciodvfy")  # the PACS bridge builds an SR in this process
def test_no_phi_in_any_log(server, mtls_server, pki, phi_studies, tmp_path, caplog):
    """SDK (plain and mTLS), the `cxr predict` CLI, an undecodable study and the PACS bridge
    all run on studies full of PHI; then every log line is scanned for it: the test's
    log records at DEBUG, the CLI's stdout/stderr, both Triton logs (one verbose) and
    the reason file the bridge writes for a failed study."""
    good, broken = phi_studies
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="cxr")  # an earlier in-process `cxr` main() may have raised it
    url = f"localhost:{mtls_server.grpc_port}"
    errors = []
    for client_kwargs in ({"url": server.url}, {"url": url, **mtls(pki)}):
        with DetectorClient(timeout_s=WAIT_S, **client_kwargs) as client:
            assert client.predict(good).detections is not None
            assert client.predict(pydicom.dcmread(good)).image_size
            with pytest.raises(DetectorError) as info:
                client.predict(broken)
            errors.append(str(info.value))
    # refused as bad input by the server's DICOM decoder, whose message must not echo the header
    assert all("INVALID_ARGUMENT" in e and "pixel data" in e.lower() for e in errors), errors

    cli = subprocess.run([sys.executable, "-m", "cxr.cli", "-vv", "predict", str(good), str(broken), "--url", url,
                          "--tls-ca", str(pki.ca), "--tls-cert", str(pki.client_cert), "--tls-key", str(pki.client_key),
                          "--sr", str(tmp_path / "sr"), "--timeout", "30"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert cli.returncode == 1, cli.stderr  # one of two studies failed...
    assert "study_b.dcm" in cli.stdout and "FAILED" in cli.stdout
    assert (tmp_path / "sr" / "study_a.sr.dcm").is_file()  # ...the other went through mTLS and got its report
    assert "DEBUG cxr.client" in cli.stderr  # -vv: the scan covers the CLI's debug output

    dest = Destination()
    config = PacsConfig(port=free_port(), allowed_aes=("MODALITY1",), forward=("127.0.0.1", dest.port, "PACS"),
                        spool=tmp_path / "spool", detector_url=url, detector_tls=mtls(pki), retry_backoff_s=0.1,
                        max_attempts_per_pass=2, pass_pause_s=0.3, timeout_s=30.0)
    with dest:
        with PacsBridge(config) as bridge:  # builds its own mTLS DetectorClient from the config
            assert send(bridge.address[1], [pydicom.dcmread(good), pydicom.dcmread(broken)]) == [0, 0]
            assert bridge.wait_idle(WAIT_S)
            stats = bridge.stats
    assert stats["delivered"] == 1 and stats["failed"] == 1, stats
    assert [str(d.PatientID) for d in dest.received] == [PHI["PatientID"]]  # the SR itself must name the patient
    reasons = list((tmp_path / "spool" / "failed").glob("*.reason.txt"))
    assert len(reasons) == 1

    records = caplog.records
    assert any(r.name.startswith("cxr.client") and r.levelno == logging.DEBUG for r in records)
    assert any(r.name.startswith("cxr.pacs") for r in records)
    verbose_log = mtls_server.log_file.read_text(errors="replace")
    assert "input: IMAGE_BYTES" in verbose_log, "the mTLS server should log every request verbosely"
    sources = {
        "caplog": "\n".join(f"{r.name} {r.levelname} {r.getMessage()} {r.args!r}" for r in records),
        "client errors": "\n".join(errors),
        "cxr predict stdout": cli.stdout,
        "cxr predict stderr": cli.stderr,
        "tritonserver (verbose, mTLS)": verbose_log,
        "tritonserver (session)": server.log_file.read_text(errors="replace"),
        "pacs failed reason": reasons[0].read_text(),
    }
    assert cli.stderr.strip() and sources["tritonserver (session)"].strip()
    hits = phi_hits(sources)
    assert not hits, "PHI in logs:\n" + "\n".join(hits)
