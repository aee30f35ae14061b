"""Write the image's dependency locks (`make constraints`): every package pinned with the
hashes of all its files, for the image's Python, resolved for any platform (amd64, arm64).

- runtime.lock: the project's dependencies (pyproject.toml [project] dependencies), installed
  into the image's virtual environment with `pip install --require-hashes`;
- build.lock: its build backend ([build-system] requires), used only in the builder stage
  to turn the source into a wheel.

tests/image checks that both still satisfy pyproject.toml: re-run after changing it.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
PYTHON = "3.11"  # the Python of the Dockerfile's base image


def compile_lock(requirements: list[str], out: Path) -> None:
    with tempfile.NamedTemporaryFile("w", suffix=".in") as spec:
        spec.write("\n".join(requirements) + "\n")
        spec.flush()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "uv",
                "pip",
                "compile",
                spec.name,
                "--universal",
                "--generate-hashes",
                "--python-version",
                PYTHON,
                "--no-annotate",
                "--quiet",
                "--custom-compile-command",
                "make constraints",
                "-o",
                str(out),
            ],
            check=True,
        )


def main() -> int:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    compile_lock(project["project"]["dependencies"], HERE / "runtime.lock")
    compile_lock(project["build-system"]["requires"], HERE / "build.lock")
    print(f"wrote {HERE / 'runtime.lock'} and {HERE / 'build.lock'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
