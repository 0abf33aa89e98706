import subprocess
import sys

import pytest

import genevolve
from genevolve.policy.scripted import ScriptedPolicy
from genevolve.protocol import ToolCall, format_turn
from genevolve.registry import ConfigError
from genevolve.tools.base_search import ImageSearchBackend
from genevolve.types import RetrievedImage


class Library(ImageSearchBackend):
    name = "lib"

    def __init__(self, path):
        self.path = path

    async def search(self, query, top_k):
        return [RetrievedImage(title=query, path=self.path)]


def test_create_agent_with_instances(tmp_path):
    from PIL import Image

    Image.new("RGB", (4, 4)).save(tmp_path / "a.png")
    policy = ScriptedPolicy([format_turn("look", tool_call=ToolCall("image_search", {"query": "cat"})),
                             format_turn("ok", answer={"gen_prompt": "the cat of the first reference image",
                                                       "reference_images": [{"img_id": "IMG_001", "note": "cat"}]})])
    agent = genevolve.create_agent(policy, image_search=Library(str(tmp_path / "a.png")), max_references=1)
    traj = agent.run("a cat")
    assert traj.ok and traj.program.references[0].path.endswith("a.png")
    assert set(agent.tools) == {"image_search", "query_knowledge"}


def test_create_agent_by_name_errors_clearly():
    with pytest.raises(ConfigError, match="valid names"):
        genevolve.create_agent("nope")


def test_import_is_light():
    code = ("import sys, genevolve, genevolve.cli, genevolve.tools, genevolve.policy; "
            "heavy = [m for m in ('torch', 'transformers', 'openai', 'httpx', 'peft') if m in sys.modules]; "
            "print(heavy); sys.exit(1 if heavy else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
