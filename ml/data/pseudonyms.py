"""Pseudonymous user keys: a keyed hash (HMAC-SHA-256) of the raw user id.

The key (the salt) comes from the environment only (PROPENSITY_PSEUDONYM_SALT): it is never
written into SQL, a view definition, dbt's manifest or logs, a run folder or an MLflow
artifact. dbt reaches it through `ml.data.dbt_plugin`, which registers `pseudonym(user_id)` as
a DuckDB function on dbt's connection; the SQL names the function, not the key.

Without a salt nothing runs, unless development mode is switched on explicitly
(PROPENSITY_DEVELOPMENT=1, as `make run` and the tests do): then a public development salt is
used, which protects nothing, and the run summary says so.
"""

from __future__ import annotations

import hashlib
import hmac
import os

SALT_VARIABLE = "PROPENSITY_PSEUDONYM_SALT"
DEVELOPMENT_VARIABLE = "PROPENSITY_DEVELOPMENT"
# Public on purpose: development mode only, never for real shoppers' data.
DEVELOPMENT_SALT = "development-salt-not-secret"
# 15 hex digits: 60 bits, a positive BIGINT (collisions stay unlikely below ~10^8 users).
KEY_HEX_DIGITS = 15


class MissingSaltError(RuntimeError):
    """No pseudonym salt is set and development mode is off."""


def development_mode() -> bool:
    """Whether PROPENSITY_DEVELOPMENT is on (1, true or yes)."""
    return os.environ.get(DEVELOPMENT_VARIABLE, "").strip().lower() in ("1", "true", "yes")


def salt_is_set() -> bool:
    return bool(os.environ.get(SALT_VARIABLE, "").strip())


def pseudonym_salt() -> bytes:
    """The HMAC key: PROPENSITY_PSEUDONYM_SALT; the development salt in development mode; else
    MissingSaltError saying what to set."""
    if salt_is_set():
        return os.environ[SALT_VARIABLE].encode()
    if development_mode():
        return DEVELOPMENT_SALT.encode()
    raise MissingSaltError(
        f"{SALT_VARIABLE} is not set: user ids are pseudonymized with a keyed hash whose key "
        "must be a secret of your shop (e.g. `export "
        f"{SALT_VARIABLE}=$(python -c 'import secrets; print(secrets.token_hex(32))')`, kept "
        "in your secret store; the same key keeps the same pseudonyms across runs). For demo "
        f"or test data only, set {DEVELOPMENT_VARIABLE}=1 to use a public development salt."
    )


def pseudonym_mode() -> str:
    """One line for summaries: which key the pseudonyms use (never the key itself)."""
    if salt_is_set():
        return f"keyed with {SALT_VARIABLE}"
    if development_mode():
        return (
            f"DEVELOPMENT MODE ({DEVELOPMENT_VARIABLE}=1): the public development salt, not for "
            f"real shoppers' data; set {SALT_VARIABLE} for a real shop"
        )
    return f"no salt: {SALT_VARIABLE} is not set and development mode is off"


def pseudonym(user_id: str, salt: bytes) -> int:
    """The user's key: the first 60 bits of HMAC-SHA-256(salt, user_id) as a positive int."""
    digest = hmac.new(salt, user_id.encode(), hashlib.sha256).hexdigest()
    return int(digest[:KEY_HEX_DIGITS], 16)
