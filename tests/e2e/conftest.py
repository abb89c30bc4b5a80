"""tests/e2e needs the serve extra; the server fixtures live in tests/conftest.py."""

import pytest

pytest.importorskip("tritonclient.grpc")
pytest.importorskip("pytriton")


@pytest.fixture(scope="module")
def client(server):
    """A plain tritonclient gRPC client on the session server."""
    import tritonclient.grpc as grpcclient

    c = grpcclient.InferenceServerClient(server.url)
    yield c
    c.close()
