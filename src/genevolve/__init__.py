"""genevolve: an open, trainable implementation of the GenEvolve image-generation agent.

``import genevolve`` stays light: backends import their heavy dependencies when built.
"""

from genevolve.agent import Agent, AgentConfig
from genevolve.config import create_agent
from genevolve.types import Observation, Program, Reference, RetrievedImage, StopReason, Trajectory, Turn

__version__ = "0.1.0"

__all__ = ["Agent", "AgentConfig", "Observation", "Program", "Reference", "RetrievedImage", "StopReason",
           "Trajectory", "Turn", "__version__", "create_agent"]
