"""dbt-duckdb plugin (profiles.yml `plugins`): registers `pseudonym(user_id)` on every
connection dbt opens, keyed with the salt from the environment (see ml.data.pseudonyms).

A missing salt stops dbt when it connects, before any model runs, with the message of
MissingSaltError.
"""

from __future__ import annotations

from dbt.adapters.duckdb.plugins import BasePlugin
from duckdb import DuckDBPyConnection
from duckdb.sqltypes import BIGINT, VARCHAR

from ml.data.pseudonyms import pseudonym, pseudonym_salt

FUNCTION_NAME = "pseudonym"


def register_pseudonym(connection: DuckDBPyConnection) -> None:
    """Adds the DuckDB function pseudonym(VARCHAR) -> BIGINT (NULL for NULL) to `connection`."""
    salt = pseudonym_salt()
    connection.create_function(
        FUNCTION_NAME,
        lambda user_id: pseudonym(user_id, salt),
        [VARCHAR],
        BIGINT,
        side_effects=False,
    )


class Plugin(BasePlugin):
    def configure_connection(self, conn: DuckDBPyConnection) -> None:
        register_pseudonym(conn)
