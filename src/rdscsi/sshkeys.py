"""OpenSSH public-key lines in every form people paste, reduced to `<type> <base64>`.

A pinned host key arrives as a bare key (`ssh-ed25519 AAAA…`), an authorized_keys line (with
options before and a comment after), a known_hosts or `ssh-keyscan` line (a host field
before), or the whole output of `ssh-keyscan` (several lines, `#` comments). Each is checked
here, before any dial, so a key that cannot match is refused at start with the reason.
"""

from __future__ import annotations

import base64
import binascii
import re
import struct

# The key types OpenSSH writes in public-key lines (certificates are not host keys to pin).
KEY_TYPE = re.compile(
    r"^(?:ssh-(?:ed25519|ed448|rsa|dss)|ecdsa-sha2-nistp(?:256|384|521)"
    r"|sk-(?:ssh-ed25519|ecdsa-sha2-nistp256)@openssh\.com)$"
)
_MARKERS = ("@cert-authority", "@revoked")


class KeyLineError(ValueError):
    """A line that is not a usable public key; the message says why."""


def _key_at(tokens: list[str], index: int) -> str:
    """`<type> <base64>` from `tokens[index:]`, checked: base64, the type embedded in the
    blob, and that the key imports."""
    kind = tokens[index]
    if index + 1 >= len(tokens):
        raise KeyLineError(f"has the key type {kind} but no key after it")
    blob = tokens[index + 1]
    try:
        raw = base64.b64decode(blob, validate=True)
    except (binascii.Error, ValueError):
        raise KeyLineError(f"the {kind} key is not base64 (cut short or wrapped?)") from None
    (size,) = struct.unpack(">I", raw[:4]) if len(raw) >= 4 else (len(raw),)
    if 4 + size > len(raw):
        raise KeyLineError(f"the {kind} key is cut short")
    embedded = raw[4 : 4 + size].decode("ascii", "replace")
    if embedded != kind:
        raise KeyLineError(f"the key says it is {embedded!r}, the line says {kind}")
    key = f"{kind} {blob}"
    import asyncssh  # here: `rdscsi --help` need not load it

    try:
        asyncssh.import_public_key(key)
    except (asyncssh.KeyImportError, ValueError) as exc:
        raise KeyLineError(f"the {kind} key does not parse ({exc})") from None
    return key


def _key_index(tokens: list[str]) -> int | None:
    return next((i for i, t in enumerate(tokens) if KEY_TYPE.match(t)), None)


def pinned_keys(entry: str) -> list[str]:
    """Every key in `entry` (one or more lines) as `<type> <base64>`; a host field before the
    key, options before it and a comment after it are dropped, `#` lines and blank lines
    skipped. `KeyLineError` names the first line that holds no usable key."""
    keys: list[str] = []
    lines = entry.splitlines()
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        where = f"line {number}: " if len(lines) > 1 else ""
        tokens = text.split()
        if tokens[0] in _MARKERS:
            raise KeyLineError(f"{where}a {tokens[0]} line is not a host key")
        index = _key_index(tokens)
        if index is None:
            raise KeyLineError(f"{where}no key type (ssh-ed25519, ecdsa-sha2-nistp256, ssh-rsa…)")
        try:
            key = _key_at(tokens, index)
        except KeyLineError as exc:
            raise KeyLineError(f"{where}{exc}") from None
        if key not in keys:
            keys.append(key)
    if not keys:
        raise KeyLineError("holds no key")
    return keys


def known_hosts_keys(text: str) -> int:
    """How many host keys a known_hosts text holds; `KeyLineError` names the first line that
    is not `[marker] <hosts> <type> <base64> [comment]` (asyncssh itself skips such lines
    silently, so a pasted bare key would never match)."""
    count = 0
    for number, line in enumerate(text.splitlines(), 1):
        tokens = line.split()
        if not tokens or tokens[0].startswith("#"):
            continue
        if tokens[0] in _MARKERS:
            tokens = tokens[1:]
        index = _key_index(tokens)
        if index == 0:
            raise KeyLineError(
                f"line {number}: has no host field (a bare key belongs in rds.host_keys)"
            )
        if index != 1:
            raise KeyLineError(f"line {number}: is not `<host> <type> <key>`")
        try:
            _key_at(tokens, index)
        except KeyLineError as exc:
            raise KeyLineError(f"line {number}: {exc}") from None
        count += 1
    return count
