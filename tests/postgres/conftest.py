"""A real PostgreSQL server for the scaling-out tests: the one `.ci/postgres.sh start` runs (CI
starts it and exports PROPENSITY_TEST_POSTGRES_URL). Each test gets databases of its own.

Without that variable (a developer's machine without PostgreSQL) these tests skip and say why;
under CI=1 they fail instead, so CI can never pass without having run them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator

import psycopg2
import pytest

URL_VARIABLE = "PROPENSITY_TEST_POSTGRES_URL"


def query_postgres(url: str, sql: str, params: tuple = ()) -> list[tuple]:
    """Runs one statement on its own autocommitted connection; its rows, if it returns any."""
    connection = psycopg2.connect(url, connect_timeout=5)
    try:
        connection.autocommit = True  # CREATE and DROP DATABASE run outside a transaction
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            return cursor.fetchall() if cursor.description else []
    finally:
        connection.close()


@pytest.fixture(scope="session")
def postgres_admin_url() -> str:
    """The URL of a role that may create databases, on a running server."""
    url = os.environ.get(URL_VARIABLE)
    problem = ""
    if not url:
        problem = f"{URL_VARIABLE} is not set; run `bash .ci/postgres.sh start` and export it"
    else:
        try:
            query_postgres(url, "select 1")
        except psycopg2.OperationalError as error:
            problem = f"PostgreSQL at {URL_VARIABLE} does not answer: {error}"
    if problem:
        if os.environ.get("CI") == "1":
            pytest.fail(f"CI needs PostgreSQL: {problem}")
        pytest.skip(problem)
    return url


@pytest.fixture
def postgres_database(
    postgres_admin_url: str, request: pytest.FixtureRequest
) -> Iterator[Callable[[str], str]]:
    """Makes a new empty database for this test (`make("mlflow")`) and returns its URL; every
    database made is dropped afterwards."""
    made: list[str] = []
    test_name = re.sub(r"[^a-z0-9]+", "_", request.node.name.lower())[:40]

    def admin(sql: str) -> None:
        query_postgres(postgres_admin_url, sql)

    def make(purpose: str) -> str:
        name = f"t_{test_name}_{purpose}"
        admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin(f'CREATE DATABASE "{name}"')
        made.append(name)
        return postgres_admin_url.rsplit("/", 1)[0] + f"/{name}"

    yield make
    for name in made:
        admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
