"""tests/e2e needs the serve extra; the server fixtures live in tests/conftest.py, the Mask R-CNN's
(``seg_repository``, ``seg_server``: tests/conftest.py's ``seg_checkpoint`` exported and served) here."""

import pytest

from cxr import contract

pytest.importorskip("tritonclient.grpc")
pytest.importorskip("pytriton")


@pytest.fixture(scope="module")
def client(server):
    """A plain tritonclient gRPC client on the session server."""
    import tritonclient.grpc as grpcclient

    c = grpcclient.InferenceServerClient(server.url)
    yield c
    c.close()


@pytest.fixture(scope="session")
def seg_repository(seg_checkpoint, tmp_path_factory):
    """The tiny Mask R-CNN (tests/conftest.py) exported to ONNX in a model repository: (checkpoint, repository)."""
    from cxr.export.commands import run_export

    repo = tmp_path_factory.mktemp("seg-served") / "model_repository"
    run_export("onnx", seg_checkpoint, repository=repo)
    return seg_checkpoint, repo


@pytest.fixture(scope="session")
def seg_server(seg_repository):
    from cxr.server.launcher import TritonServer

    _, repo = seg_repository
    srv = TritonServer.on_free_ports(repo, log_file=repo / "tritonserver.log")
    assert contract.SEGMENT in srv.model_names
    with srv:
        yield srv
