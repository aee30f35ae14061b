"""The node's boundary: which volume ids and which paths a request may name.

Kubelet passes absolute paths under its root directory (``--kubelet-dir``, by default
``/var/lib/kubelet``): ``plugins/kubernetes.io/csi/<driver>/<hash>/globalmount`` to stage,
``pods/<uid>/volumes/kubernetes.io~csi/<pv>/mount`` to publish. Anything else is hostile or
a mistake, and the node plugin runs as root: a path is taken only when it is absolute,
free of ``.``/``..`` segments and control characters, and, with every symlink resolved
once here, strictly inside the (equally resolved) kubelet root. Every later step uses the
resolved path, so mountinfo (which shows resolved paths) compares equal to it, whatever
symlinks the kubelet directory is reached through.
"""

from __future__ import annotations

import os
from pathlib import Path

from .naming import is_volume_id
from .status import invalid, not_found, required, shown

MAX_PATH = 4096  # PATH_MAX
MAX_NAME = 255  # NAME_MAX: one path component


class PathRefused(ValueError):
    """A request path outside what the node may touch; the message says why."""


def volume_id(value: str) -> str:
    """The request's volume id: INVALID_ARGUMENT when empty, NOT_FOUND when it is not one
    this driver issues (the records are named after ids, so only these reach the disk)."""
    vid = required(value, "volume_id")
    if not is_volume_id(vid):
        raise not_found(f"volume {shown(vid)} does not exist (not an id this driver issues)")
    return vid


class Confinement:
    """Resolves request paths inside one root directory."""

    def __init__(self, root: Path) -> None:
        self.given = Path(root)
        self.root = Path(os.path.realpath(root))

    def resolve(self, value: str, field: str) -> Path:
        """``value`` resolved, or PathRefused saying why it may not be used."""
        if not value.startswith("/"):
            raise PathRefused(f"{field} {shown(value)} is not an absolute path")
        if len(value) > MAX_PATH:
            raise PathRefused(f"{field} {shown(value)} is longer than {MAX_PATH} characters")
        if any(ord(c) < 0x20 or c == "\x7f" for c in value):
            raise PathRefused(f"{field} {shown(value)} contains control characters")
        parts = value.split("/")
        if any(part in (".", "..") for part in parts):
            raise PathRefused(f"{field} {shown(value)} has '.' or '..' segments")
        if any(len(part.encode()) > MAX_NAME for part in parts):
            raise PathRefused(f"{field} {shown(value)} has a name longer than {MAX_NAME} bytes")
        resolved = Path(os.path.realpath(value))
        if resolved == self.root or not resolved.is_relative_to(self.root):
            through = f" (resolves to {shown(str(resolved))})" if str(resolved) != value else ""
            raise PathRefused(
                f"{field} {shown(value)}{through} is not inside the kubelet directory "
                f"{self.root} (the node plugin's --kubelet-dir)"
            )
        return resolved

    def path(self, value: str, field: str) -> Path:
        """:meth:`resolve` for a required field: INVALID_ARGUMENT when empty or refused."""
        required(value, field)
        try:
            return self.resolve(value, field)
        except PathRefused as exc:
            raise invalid(str(exc)) from None

    def lookup(self, value: str, field: str, vid: str) -> Path:
        """:meth:`resolve` for a path where a volume is looked for (NodeGetVolumeStats): a
        path it may not be at is NOT_FOUND, as the spec says for "not at that path"."""
        required(value, field)
        try:
            return self.resolve(value, field)
        except PathRefused as exc:
            raise not_found(f"volume {vid} is not there: {exc}") from None
