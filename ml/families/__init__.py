"""The registered model families. Adding one is a folder beside these (see `base.py` for the
contract) and one line in FAMILY_MODULES; studies, final models, the gate and scoring pick it up.

Imported by name when first asked for, so loading one family's registered model does not
import another family's libraries (torch).
"""

from __future__ import annotations

import importlib

from ml.families.base import ModelFamily

FAMILY_MODULES = (
    "ml.families.xgboost",
    "ml.families.torch_seq",
)


def all_families() -> tuple[ModelFamily, ...]:
    """Every registered family, in FAMILY_MODULES order."""
    return tuple(importlib.import_module(module).FAMILY for module in FAMILY_MODULES)


def family_named(name: str) -> ModelFamily:
    """The family called `name` (its `name`, e.g. "xgboost", or registry tag, "torch-seq")."""
    families = all_families()
    for family in families:
        if name in (family.name, family.registry_tag):
            return family
    known = ", ".join(family.name for family in families)
    raise ValueError(f"Unknown model family {name!r}; known: {known}")
