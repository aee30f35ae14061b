"""An SSH server speaking the RouterOS `/disk` and `/file` CLI of a ROSE Data Server."""

from rdscsi.sim.cli import Interpreter, Outcome
from rdscsi.sim.faults import Faults
from rdscsi.sim.simulator import SimConfig, Simulator
from rdscsi.sim.units import parse_size

__all__ = ["Faults", "Interpreter", "Outcome", "SimConfig", "Simulator", "parse_size"]
