"""Inbox helpers shared by the runtime."""

from __future__ import annotations

# The inbox consumer under which unreadable catalog records are marked dead-lettered.
CATALOG_FOLLOWER = "catalog-follower"
