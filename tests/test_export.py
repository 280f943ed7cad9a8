"""Export to Hugging Face MarianMT: the exported model, and CTranslate2's conversion of it, compute what ours does."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import TINY, toy_pairs
from nmt import Translator, checkpoint
from nmt.config import load_config, save_config
from nmt.search import greedy_search
from nmt.errors import NMTError
from nmt.translator import CONFIG_FILE, build_model
from nmt.tokenizer import EOS_ID, PAD_ID, prepare_tokenizer

transformers = pytest.importorskip("transformers")


def make_model_dir(root: Path, *overrides: str) -> Path:
    config = load_config(None, [*TINY, "model.max_positions=64", "data.max_tokens_per_side=60", *overrides])
    tokenizer = prepare_tokenizer(config.tokenizer, root, *toy_pairs(300, seed=5))
    save_config(config, root / CONFIG_FILE)
    torch.manual_seed(0)
    model = build_model(config, tokenizer)
    with torch.no_grad():  # non-zero biases and norms, so a mis-mapped tensor cannot hide
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.normal_(std=0.1).add_(1.0 if name.endswith("norm.weight") else 0.0)
    checkpoint.save_best(root, 0, model, {})
    return root


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from nmt.export import export_hf

    model_dir = make_model_dir(tmp_path_factory.mktemp("postnorm"), "model.norm_first=false", "model.activation=gelu")
    return model_dir, export_hf(model_dir, tmp_path_factory.mktemp("hf") / "out")


def batch(translator: Translator) -> tuple[torch.Tensor, torch.Tensor]:
    srcs = translator.tokenizer.encode_src(["ka lu mi", "ze", "bo di no pe ri su"])
    longest = max(len(s) for s in srcs) + 1
    src = torch.tensor([s + [EOS_ID] + [PAD_ID] * (longest - len(s) - 1) for s in srcs])
    tgt = torch.randint(4, translator.tokenizer.tgt_vocab_size, (3, 7), generator=torch.Generator().manual_seed(0))
    tgt[:, 0] = translator.model.start_id
    return src, tgt


def to_hf(ids: torch.Tensor, vocab_size: int) -> torch.Tensor:
    return (ids - 1) % vocab_size  # the exported order: padding last


def test_log_probs_match(exported: tuple[Path, Path]) -> None:
    model_dir, out = exported
    ours = Translator.load(model_dir, device="cpu")
    theirs = transformers.AutoModelForSeq2SeqLM.from_pretrained(out).eval()
    src, tgt = batch(ours)
    V = ours.tokenizer.tgt_vocab_size
    hf_src = to_hf(src, V)
    with torch.no_grad():
        expected = torch.log_softmax(ours.model(src, tgt), -1)
        found = torch.log_softmax(theirs(input_ids=hf_src, attention_mask=src != PAD_ID,
                                         decoder_input_ids=to_hf(tgt, V)).logits, -1)
    found = torch.roll(found, 1, dims=-1)  # back to nmt's vocabulary order
    assert torch.isinf(expected[..., PAD_ID]).all() and torch.isinf(found[..., PAD_ID]).all()
    assert (expected[..., 1:] - found[..., 1:]).abs().max().item() < 1e-4


def test_greedy_outputs_match(exported: tuple[Path, Path]) -> None:
    model_dir, out = exported
    ours = Translator.load(model_dir, device="cpu")
    theirs = transformers.AutoModelForSeq2SeqLM.from_pretrained(out).eval()
    src, _ = batch(ours)
    V, limit = ours.tokenizer.tgt_vocab_size, 12
    mine = [h[0].tokens for h in greedy_search(ours.model, src, torch.full((3,), limit))]
    generated = theirs.generate(input_ids=to_hf(src, V), attention_mask=src != PAD_ID, num_beams=1, do_sample=False,
                                max_new_tokens=limit, suppress_tokens=[int(to_hf(torch.tensor(2), V))])  # no BOS, as ours
    hf = [[(t + 1) % V for t in row[1:]] for row in generated.tolist()]  # EOS is forced at the limit, as ours
    assert [[t for t in row if t not in (PAD_ID, EOS_ID)] for row in hf] == mine


def test_ctranslate2_greedy_matches(exported: tuple[Path, Path], tmp_path: Path) -> None:
    ctranslate2 = pytest.importorskip("ctranslate2")
    from ctranslate2.converters import TransformersConverter

    model_dir, out = exported
    ours = Translator.load(model_dir, device="cpu")
    TransformersConverter(str(out)).convert(str(tmp_path / "ct2"))
    engine = ctranslate2.Translator(str(tmp_path / "ct2"), device="cpu")
    src, _ = batch(ours)
    mine = [h[0].tokens for h in greedy_search(ours.model, src, torch.full((3,), 12))]
    pieces = [[ours.tokenizer.src.id_to_piece(t) for t in row if t != PAD_ID] for row in src.tolist()]
    # Ours ends at 12 tokens with EOS counted, CTranslate2 at 11 without; neither may produce BOS.
    results = engine.translate_batch(pieces, beam_size=1, max_decoding_length=11, suppress_sequences=[["<s>"]])
    theirs = [[ours.tokenizer.tgt.piece_to_id(p) for p in r.hypotheses[0]] for r in results]
    assert theirs == mine


def test_ct2_export_cli(exported: tuple[Path, Path], tmp_path: Path) -> None:
    ctranslate2 = pytest.importorskip("ctranslate2")
    from typer.testing import CliRunner

    from nmt_cli.main import app

    model_dir, _ = exported
    out = tmp_path / "ct2"
    result = CliRunner().invoke(app, ["export", "--model", str(model_dir), "--format", "ct2", "--output", str(out),
                                      "--quantization", "int8"])
    assert result.exit_code == 0, result.output
    assert (out / "model.bin").is_file() and (out / "source.spm").is_file() and not (tmp_path / "ct2.tmp").exists()
    ours = Translator.load(model_dir, device="cpu")
    pieces = [ours.tokenizer.src.encode("ka lu mi", out_type=str) + ["</s>"]]
    assert ctranslate2.Translator(str(out), device="cpu").translate_batch(pieces, max_decoding_length=5)[0].hypotheses
    wrong = CliRunner().invoke(app, ["export", "--model", str(model_dir), "--format", "onnx", "--output", str(tmp_path / "x")])
    assert wrong.exit_code == 1 and "choose hf, ct2 or argos" in wrong.stderr


def test_tokenizer_files_load(exported: tuple[Path, Path]) -> None:
    _, out = exported
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    ids = tokenizer("ka lu mi")["input_ids"]
    assert ids[-1] == tokenizer.eos_token_id == EOS_ID - 1 and tokenizer.pad_token_id == tokenizer.vocab_size - 1
    assert tokenizer.decode(ids, skip_special_tokens=True) == "ka lu mi"


def test_export_cli(exported: tuple[Path, Path], tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from nmt_cli.main import app

    model_dir, _ = exported
    result = CliRunner().invoke(app, ["export", "--model", str(model_dir), "--output", str(tmp_path / "hf")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "hf" / "config.json").is_file() and (tmp_path / "hf" / "source.spm").is_file()
    again = CliRunner().invoke(app, ["export", "--model", str(model_dir), "--output", str(tmp_path / "hf")])
    assert again.exit_code == 1 and "not empty" in again.stderr
    a_file = tmp_path / "file"
    a_file.write_text("keep me")
    onto_file = CliRunner().invoke(app, ["export", "--model", str(model_dir), "--output", str(a_file)])
    assert onto_file.exit_code == 1 and "is a file" in onto_file.stderr and a_file.read_text() == "keep me"


def test_a_run_that_decodes_in_bf16_exports_its_fp32_weights(tmp_path: Path) -> None:
    """decode.precision=bf16 is how the run translates, not what it exports: the checkpoint's fp32
    weights go out (a bf16 copy on a CPU would also have packed layers and an extra output layer)."""
    from nmt.export import export_hf

    model_dir = make_model_dir(tmp_path / "run", "model.norm_first=false", "decode.precision=bf16")
    out = export_hf(model_dir, tmp_path / "out")
    theirs = transformers.AutoModelForSeq2SeqLM.from_pretrained(out).eval()
    ours = Translator.load(model_dir, device="cpu", precision="fp32")
    assert torch.equal(theirs.model.encoder.layers[0].fc1.weight, ours.model.encoder[0].ff.fc1.weight)


def test_pre_norm_is_refused(tmp_path: Path) -> None:
    from nmt.export import export_hf

    model_dir = make_model_dir(tmp_path / "prenorm")
    with pytest.raises(NMTError, match="pre-norm"):
        export_hf(model_dir, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# Run in a process of its own: argostranslate reads its settings (ARGOS_PACKAGES_DIR, the beam, the
# XDG directories it writes to) from the environment once, when it is imported. Everything of Argos
# runs but its sentence splitter: MiniSBD downloads its model at first use, which cannot happen
# offline, so each test text is one sentence (as nmt translates a line).
ARGOS_SCRIPT = """
import json, sys
from argostranslate import package, sbd, translate
sbd.MiniSBDSentencizer.split_sentences = lambda self, text: [text]
package.install_from_path(sys.argv[1])
installed = [(p.from_code, p.from_name, p.to_code, p.to_name) for p in package.get_installed_packages()]
print(json.dumps({"installed": installed, "out": [translate.translate(s, "xx", "yy") for s in sys.argv[2:]]}))
"""


def test_argos_package_installs_and_translates_as_ctranslate2(tmp_path: Path) -> None:
    pytest.importorskip("argostranslate")
    ctranslate2 = pytest.importorskip("ctranslate2")
    import json
    import os
    import subprocess
    import sys

    from nmt.export import export_argos, export_ct2

    # Room in the position table for CTranslate2's default output limit (256 tokens), which Argos keeps.
    model_dir = make_model_dir(tmp_path / "postnorm", "model.norm_first=false", "model.max_positions=300")
    package = export_argos(model_dir, tmp_path / "xx_yy.argosmodel")
    lines = ["ka lu mi", "ze", "bo di no pe ri su"]
    beam = 3
    env = {**os.environ, "ARGOS_PACKAGES_DIR": str(tmp_path / "argos" / "packages"), "ARGOS_BEAM_SIZE": str(beam),
           "ARGOS_DEVICE_TYPE": "cpu", "ARGOS_COMPUTE_TYPE": "float32",  # its default, auto, is int8 on most CPUs
           "HOME": str(tmp_path / "home"), **{
               f"XDG_{kind}_HOME": str(tmp_path / "argos" / kind.lower()) for kind in ("DATA", "CONFIG", "CACHE")}}
    done = subprocess.run([sys.executable, "-c", ARGOS_SCRIPT, str(package), *lines], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.splitlines()[-1])
    assert found["installed"] == [["xx", "xx", "yy", "yy"]]
    assert (tmp_path / "argos" / "packages" / "translate-xx_yy-1_0" / "model" / "model.bin").is_file()
    # CTranslate2 on the `--format ct2` export, with Argos' settings: its beam, length penalty 0.2,
    # EOS after the source pieces (which the package's config adds), the output's first space dropped.
    ours = Translator.load(model_dir, device="cpu")
    engine = ctranslate2.Translator(str(export_ct2(model_dir, tmp_path / "ct2")), device="cpu")
    pieces = [ours.tokenizer.src.encode(line, out_type=str) + ["</s>"] for line in lines]
    results = [engine.translate_batch([p], beam_size=beam, length_penalty=0.2, replace_unknowns=True)[0]
               for p in pieces]  # one at a time, as Argos translates a text
    expected = [ours.tokenizer.tgt.decode_pieces(r.hypotheses[0]).replace("▁", " ").lstrip(" ") for r in results]
    assert found["out"] == expected


def test_argos_refuses_what_ct2_refuses(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from nmt_cli.main import app

    model_dir = make_model_dir(tmp_path / "prenorm")
    out = tmp_path / "x.argosmodel"
    refused = CliRunner().invoke(app, ["export", "--model", str(model_dir), "--format", "argos", "--output", str(out)])
    assert refused.exit_code == 1 and "pre-norm" in refused.stderr and not out.exists()
    assert list(tmp_path.glob(".x.argosmodel*")) == []
    wrong = CliRunner().invoke(app, ["export", "--model", str(model_dir), "--format", "argos", "--output",
                                     str(tmp_path / "x.zip")])
    assert wrong.exit_code == 1 and ".argosmodel" in wrong.stderr
