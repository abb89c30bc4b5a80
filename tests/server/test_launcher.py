"""The tritonserver command line the launcher renders: binds, TLS flags, file checks (no server).

The live counterparts (a real mTLS server, sockets that listen on loopback only)
are in tests/e2e/test_security.py.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import tempfile
from pathlib import Path

import pytest

from cxr.errors import UsageError
from cxr.server.install import TritonInstall
from cxr.server.launcher import TritonServer
from cxr.server.net import host_port, is_loopback, stable_port

INSTALL = TritonInstall(Path("/opt/tritonserver"), Path("/opt/lib"), Path("/opt/backends"))
PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def flags(cmd: list[str]) -> dict[str, str]:
    """``--name=value`` arguments as a dict (the launcher writes every flag that way)."""
    return dict(a[2:].split("=", 1) for a in cmd if a.startswith("--"))


@pytest.fixture
def pem(tmp_path):
    """cert.pem, key.pem, ca.pem: PEM-shaped files (the launcher checks shape, Triton checks content)."""
    files = {}
    for name in ("cert", "key", "ca"):
        files[name] = tmp_path / f"{name}.pem"
        files[name].write_text(PEM)
    return files


def test_default_binds_every_endpoint_to_loopback_without_tls(tmp_path):
    f = flags(TritonServer(model_repository=tmp_path).command(INSTALL))
    assert f["grpc-address"] == f["http-address"] == f["metrics-address"] == "127.0.0.1"
    assert not any(k.startswith("grpc-use-ssl") or k.startswith("grpc-server-") for k in f)
    assert f["log-verbose"] == "0"


def test_tls_renders_server_cert_and_key(tmp_path, pem):
    srv = TritonServer(model_repository=tmp_path, tls_cert=pem["cert"], tls_key=pem["key"])
    f = flags(srv.command(INSTALL))
    assert srv.tls == "tls"
    assert f["grpc-use-ssl"] == "true"
    assert f["grpc-server-cert"] == str(pem["cert"].resolve()) and f["grpc-server-key"] == str(pem["key"].resolve())
    assert "grpc-use-ssl-mutual" not in f and "grpc-root-cert" not in f


def test_client_ca_makes_tls_mutual(tmp_path, pem):
    srv = TritonServer(model_repository=tmp_path, tls_cert=pem["cert"], tls_key=pem["key"], tls_ca=pem["ca"])
    f = flags(srv.command(INSTALL))
    assert srv.tls == "mtls"
    assert f["grpc-use-ssl"] == f["grpc-use-ssl-mutual"] == "true"
    assert f["grpc-root-cert"] == str(pem["ca"].resolve())


def test_tls_on_a_public_host_keeps_http_and_metrics_on_loopback(tmp_path, pem, caplog):
    srv = TritonServer(model_repository=tmp_path, host="0.0.0.0", tls_cert=pem["cert"], tls_key=pem["key"])
    f = flags(srv.command(INSTALL))
    assert f["grpc-address"] == "0.0.0.0"
    assert f["http-address"] == f["metrics-address"] == "127.0.0.1"  # Triton's HTTP has no TLS
    [warning] = srv.exposure_warnings()
    assert "HTTP and metrics stay on 127.0.0.1" in warning


def test_public_host_without_tls_is_allowed_but_warned(tmp_path):
    srv = TritonServer(model_repository=tmp_path, host="0.0.0.0")
    f = flags(srv.command(INSTALL))
    assert f["grpc-address"] == f["http-address"] == f["metrics-address"] == "0.0.0.0"
    [warning] = srv.exposure_warnings()
    assert "without TLS" in warning and "--tls-cert" in warning
    assert TritonServer(model_repository=tmp_path).exposure_warnings() == []


@pytest.mark.parametrize("given, message", [
    ({"tls_cert": "cert"}, "--tls-key is missing"),
    ({"tls_key": "key"}, "--tls-cert is missing"),
    ({"tls_ca": "ca"}, "--tls-ca .* needs --tls-cert and --tls-key"),
    ({"tls_cert": "cert", "tls_key": "nowhere"}, "--tls-key: server private key file not found"),
    ({"tls_cert": "cert", "tls_key": "key", "tls_ca": "nowhere"}, "--tls-ca: client CA certificate file not found"),
    ({"tls_cert": "der", "tls_key": "key"}, "--tls-cert: .* is not PEM"),
], ids=["cert-only", "key-only", "ca-only", "missing-key-file", "missing-ca-file", "not-pem"])
def test_bad_tls_settings_are_usage_errors_naming_the_option(tmp_path, pem, given, message):
    (tmp_path / "der.pem").write_bytes(b"\x30\x82\x01\x0a binary DER")
    files = {**{k: v for k, v in pem.items()}, "der": tmp_path / "der.pem", "nowhere": tmp_path / "nowhere.pem"}
    srv = TritonServer(model_repository=tmp_path, **{k: files[v] for k, v in given.items()})
    with pytest.raises(UsageError, match=message):
        srv.command(INSTALL)


def test_unreadable_key_is_a_usage_error():
    """Checked by a user who cannot read the key.  Root reads any file, and CI runs as root:
    there the check runs in a forked child that has become nobody for good before it starts."""
    outcome = _in_a_child_that_is_not_root(_check_a_key_this_user_cannot_read)
    assert re.match("UsageError: --tls-key: .* is not readable", outcome), outcome  # the UsageError itself, as before


NOBODY = 65534  # the conventional uid and gid of nobody/nogroup


def _check_a_key_this_user_cannot_read() -> str:
    """In the child: the launcher's verdict on a key file of mode 000 that this user owns.

    The files live in a folder of the child's own: tmp_path sits below root's 0700
    /tmp/pytest-of-root, which nobody cannot enter."""
    folder = Path(tempfile.mkdtemp(prefix="cxr-unreadable-key-"))
    try:
        cert, key = folder / "cert.pem", folder / "key.pem"
        for path in (cert, key):
            path.write_text(PEM)
        key.chmod(0)
        try:
            TritonServer(model_repository=folder, tls_cert=cert, tls_key=key).command(INSTALL)
        except UsageError as exc:
            return f"UsageError: {exc}"
        return "no error: the key was read"
    finally:
        shutil.rmtree(folder)


def _in_a_child_that_is_not_root(check) -> str:
    """``check()``'s answer, run in a forked child that first drops root (groups, gid, then uid:
    real, effective and saved, so nothing can take it back); the test process keeps its ids."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: reports through the pipe and never returns into pytest
        status = 1
        try:
            os.close(read_end)
            signal.alarm(60)  # a child stuck on a lock another thread held at fork dies, failing the test
            if os.geteuid() == 0:
                os.setgroups([])
                os.setgid(NOBODY)
                os.setuid(NOBODY)
            assert os.geteuid() != 0 and os.getuid() != 0
            os.write(write_end, check().encode())
            status = 0
        except BaseException as exc:  # noqa: BLE001 - whatever it is, the parent reports it
            os.write(write_end, f"the child failed: {exc!r}".encode())
        finally:
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        outcome = pipe.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, outcome or f"the child ended with status {status}"
    return outcome


