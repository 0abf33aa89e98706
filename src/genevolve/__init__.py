"""genevolve: an open, trainable implementation of the GenEvolve image-generation agent."""

from genevolve.types import Observation, Program, Reference, RetrievedImage, StopReason, Trajectory, Turn

__version__ = "0.1.0"

__all__ = ["Observation", "Program", "Reference", "RetrievedImage", "StopReason", "Trajectory", "Turn", "__version__"]
