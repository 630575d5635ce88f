"""Typed errors of the control-plane client."""

from __future__ import annotations


class SubscriptionError(Exception):
    """The subscription could not deliver: the controller refused us, or closed the
    stream. The message says which and what to check (address, token, node name)."""
