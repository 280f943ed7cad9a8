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


def test_precision_is_chosen_when_loading(untrained_model: Path) -> None:
    """fp32 on a CPU unless asked; bf16 on request, with fp32 scores; a call cannot change it."""
    default = Translator.load(untrained_model, device="cpu")
    assert default.model.tgt_embed.tokens.weight.dtype == torch.float32
    assert default.settings().precision == "fp32"
    half = Translator.load(untrained_model, device="cpu", precision="bf16")
    assert all(p.dtype == torch.bfloat16 for p in half.model.parameters())
    (text, score), = half.translate_nbest(["ka lu mi"], nbest=1, beam=2)[0]
    assert isinstance(score, float)
    with pytest.raises(ConfigError, match="loaded in bf16"):
        half.translate(["ka"], precision="fp32")
    with pytest.raises(ConfigError, match="auto, fp32 or bf16, got 'fp16'"):
        Translator.load(untrained_model, device="cpu", precision="fp16")
    with pytest.raises(ConfigError, match="use --precision fp32"):
        Translator.load(untrained_model, device="cpu", quantize="int8", precision="bf16")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_decodes_in_bf16_by_default(untrained_model: Path) -> None:
    translator = Translator.load(untrained_model, device="cuda")
    assert translator.model.tgt_embed.tokens.weight.dtype == torch.bfloat16
    full = Translator.load(untrained_model, device="cuda", precision="fp32")
    assert full.model.tgt_embed.tokens.weight.dtype == torch.float32
    lines = ["ka lu mi", "ze bo", ""]
    assert [len(h) for h in translator.translate_nbest(lines, nbest=2, beam=2)] == [2, 2, 1]


@pytest.mark.parametrize("precision, amx, expected", [("auto", True, "bf16"), ("auto", False, "fp32"),
                                                      ("fp32", True, "fp32"), ("bf16", False, "bf16")])
def test_validation_decodes_in_the_training_precision(untrained_model: Path, monkeypatch: pytest.MonkeyPatch,
                                                      precision: str, amx: bool, expected: str) -> None:
    from nmt import pipeline
    from nmt.config import merge

    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    translator = Translator.load(untrained_model, device="cpu")
    chosen: list[str] = []
    copy = pipeline.decoding_model
    monkeypatch.setattr(pipeline, "decoding_model", lambda model, p, device: chosen.append(p) or copy(model, p, device))
    config = merge({"train": {"precision": precision}}, translator.config)
    valid_bleu = pipeline._validation_bleu(config, translator.tokenizer, torch.device("cpu"), ["ka lu"], ["Baum Haus"])
    assert isinstance(valid_bleu(translator.model), float) and chosen == [expected]


def test_validation_bleu_bounded_by_time(untrained_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """train.valid_bleu_seconds: the first validation decodes chunks until the time is spent, later ones
    the same sentences; without it, every sentence."""
    from nmt import pipeline
    from nmt.config import merge

    translator = Translator.load(untrained_model, device="cpu")
    decoded: list[int] = []
    translate = pipeline.translate_texts

    def counting(model, tokenizer, lines, *args, **kwargs):
        decoded.append(len(lines))
        return translate(model, tokenizer, lines, *args, **kwargs)
    monkeypatch.setattr(pipeline, "translate_texts", counting)
    monkeypatch.setattr(pipeline, "VALID_CHUNK", 3)
    src = ["ka lu", "mi no pe", "ri su", "to va ze", "bo di", "ka ka", "lu lu"]
    bounded = merge({"train": {"valid_bleu_seconds": 1e-9}}, translator.config)
    valid_bleu = pipeline._validation_bleu(bounded, translator.tokenizer, torch.device("cpu"), src, src)
    assert isinstance(valid_bleu(translator.model), float) and decoded == [3]
    valid_bleu(translator.model)
    assert decoded == [3, 3]
    unbounded = pipeline._validation_bleu(translator.config, translator.tokenizer, torch.device("cpu"), src, src)
    unbounded(translator.model)
    assert decoded == [3, 3, 7]
