"""The tool interface: typed arguments in, an Observation out.

A minimal implementation::

    class Clock(Tool):
        name = "clock"
        description = "Tell the time."
        Args = NoArgs
        async def acall(self, args):
            return Observation(text=time.ctime())

The agent validates the policy's arguments against ``Args`` (a pydantic model; its JSON schema is
what the system prompt and the structured-decoding grammar show) before calling. Expected failures
(timeouts, HTTP errors, empty results from a broken backend) raise ``ToolError``: the agent turns
them into an observation the policy sees and the trajectory records. Anything else is a bug and raises.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from genevolve.types import Observation


class ToolError(RuntimeError):
    """An expected tool failure. ``code`` is a short name (``timeout``, ``http_500``, ``no_api_key``)."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class ToolArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NoArgs(ToolArgs):
    pass


class Tool(ABC):
    #: protocol name the policy calls (``search``, ``image_search``, ``query_knowledge``)
    name: ClassVar[str]
    description: ClassVar[str]
    Args: ClassVar[type[ToolArgs]]
    #: which backend serves it, for trajectories and reports (e.g. ``serper``)
    backend: str = ""

    @abstractmethod
    async def acall(self, args: Any) -> Observation:
        """Run the tool on validated ``args`` (an instance of ``Args``)."""

    def schema(self) -> dict[str, Any]:
        """JSON schema of the arguments."""
        return self.Args.model_json_schema()

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""
