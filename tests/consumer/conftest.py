"""A PostgreSQL cluster shared by the consumer tests (one database per test)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.conftest import IN_CI
from tests.postgres import PostgresCluster, postgres_bindir


def need_postgres() -> None:
    """Skip (fail under CI) when PostgreSQL or psycopg is not installed."""
    if postgres_bindir() is None:
        if IN_CI:
            pytest.fail("PostgreSQL is not installed; ./dev test installs it "
                        "(apt-get install postgresql)")
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        if IN_CI:
            pytest.fail("psycopg is not installed; pip install -e '.[dev]'")
        pytest.skip("psycopg is not installed (pip install -e '.[collector]')")


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PostgresCluster]:
    """One running cluster for the session."""
    need_postgres()
    cluster = PostgresCluster().start()
    try:
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture
def pg_url(pg_cluster: PostgresCluster) -> str:
    """A fresh, empty database on the shared cluster."""
    return pg_cluster.create_database(f"t_{uuid.uuid4().hex[:12]}")
