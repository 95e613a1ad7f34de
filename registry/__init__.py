"""Talking to registries (OCI distribution spec, Docker Registry HTTP API v2): pull, push, auth.

``client`` is the HTTP layer (TLS, retries, auth challenges), ``auth`` reads docker's
credentials and runs the Bearer token flow, ``pull``/``push`` move images between a
registry and the local store, ``config`` reads mirrors and insecure registries.
"""

from .client import RegistryError

__all__ = ["RegistryError"]
