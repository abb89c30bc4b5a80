"""tests/e2e needs the serve extra; the server fixtures live in tests/conftest.py."""

import pytest

pytest.importorskip("tritonclient.grpc")
pytest.importorskip("pytriton")