def test_stable_port_is_free_and_below_the_ephemeral_range():
    import socket

    first_ephemeral = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    port = stable_port()
    assert 1024 <= port < first_ephemeral
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))  # still free


def test_host_port_brackets_ipv6():
    assert host_port("127.0.0.1", 8001) == "127.0.0.1:8001"
    assert host_port("::1", 8001) == "[::1]:8001"
    assert TritonServer(model_repository=Path("x"), host="::1", grpc_port=9).url == "[::1]:9"


def test_is_loopback():
    assert all(map(is_loopback, ("127.0.0.1", "127.0.1.1", "::1", "[::1]", "localhost")))
    assert not any(map(is_loopback, ("0.0.0.0", "::", "192.0.2.2", "pacs-gw.example")))


def test_cli_serve_and_predict_tls_options(pem):
    from cxr.cli import build_parser
    from cxr.client.tls import tls_options as client_tls_options

    parser = build_parser()
    args = parser.parse_args(["serve", "--host", "0.0.0.0", "--tls-cert", str(pem["cert"]), "--tls-key",
                              str(pem["key"]), "--tls-ca", str(pem["ca"])])
    assert (args.host, args.tls_cert, args.tls_key, args.tls_ca) == ("0.0.0.0", pem["cert"], pem["key"], pem["ca"])
    assert parser.parse_args(["serve"]).host == "127.0.0.1"

    def tls(*argv: str) -> dict:
        return client_tls_options(parser.parse_args(["predict", "x.png", *argv]))

    assert tls() == {}
    assert tls("--ssl") == {"ssl": True, "root_certificates": None, "certificate_chain": None, "private_key": None}
    assert tls("--root-certificates", "ca.pem")["root_certificates"] == Path("ca.pem")  # the old spelling still works
    assert tls("--tls-ca", "ca.pem", "--tls-cert", "c.pem", "--tls-key", "k.pem") == {
        "ssl": True, "root_certificates": Path("ca.pem"), "certificate_chain": Path("c.pem"), "private_key": Path("k.pem")}
    with pytest.raises(UsageError, match="--tls-key is missing"):
        tls("--tls-cert", "c.pem")


def test_cli_serve_refuses_bad_tls_before_starting(tmp_path, capsys):
    from cxr.cli import main

    levels = {name: logging.getLogger(name).level for name in ("", "cxr", "highdicom")}
    try:
        rc = main(["serve", "--model-repository", str(tmp_path), "--tls-cert", str(tmp_path / "missing.pem"),
                   "--tls-key", str(tmp_path / "missing.key")])
    finally:  # main() sets log levels for the process; leave them as found
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
    assert rc == 2
    assert "--tls-cert: server certificate file not found" in capsys.readouterr().err


def test_on_free_ports_is_an_unstarted_loopback_server_on_three_distinct_ports(tmp_path):
    log_file = tmp_path / "run" / "tritonserver.log"
    srv = TritonServer.on_free_ports(tmp_path, log_file=log_file, precision="int8", models=("preprocess",))
    assert srv.process is None  # the caller's `with` starts and stops it
    assert len({srv.grpc_port, srv.http_port, srv.metrics_port}) == 3
    assert srv.url == f"127.0.0.1:{srv.grpc_port}" and srv.tls == "off"
    assert srv.log_file == log_file and log_file.parent.is_dir()  # start() appends to it
    assert (srv.model_repository, srv.precision, srv.models) == (tmp_path, "int8", ("preprocess",))
    f = flags(srv.command(INSTALL))
    assert (f["grpc-port"], f["http-port"], f["metrics-port"]) == tuple(map(str, (srv.grpc_port, srv.http_port, srv.metrics_port)))
