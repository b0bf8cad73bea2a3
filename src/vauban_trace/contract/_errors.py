"""Re-export of the contract's error (the tree lives in :mod:`vauban_trace._exceptions`)."""

from vauban_trace._exceptions import ContractError

__all__ = ["ContractError"]
