"""Whom the SSH client trusts (pinned host keys, a known_hosts file), how it proves itself
(its key), and which setting a refused dial names, with the key the server showed.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import asyncssh

if TYPE_CHECKING:
    from .connection import RDSConfig


class Client(asyncssh.SSHClient):
    """Tells the owner the moment the SSH connection closes (no polling), and remembers the
    host key a server showed, for naming it when it is not trusted."""

    def __init__(self, on_lost: Callable[[asyncssh.SSHClientConnection, Exception | None], None]):
        self._on_lost = on_lost
        self._conn: asyncssh.SSHClientConnection | None = None
        self.offered: asyncssh.SSHKey | None = None

    def connection_made(self, conn: asyncssh.SSHClientConnection) -> None:
        self._conn = conn

    def connection_lost(self, exc: Exception | None) -> None:
        if self._conn is not None:
            self._on_lost(self._conn, exc)

    def validate_host_public_key(
        self, host: str, addr: str, port: int, key: asyncssh.SSHKey
    ) -> bool:
        self.offered = key  # asked only for a key no pin or known_hosts entry trusts
        return False

    def server_key(self) -> asyncssh.SSHKey | None:
        if self.offered is not None:
            return self.offered
        if self._conn is not None:
            key: asyncssh.SSHKey | None = self._conn.get_server_host_key()
            return key
        return None


class Rejected(Exception):
    """The appliance, or our own files, rejected the configuration: a setting is wrong."""

    def __init__(self, setting: str, reason: str, fingerprint: str = "") -> None:
        self.setting, self.reason, self.fingerprint = setting, reason, fingerprint
        super().__init__(f"{setting}: {reason}")


def known_hosts(cfg: RDSConfig) -> Any:
    """What asyncssh trusts; a pin or a file we cannot read is a rejected setting."""
    if cfg.insecure_skip_host_key_check:
        return None
    keys: list[asyncssh.SSHKey] = []
    for pinned in cfg.host_keys:
        try:
            keys.append(asyncssh.import_public_key(pinned))
        except (asyncssh.KeyImportError, ValueError) as exc:
            raise Rejected(
                cfg.setting("host_keys"), f"not a public key: {pinned[:40]!r}: {exc}"
            ) from exc
    if cfg.known_hosts:
        try:
            known = asyncssh.read_known_hosts(str(cfg.known_hosts))
        except (OSError, ValueError) as exc:
            raise Rejected(
                cfg.setting("known_hosts"), f"cannot read {cfg.known_hosts}: {exc}"
            ) from exc
        if not keys:
            return known
        keys.extend(known.match(cfg.address, "", cfg.port)[0])  # both: file and pins
    return (keys, [], [])


def client_keys(cfg: RDSConfig) -> Sequence[asyncssh.SSHKeyPair] | None:
    """Our key pairs; a key file we cannot load is a rejected setting."""
    paths = [str(k) for k in cfg.client_keys]
    if not paths:
        return None
    try:
        return asyncssh.load_keypairs(paths)
    except (OSError, asyncssh.KeyImportError, ValueError) as exc:
        raise Rejected(cfg.setting("key_file"), f"cannot load {', '.join(paths)}: {exc}") from exc


def fingerprint(public_data: bytes) -> str:
    """OpenSSH's fingerprint of a public key in its wire form: SHA256, base64 unpadded."""
    digest = base64.b64encode(hashlib.sha256(public_data).digest()).decode()
    return "SHA256:" + digest.rstrip("=")


async def rejection(
    exc: Exception,
    client: Client,
    cfg: RDSConfig,
    fetch_key: Callable[[], Awaitable[asyncssh.SSHKey | None]],
) -> Rejected | None:
    """The setting a failed dial says is wrong, or None for an outage. `fetch_key` reads the
    server's host key when the refusal came before we saw it (a revoked key)."""
    if isinstance(exc, Rejected):
        return exc
    if isinstance(exc, asyncssh.PermissionDenied):
        key = client.server_key()
        ours = ""
        with contextlib.suppress(Exception):
            pairs = client_keys(cfg) or ()
            ours = "".join(f" {fingerprint(p.key_public_data)}" for p in pairs)
        return Rejected(
            cfg.setting("key_file"),
            f"the appliance refused user {cfg.user!r} with the key{ours} in "
            f"{', '.join(str(k) for k in cfg.client_keys) or '(none)'} (authorise it on the "
            f"appliance, or check {cfg.setting('user')})",
            key.get_fingerprint() if key is not None else "",
        )
    if isinstance(exc, asyncssh.HostKeyNotVerifiable):
        setting = cfg.setting("host_keys" if cfg.host_keys else "known_hosts")
        key = client.offered
        if key is None:  # refused before we were asked (a revoked key): look it up
            with contextlib.suppress(Exception):
                key = await fetch_key()
        trusted = f"no entry of {cfg.known_hosts} for {cfg.target}"
        if cfg.host_keys:
            trusted = "no pinned key" + (f" nor {trusted}" if cfg.known_hosts else "")
        why = "is revoked" if "revoked" in str(exc) else f"matches {trusted}"
        return Rejected(
            setting,
            f"the server's host key {why}",
            key.get_fingerprint() if key is not None else "unknown",
        )
    return None
