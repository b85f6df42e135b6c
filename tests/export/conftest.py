"""Fixtures shared by the service tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.serve_helpers import serve_model


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """The service tests' 64 px ONNX model (exported once per session)."""
    return serve_model(tmp_path_factory)
