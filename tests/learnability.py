"""A synthetic tool environment that a tiny model can learn with RL in minutes, for
tests/test_evolve_learnability.py (the analogue of the digit-completion end-to-end tests RL frameworks keep).

The request names a colour among other words. ``image_search`` returns the swatch of a colour that its
query names first, then the other swatches in a fixed order. The judge gives 1 when the program's reference
is the swatch of the request's colour (its GT image) and 0 otherwise. So a rollout earns 1 when it searches
with a phrase that holds the colour word and answers with the first image, and otherwise only by luck. The
first action is the query: under the protocol grammar, with one tool call, it is one of the request's
phrases (``genevolve.structured.request_phrases``), most of which do not name the colour.

Everything else is the real loop: agent, grammar, image_search tool, collage renderer, reward, GroupSampler,
learner. Only the image backend and the judge are synthetic.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

from PIL import Image

from genevolve.evolve.experience import SLOTS, ExperienceBundle, Pair, Provenance, RetrievalKey
from genevolve.evolve.extractors import Extractor
from genevolve.evolve.rl_config import EvolveFile
from genevolve.evolve.rollout import Rollout
from genevolve.judge.base import Judge, Score
from genevolve.tools.base_search import ImageSearchBackend
from genevolve.types import RetrievedImage

COLOURS = {"red": (220, 30, 30), "green": (30, 180, 60), "blue": (30, 60, 220), "yellow": (230, 210, 30)}
#: training wordings
TRAIN_WORDINGS = ["paint a large {c} square on plain white paper", "show me one flat {c} tile beside a wooden table",
                  "a small {c} card lying on a dark kitchen floor", "fill the whole empty frame with bright {c}",
                  "draw a single {c} circle under a cloudy evening sky", "a plastic cup painted {c} near the window"]
#: held out: new sentences made of the training words (a word never seen in training has untrained weights,
#: and would test the tokenizer's luck rather than what the policy learned)
EVAL_WORDINGS = ["a flat {c} circle near a dark wooden window", "fill a small plastic frame with {c} paint"]


class Swatches(ImageSearchBackend):
    """The four swatches: those whose colour the query names first, then the others in ``COLOURS`` order
    (written once into ``folder``)."""

    name = "swatches"

    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)

    async def search(self, query: str, top_k: int) -> list[RetrievedImage]:
        words = set(query.lower().split())
        order = sorted(COLOURS, key=lambda colour: colour not in words)  # stable: named colours first
        out = []
        for colour in order[:top_k]:
            path = self.folder / f"{colour}.png"
            if not path.is_file():  # written beside, then renamed: concurrent rollouts never see half a file
                tmp = self.folder / f"{colour}.{uuid.uuid4().hex}.png"
                Image.new("RGB", (16, 16), COLOURS[colour]).save(tmp)
                os.replace(tmp, path)
            out.append(RetrievedImage(title=f"swatch {len(out) + 1}", path=str(path)))
        return out


class SwatchJudge(Judge):
    """1 when the program's reference is the swatch of the GT image's colour, else 0."""

    name = "swatch"

    async def ascore(self, request: str, image: Image.Image, *, gt_image: Image.Image | None = None,
                     program: Any = None, meta: dict[str, Any] | None = None) -> Score:
        refs = program.references if program is not None else []
        got = _colour(Image.open(refs[0].path)) if refs and refs[0].path else None
        want = _colour(gt_image) if gt_image is not None else None
        value = 1.0 if want is not None and got == want else 0.0
        return Score.from_dimensions(value, value, value, value, judge=self.name, rationale=f"wanted {want}, got {got}")


def _colour(image: Image.Image) -> str | None:
    """The name of the swatch colour ``image`` is filled with (None: not a swatch)."""
    rgb = image.convert("RGB").getpixel((0, 0))
    return next((name for name, value in COLOURS.items() if tuple(rgb) == value), None)


def write_rows(folder: Path, wordings: list[str], name: str) -> Path:
    """One row per (wording, colour), with a GT image (a swatch) and ``meta.colour``."""
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    rows = []
    for w, wording in enumerate(wordings):
        for colour, rgb in COLOURS.items():
            Image.new("RGB", (16, 16), rgb).save(images / f"{colour}.png")
            rows.append({"id": f"{name}-{w}-{colour}", "question": wording.format(c=colour),
                         "gt_image": f"images/{colour}.png", "meta": {"colour": colour}})
    path = folder / f"{name}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def all_texts() -> list[str]:
    """Every request wording, for a toy tokenizer's vocabulary."""
    return [w.format(c=c) for w in TRAIN_WORDINGS + EVAL_WORDINGS for c in COLOURS]


