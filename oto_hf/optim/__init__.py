"""Optimizers that train and prune zero-invariant groups at once."""

from .dhspg import DHSPG

__all__ = ["DHSPG"]
