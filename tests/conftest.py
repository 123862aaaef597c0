"""Shared fixtures for the PSF, I/O and command-line tests."""

from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data" / "psf"


@pytest.fixture
def psf_data() -> Path:
    """Folder with the cropped real bead files (see its README for provenance and licences)."""
    return DATA
