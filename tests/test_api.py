"""The Python API: `from nmt import Translator`."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nmt import Translator
from nmt.errors import CheckpointError, ConfigError


def test_translator_api(untrained_model: Path) -> None:
    translator = Translator.load(untrained_model, device="cpu")
    out = translator.translate(["ka lu", "", "ze bo di"], beam=1)
    assert len(out) == 3 and out[1] == "" and all(isinstance(t, str) for t in out)
    assert translator.translate(["ka lu", "ze bo di"], beam=1) == [out[0], out[2]]
    nbest = translator.translate_nbest(["ka lu"], nbest=2, beam=2)
    assert len(nbest[0]) == 2 and nbest[0][0][1] >= nbest[0][1][1]
    with pytest.raises(ConfigError, match="decode.beam must be >= 1"):
        translator.translate(["ka"], beam=0)
    # Decode settings are converted and checked like a config's keys.
    assert translator.translate(["ka lu", "ze bo di"], beam=1, max_len_a="0", max_len_b="1") == ["", ""]
    with pytest.raises(ConfigError, match="did you mean 'length_penalty'"):
        translator.translate(["ka"], lenght_penalty=0.6)


def test_translator_load_errors(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="config.yaml"):
        Translator.load(tmp_path)


def test_bf16_translator(untrained_model: Path) -> None:
    half = Translator.load(untrained_model, device="cpu", quantize="bf16")
    assert all(p.dtype == torch.bfloat16 for p in half.model.parameters())
    lines = ["ka lu mi", "ze bo", ""]
    assert [len(h) for h in half.translate_nbest(lines, nbest=2, beam=2)] == [2, 2, 1]


def test_int8_quantized_translator(untrained_model: Path) -> None:
    import warnings

    full = Translator.load(untrained_model, device="cpu")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        small = Translator.load(untrained_model, device="cpu", quantize="int8")
        lines = ["ka lu mi", "ze bo"]
        out = small.translate(lines, beam=2)
    assert not [w for w in caught if "deprecated" in str(w.message)]  # torch's, not the user's to act on
    assert len(out) == 2 and all(isinstance(t, str) for t in out)
    assert sum(p.numel() for p in small.model.parameters()) < sum(p.numel() for p in full.model.parameters())
    with pytest.raises(ConfigError, match="int8 .on --device cpu. or bf16"):
        Translator.load(untrained_model, device="cpu", quantize="int4")
