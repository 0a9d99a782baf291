"""Optimizers that train and prune zero-invariant groups at once."""

from .dhspg import DHSPG
from .families import GroupFamily

__all__ = ["DHSPG", "GroupFamily"]
