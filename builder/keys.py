"""Cache keys: pure functions from a step's definition to a content-derived key.

A key is the sha256 of canonical JSON (sorted keys, compact, UTF-8) of the step's
definition, which always includes the parent step's key. What changes the result
(instruction after expansion, environment, user, workdir, copied file *contents*)
is in the definition; what does not (progress labels, timings, mtimes) is not.
Changing what goes in here invalidates every user's cache: tests/test_cache_key_format.py pins the
format, and KEY_VERSION is bumped with any change of what a key means (an old record must never hit
for a step whose result the new code would build differently).
"""

from __future__ import annotations

import hashlib
from typing import Any

from pybuild.oci.image import canonical_json

KEY_VERSION = "pybuild.v2"  # v2: WORKDIR keys carry the USER that owns the new directory (77c822c)


def step_key(parent_key: str | None, definition: dict[str, Any]) -> str:
    """Key of a step: sha256 over the versioned canonical definition and the parent key."""
    payload = {"v": KEY_VERSION, "parent": parent_key, "def": definition}
    return "sha256:" + hashlib.sha256(canonical_json(payload)).hexdigest()


def result_key(key: str, diff_id: str | None) -> str:
    """What the next step is keyed on: a step's key together with the layer it resolved to.

    A key names inputs, and a key's record can be replaced by a rebuild that made different
    bytes (``--no-cache``, a build whose later step failed, two runners racing).  Chaining the
    children on the result, not on the key alone, means a cached child always comes with the
    very parent layer it was built on (BuildKit links cache records the same way); a
    deterministic step rebuilds to the same diff_id, so its children still hit."""
    return step_key(key, {"result": diff_id})
