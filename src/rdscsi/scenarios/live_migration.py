"""placeholder"""

from __future__ import annotations

from .cluster import Cluster
from .steps import Undo

ABOUT = "todo"


async def run(c: Cluster, undo: Undo) -> None:
    raise NotImplementedError
