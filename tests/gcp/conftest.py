"""Fixtures for the GCP pieces: the metadata and storage stand-ins, started and always stopped."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from standins.gce_metadata import GceMetadataStandin
from standins.gcs import GcsStandin


@pytest.fixture
def metadata() -> Iterator[GceMetadataStandin]:
    """A metadata stand-in on a free loopback port, with a control port."""
    with GceMetadataStandin(control_port=0) as standin:
        yield standin


@pytest.fixture
def gcs(metadata: GceMetadataStandin) -> Iterator[GcsStandin]:
    """A storage stand-in that accepts only tokens the metadata stand-in issued."""
    with GcsStandin(metadata.token_valid) as standin:
        yield standin
