"""Read replicas: lag-aware routing of read-only sessions with read-your-writes.

The manager holds a :class:`ReplicaRouter` when ``DATABASE_REPLICA_URLS`` is set and
delegates ``get_session(read_only=True)`` to it. See docs/replicas.md.
"""

from __future__ import annotations

from dbkeel.replicas.router import Node, ReplicaRouter

__all__ = ["Node", "ReplicaRouter"]
