"""Cache keys: pure functions from a step's definition to a content-derived key.

A key is the sha256 of canonical JSON (sorted keys, compact, UTF-8) of the step's
definition, which always includes the parent step's key. What changes the result
(instruction after expansion, environment, user, workdir, copied file *contents*)
is in the definition; what does not (progress labels, timings, mtimes) is not.
Changing what goes in here invalidates every user's cache: tests pin the format.
"""

from __future__ import annotations

import hashlib
from typing import Any

from pybuild.oci.image import canonical_json

KEY_VERSION = "pybuild.v1"


def step_key(parent_key: str | None, definition: dict[str, Any]) -> str:
    """Key of a step: sha256 over the versioned canonical definition and the parent key."""
    payload = {"v": KEY_VERSION, "parent": parent_key, "def": definition}
    return "sha256:" + hashlib.sha256(canonical_json(payload)).hexdigest()
