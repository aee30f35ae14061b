"""Generate the Python modules of the CSI protocol from csi.proto.

    python -m rdscsi.csi.generate           # rewrite csi_pb2.py, csi_pb2_grpc.py, csi_pb2.pyi
    python -m rdscsi.csi.generate --check   # exit 1, naming each file that is stale or missing

The generated files are committed and must be byte-identical to what the
pinned grpcio-tools produces, so `--check` (run by `make test`) regenerates
into a temporary directory and compares.

protoc runs with the source root (the directory holding the `rdscsi` package)
as its include path and `rdscsi/csi/csi.proto` as its input. The proto's path
therefore mirrors the module path, and the generated stub imports its messages
as `from rdscsi.csi import csi_pb2`, which resolves inside the package. The
well-known types (descriptor, timestamp, wrappers) come from the copies that
grpcio-tools bundles, so the output depends on nothing but that one package.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from importlib.resources import as_file, files
from pathlib import Path

from grpc_tools import protoc  # type: ignore[import-untyped]

PROTO = "rdscsi/csi/csi.proto"
"""The proto, relative to the source root; also its name inside the descriptor."""

OUTPUTS = (
    "rdscsi/csi/csi_pb2.py",
    "rdscsi/csi/csi_pb2_grpc.py",
    "rdscsi/csi/csi_pb2.pyi",
)
"""Every file protoc writes, relative to the output root."""

SOURCE_ROOT = Path(__file__).resolve().parents[2]
"""The directory that holds the `rdscsi` package (src/ in a checkout)."""


class GenerationError(RuntimeError):
    """protoc failed; its own diagnostics went to stderr."""


def generate(out_root: Path, source_root: Path = SOURCE_ROOT) -> None:
    """Run protoc on `source_root`/PROTO, writing OUTPUTS under `out_root`."""
    with as_file(files("grpc_tools") / "_proto") as well_known:
        args = [
            "grpc_tools.protoc",
            f"--proto_path={source_root}",
            f"--proto_path={well_known}",
            f"--python_out={out_root}",
            f"--grpc_python_out={out_root}",
            f"--pyi_out={out_root}",
            str(source_root / PROTO),
        ]
        status = protoc.main(args)
    if status != 0:
        raise GenerationError(f"protoc exited with status {status} on {source_root / PROTO}")


def stale_outputs(source_root: Path = SOURCE_ROOT) -> list[str]:
    """Regenerate into a temporary directory; return each output that is not byte-identical."""
    with tempfile.TemporaryDirectory(prefix="rdscsi-proto-") as tmp:
        fresh_root = Path(tmp)
        generate(fresh_root, source_root)
        stale = []
        for name in OUTPUTS:
            committed = source_root / name
            fresh = (fresh_root / name).read_bytes()
            if not committed.is_file() or committed.read_bytes() != fresh:
                stale.append(name)
        return stale


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m rdscsi.csi.generate",
        description="Generate the CSI protocol modules from csi.proto (pinned grpcio-tools).",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="do not write; exit 1 if a generated file is stale or missing",
    )
    parser.add_argument(
        "--root",
        type=Path,
        default=SOURCE_ROOT,
        help=f"source root holding {PROTO} (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    root: Path = args.root.resolve()

    try:
        if args.check:
            stale = stale_outputs(root)
            for name in stale:
                state = "missing" if not (root / name).is_file() else "differs from protoc output"
                print(f"{root / name}: {state}", file=sys.stderr)
            if stale:
                print("regenerate with: make proto", file=sys.stderr)
                return 1
            return 0
        generate(root, root)
    except GenerationError as error:
        print(error, file=sys.stderr)
        return 2
    for name in OUTPUTS:
        print(root / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