def env_config(library: Path) -> dict[str, Any]:
    """The env: one forced image search, then an answer with one reference; short free text."""
    return {"policy": {"kind": "scripted", "responses": []}, "search": None, "knowledge": False,
            "image_search": {"kind": "tests.learnability:Swatches", "folder": str(library)},
            "renderer": {"kind": "collage", "width": 128, "height": 128},
            "judge": {"kind": "tests.learnability:SwatchJudge"},
            "agent": {"max_policy_calls": 2, "max_tool_calls": 1, "min_references": 1, "max_references": 1,
                      "structured_decoding": True, "prompt": "compact", "sampling": {"max_tokens": 96}}}


# -- the run ----------------------------------------------------------------------------------------------

MODEL = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 4, "max_position_embeddings": 2048}


def make_tokenizer(library: Path) -> Any:
    """A small BPE over the compact system prompt and the requests, so a rollout is a few hundred tokens."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from genevolve import prompts
    from genevolve.tools.image_search import ImageSearchTool
    from tests.test_policy_hf import TEMPLATE

    system = prompts.system_prompt([ImageSearchTool(Swatches(str(library)))], max_policy_calls=2,
                                   max_tool_calls=1, min_references=1, max_references=1, style="compact")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=800, special_tokens=["<|pad|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([system, *all_texts()] * 4, trainer)
    hf_tok = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<|pad|>", eos_token="<|im_end|>")
    hf_tok.chat_template = TEMPLATE
    return hf_tok


def swatch_config(tmp_path: Path, out: Path, **evolve: Any) -> EvolveFile:
    """An evolve config for the swatch task under ``tmp_path`` (tokenizer, library, train and held-out rows);
    ``evolve`` overrides the settings of the learnability test."""
    library = tmp_path / "library"
    library.mkdir(exist_ok=True)
    tok_dir = tmp_path / "tok"
    if not tok_dir.is_dir():
        make_tokenizer(library).save_pretrained(tok_dir)
    data = tmp_path / "data"
    train = write_rows(data, TRAIN_WORDINGS, "train")
    held = write_rows(data, EVAL_WORDINGS, "eval")
    # one-character thoughts and prompts: nearly every sampled token is a decision (query, top_k, reference)
    settings = {"data": str(train), "out": str(out), "steps": 20, "requests_per_step": 4, "k": 8, "alpha": 0.0,
                "lr": 1e-2, "temperature": 1.0, "top_p": 1.0, "think_max_chars": 1, "prompt_max_chars": 1,
                "micro_batch": 8, "mini_batches": 1, "concurrency": 2, "sample_threads": 1,
                "save_every": 1000, "tensorboard": False, "ved": {"form": "none"},
                "eval": {"every": 10, "k": 4, "data": str(held)}, **evolve}
    return EvolveFile.model_validate({"model": {"path": str(tok_dir), "from_config": MODEL},
                                      "env": env_config(library), "evolve": settings})


# -- a policy that reads its guide (for the VED test) -------------------------------------------------------

#: the one lesson of this task, as the teacher's decision guide names it
LESSON = "Search with the colour word of the request alone, then answer with the first image it returns."


class ColourLesson(Extractor):
    """An experience extractor (``evolve.experience.extractor: {kind: tests.learnability:ColourLesson}``) whose
    every bundle states ``LESSON``: a guide that names the right action, whatever the pair."""

    name = "colour-lesson"

    async def aextract(self, best: Rollout, worst: Rollout, *, step: int | None = None) -> ExperienceBundle:
        return lesson_bundle(Pair(best, worst).provenance(extractor=self.name, step=step))


def lesson_bundle(provenance: Provenance) -> ExperienceBundle:
    return ExperienceBundle(**{slot: [LESSON] for slot in SLOTS}, provenance=provenance,
                            key=RetrievalKey(trigger="Requests that name a colour", summary="a colour swatch"))


def _reply(query: str, img: int) -> list[str]:
    """The two replies of a rollout, in the grammar's exact layout (one-character thoughts and prompt)."""
    call = json.dumps({"name": "image_search", "arguments": {"query": query, "top_k": len(COLOURS)}})
    answer = json.dumps({"gen_prompt": "a", "reference_images": [{"img_id": f"IMG_{img:03d}", "note": "a"}]})
    return [f"<think>\na\n</think>\n<tool_call>\n{call}\n</tool_call>",
            f"<think>\na\n</think>\n<answer>\n{answer}\n</answer>"]


