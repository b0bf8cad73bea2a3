"""Argument types shared by the subcommands: each refuses a bad value with one argparse message.

``positive_int`` (an integer >= 1) and ``nonnegative_int`` (an integer >= 0) are ``type=``
callables; argparse turns their :class:`argparse.ArgumentTypeError` into the usual
``error: argument --limit: must be at least 1, got 0`` line and exit status 2.
"""

from __future__ import annotations

import argparse


def _int_at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1."""
    return _int_at_least(text, 1)


def nonnegative_int(text: str) -> int:
    """An integer >= 0."""
    return _int_at_least(text, 0)


__all__ = ["nonnegative_int", "positive_int"]
