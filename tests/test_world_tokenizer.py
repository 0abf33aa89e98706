"""The world tokenizer: fitted on the SFT and RL splits, base specials and template kept, exact masks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

transformers = pytest.importorskip("transformers")

from genevolve.evolve.tokens import ChatEncoder  # noqa: E402
from genevolve.registry import ConfigError  # noqa: E402
from genevolve.sft_rows import trajectory_from_sft_row  # noqa: E402
from genevolve.world.build import build_world  # noqa: E402
from genevolve.world.tokenizer import INFO_FILE, world_tokenizer  # noqa: E402
from tests.test_evolve_tokens import check_view  # noqa: E402
from tests.test_policy_hf import make_tokenizer  # noqa: E402

VOCAB = 700


@pytest.fixture(scope="module")
def fitted(tmp_path_factory) -> tuple[Path, Path, object]:
    root = tmp_path_factory.mktemp("wtok")
    world = root / "world"
    build_world(world, seed=5, sizes={"bench": 8, "rl": 8, "sft": 12}, wiki=False)
    base = root / "base"
    make_tokenizer().save_pretrained(base)
    folder = world_tokenizer(world, vocab_size=VOCAB, base=str(base))
    return world, base, transformers.AutoTokenizer.from_pretrained(folder)


def test_keeps_the_base_specials_and_template_at_the_asked_size(fitted):
    world, base, tok = fitted
    base_tok = transformers.AutoTokenizer.from_pretrained(base)
    assert len(tok) == VOCAB
    assert tok.chat_template == base_tok.chat_template
    assert (tok.eos_token, tok.pad_token) == (base_tok.eos_token, base_tok.pad_token)
    assert set(base_tok.all_special_tokens) <= set(tok.all_special_tokens)
    for special in base_tok.all_special_tokens:  # each stays one token
        assert len(tok(special, add_special_tokens=False)["input_ids"]) == 1
    info = json.loads((world / "tokenizer" / INFO_FILE).read_text())
    assert info["vocab_size"] == VOCAB and "bench.jsonl" not in info["fitted_on"]


def test_world_text_takes_fewer_tokens_than_with_the_base(fitted):
    world, base, tok = fitted
    base_tok = transformers.AutoTokenizer.from_pretrained(base)
    row = json.loads((world / "sft.jsonl").read_text().splitlines()[0])
    text = base_tok.apply_chat_template(row["messages"], tokenize=False)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text
    assert len(ids) < 0.6 * len(base_tok(text, add_special_tokens=False)["input_ids"])


def test_masks_cover_exactly_the_expert_turns(fitted):
    world, _, tok = fitted
    enc = ChatEncoder(tok)
    for line in (world / "sft.jsonl").read_text().splitlines()[:4]:
        check_view(enc, trajectory_from_sft_row(json.loads(line)).turns)


@given(st.text(max_size=80))
def test_any_text_round_trips(fitted, text):
    _, _, tok = fitted
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text


def test_the_same_world_gives_the_same_vocabulary(fitted, tmp_path):
    world, base, _ = fitted
    again = world_tokenizer(world, tmp_path / "again", vocab_size=VOCAB, base=str(base))
    first = json.loads((world / "tokenizer" / "tokenizer.json").read_text())
    assert json.loads((again / "tokenizer.json").read_text())["model"] == first["model"]


def test_clear_errors(fitted, tmp_path):
    world, base, _ = fitted
    with pytest.raises(ConfigError, match="build the world"):
        world_tokenizer(tmp_path, vocab_size=VOCAB, base=str(base))
    with pytest.raises(ConfigError, match="smaller than"):
        world_tokenizer(world, tmp_path / "t", vocab_size=100, base=str(base))
    with pytest.raises(ConfigError, match="base tokenizer"):
        world_tokenizer(world, tmp_path / "t", vocab_size=VOCAB, base=str(tmp_path / "none"))
