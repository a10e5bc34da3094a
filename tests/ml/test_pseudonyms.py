"""The pseudonym key: keyed hash, required outside development mode, never echoed."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from ml.data.pseudonyms import (
    DEVELOPMENT_SALT,
    DEVELOPMENT_VARIABLE,
    SALT_VARIABLE,
    MissingSaltError,
    pseudonym,
    pseudonym_mode,
    pseudonym_salt,
)


def test_a_pseudonym_is_the_first_60_bits_of_the_keyed_hash() -> None:
    digest = hmac.new(b"key", b"user-1", hashlib.sha256).hexdigest()
    assert pseudonym("user-1", b"key") == int(digest[:15], 16) < 2**60
    assert pseudonym("user-1", b"key") != pseudonym("user-1", b"other key")
    assert pseudonym("user-1", b"key") != pseudonym("user-2", b"key")


def test_the_salt_is_required_outside_development_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SALT_VARIABLE, raising=False)
    monkeypatch.setenv(DEVELOPMENT_VARIABLE, "0")
    with pytest.raises(MissingSaltError, match=f"{SALT_VARIABLE} is not set"):
        pseudonym_salt()
    monkeypatch.setenv(SALT_VARIABLE, "   ")  # blank counts as missing
    with pytest.raises(MissingSaltError):
        pseudonym_salt()

    monkeypatch.setenv(DEVELOPMENT_VARIABLE, "1")
    monkeypatch.delenv(SALT_VARIABLE)
    assert pseudonym_salt() == DEVELOPMENT_SALT.encode()
    assert "DEVELOPMENT MODE" in pseudonym_mode()

    monkeypatch.setenv(SALT_VARIABLE, "s3cret-value")  # a salt wins over development mode
    assert pseudonym_salt() == b"s3cret-value"
    assert "s3cret-value" not in pseudonym_mode()
    assert "DEVELOPMENT" not in pseudonym_mode()
