"""What a fork leaves a child: the parent's connections, and locks its threads may hold.

The proxies, servers and links that hold such things register here; in each child forked
while they live, their ``renew`` runs first thing, before any of their code does.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable
from typing import Any

_OWNERS: weakref.WeakKeyDictionary[Any, Callable[[Any], None]] = weakref.WeakKeyDictionary()


def renew_in_child(owner: Any, renew: Callable[[Any], None]) -> None:
    """Call ``renew(owner)`` in every child forked from now on while ``owner`` lives."""
    _OWNERS[owner] = renew


def _after_fork_in_child() -> None:
    for owner, renew in list(_OWNERS.items()):
        renew(owner)


os.register_at_fork(after_in_child=_after_fork_in_child)
