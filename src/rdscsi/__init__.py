"""rdscsi: a CSI driver for MikroTik ROSE Data Server built from explicit state machines."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("rdscsi")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0"