def warm_start_rows(folder: Path, library: Path, *, per_request: int = 4, seed: int = 0,
                    wordings: list[str] | None = None, name: str = "warm_start") -> Path:
    """SFT rows that teach guide-following and nothing else. For each training request, ``per_request`` rows
    under the plain system prompt search with a random phrase of the request and answer with a random image
    (a student at chance), and as many under the teacher's system prompt (the plain one with the lesson as
    its decision guide) search with the colour word and answer with the first image. Rollouts of the real
    agent and tools, replayed from scripts, so every row is exactly what the loop will show. ``wordings``:
    the requests' sentences (default ``TRAIN_WORDINGS``)."""
    import asyncio
    import random

    from genevolve.config import build_agent, load_config
    from genevolve.policy.scripted import ScriptedPolicy
    from genevolve.sft_rows import trajectory_to_sft_row
    from genevolve.structured import request_phrases

    rng = random.Random(seed)
    cfg = load_config(None, {**env_config(library), "policy": {"kind": "scripted", "responses": []}})
    agent = build_agent(cfg)
    teacher_system = teacher_prompt(agent)
    rows = []
    for wording in wordings or TRAIN_WORDINGS:
        for colour in COLOURS:
            request = wording.format(c=colour)
            for guided in [False] * per_request + [True] * per_request:
                replies = _reply(colour, 1) if guided else _reply(rng.choice(request_phrases(request)),
                                                                  rng.randint(1, len(COLOURS)))
                agent.policy = ScriptedPolicy(replies)
                traj = asyncio.run(agent.arun(request))
                assert traj.program is not None, traj.failure
                row = trajectory_to_sft_row(traj)
                if guided:
                    row["messages"][0]["content"] = teacher_system
                rows.append(row)
    rng.shuffle(rows)
    path = folder / f"{name}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def teacher_prompt(agent: Any) -> str:
    """``agent``'s system prompt with the lesson as its decision guide: what the VED teacher is shown. The
    guide has no pair behind it here (its text does not show provenance)."""
    provenance = Provenance(request_id="warm-start", request="warm start", step=0, best_reward=1.0,
                            worst_reward=0.0, gap=1.0)
    return agent.system_prompt_with(lesson_bundle(provenance).to_guide())


def warm_start(folder: Path, *, seed: int = 0, epochs: float = 12.0) -> Path:
    """SFT on ``warm_start_rows`` in ``folder`` (with the swatch task's tokenizer, library and rows); returns
    the model folder for ``evolve.init_from``. A folder that already holds one is reused."""
    from genevolve.evolve.sft import run_sft
    from genevolve.evolve.train_config import SFTFile

    final = folder / "sft" / "final"
    if final.is_dir():
        return final
    folder.mkdir(parents=True, exist_ok=True)
    swatch_config(folder, folder / "unused")  # tokenizer, library and rows
    rows = warm_start_rows(folder, folder / "library", seed=seed)
    run_sft(SFTFile.model_validate({"model": {"path": str(folder / "tok"), "from_config": MODEL}, "sft": {
        "data": [str(rows)], "out": str(folder / "sft"), "lr": 3e-3, "batch_size": 8, "grad_accum": 1,
        "epochs": epochs, "eval_frac": 0.1, "eval_every": 50, "save_every": 1000, "seed": seed}}), progress=False)
    return final
