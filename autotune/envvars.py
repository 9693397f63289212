"""Scoped environment variables, for libraries that read some settings only from the environment."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def scoped_env(new: dict[str, str]) -> Iterator[None]:
    """`new` set in os.environ for the block, the previous values (or their absence) restored after."""
    old = {k: os.environ.get(k) for k in new}
    os.environ.update(new)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
