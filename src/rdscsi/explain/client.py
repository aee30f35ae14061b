"""`rdscsi explain`: asks a running driver's `/debug/explain` and prints the answer.

Standard library only (no gRPC, no Kubernetes client): it runs wherever Python does, and
starts fast. What the user can fix is one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from . import render

DEFAULT_URL = "http://127.0.0.1:9809"
KINDS = ("pvc", "pv", "volume", "node", "appliance")
TIMEOUT_S = 30.0


class Failed(Exception):
    """One line for the user; the exit status."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def add_parser(sub: Any) -> None:
    text = "why a volume, node or appliance is where it is, and what it waits for"
    p = sub.add_parser(
        "explain",
        help=text,
        description=f"Ask a running driver {text}: its state machine with the current state "
        "marked, the next step with the guard that blocks it and the evidence or time that "
        "would unblock it, its recent transitions, and what the cluster and the appliance "
        "show. Without arguments: what is not at rest. In a cluster, reach the controller "
        "first: kubectl -n rdscsi-system port-forward deploy/rdscsi-controller 9809.",
    )
    p.add_argument(
        "what",
        nargs="*",
        metavar="[KIND] NAME",
        help="KIND is pvc, pv, volume, node or appliance (also as KIND/NAME); a PVC is "
        "NAMESPACE/NAME; without KIND the driver finds what NAME names",
    )
    p.add_argument(
        "-n", "--namespace", default="", help="the PVC's namespace (else NAMESPACE/NAME)"
    )
    p.add_argument(
        "--url",
        default=DEFAULT_URL,
        help=f"the driver's metrics address (default: {DEFAULT_URL}, as `rdscsi run` serves)",
    )
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print the JSON as the driver served it")
    out.add_argument(
        "--mermaid", action="store_true", help="Markdown, the machine as a Mermaid block"
    )
    p.set_defaults(func=main)


def query(args: argparse.Namespace) -> dict[str, str]:
    """kind and name from `[KIND] NAME`, `KIND/NAME` or nothing."""
    what = list(args.what)
    if len(what) > 2:
        raise Failed(f"expected [KIND] NAME, got {len(what)} words", 2)
    kind, name = "", ""
    if len(what) == 2:
        kind, name = what
    elif len(what) == 1:
        head, sep, rest = what[0].partition("/")
        if sep and head in KINDS and rest:
            kind, name = head, rest
        elif what[0] in KINDS:
            raise Failed(f"{what[0]}: which one? give its name", 2)
        else:
            name = what[0]
    if kind and kind not in KINDS:
        raise Failed(f"{kind}: not a kind (one of {', '.join(KINDS)})", 2)
    if args.namespace:
        if kind not in ("", "pvc") or "/" in name:
            raise Failed("-n/--namespace is for a PVC given by its name alone", 2)
        kind, name = "pvc", f"{args.namespace}/{name}"
    out = {}
    if kind:
        out["kind"] = kind
    if name:
        out["name"] = name
    return out


def fetch(url: str, params: dict[str, str]) -> dict[str, Any]:
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise Failed(f"--url {url}: expected http://HOST:PORT", 2)
    target = urllib.parse.urlunsplit(
        (parsed.scheme, parsed.netloc, "/debug/explain", urllib.parse.urlencode(params), "")
    )
    try:
        with urllib.request.urlopen(target, timeout=TIMEOUT_S) as reply:
            return dict(json.loads(reply.read()))
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read()).get("error") or exc.reason
        except (ValueError, AttributeError):
            message = f"{exc.code} {exc.reason}"
        if exc.code == 404 and "explain" not in str(message) and not params:
            message = f"{url} serves no /debug/explain (an older rdscsi, or not rdscsi)"
        raise Failed(str(message)) from None
    except (urllib.error.URLError, OSError) as exc:
        why = getattr(exc, "reason", exc)
        raise Failed(
            f"nothing answers at {url} ({why}): start `rdscsi run`, or reach a controller "
            "first (kubectl -n rdscsi-system port-forward deploy/rdscsi-controller 9809)"
        ) from None
    except ValueError:
        raise Failed(f"{url} answered something that is not JSON") from None


def main(args: argparse.Namespace) -> int:
    try:
        body = fetch(args.url, query(args))
    except Failed as exc:
        print(f"rdscsi explain: {exc}", file=sys.stderr)
        return exc.code
    if args.json:
        print(json.dumps(body, indent=1))
    else:
        sys.stdout.write(render.text(body, mermaid=args.mermaid))
    return 0
