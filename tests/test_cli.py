"""The command line end to end on the toy pair, and every bad input giving one line and exit 1."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import TINY, toy_pairs, toy_translate, write_pair
from nmt_cli.main import app

runner = CliRunner()


def invoke(*args: str, input: str | None = None):
    return runner.invoke(app, [str(a) for a in args], input=input)


def sets(*overrides: str) -> list[str]:
    return [item for o in overrides for item in ("--set", o)]


@pytest.fixture(scope="session")
def trained(toy_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny model trained through the CLI, shared by the tests below."""
    run_dir = tmp_path_factory.mktemp("run")
    result = invoke("train", "--run-dir", run_dir, *sets(*TINY, f"data.train={toy_corpus / 'train'}",
                                                         f"data.valid={toy_corpus / 'valid'}", "train.max_steps=700"))
    assert result.exit_code == 0, result.output
    return run_dir


def test_train_writes_a_complete_run(trained: Path) -> None:
    assert (trained / "config.yaml").is_file() and (trained / "spm.model").is_file()
    assert (trained / "checkpoints" / "best").is_file() and (trained / "checkpoints" / "latest").is_file()
    records = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    assert any("valid_bleu" in r for r in records)
    losses = [r["loss"] for r in records if "loss" in r]
    assert losses[-1] < losses[0] / 4


def test_config_command_and_the_run_dirs_commented_config(trained: Path) -> None:
    shown = invoke("config", "--set", "train.lr=5e-4")
    assert shown.exit_code == 0 and "  lr: 0.0005  # peak learning rate" in shown.stdout
    assert_error(invoke("config", "--set", "train.lrr=1"), "did you mean 'lr'")
    stored = (trained / "config.yaml").read_text()
    assert stored.startswith("# nmt config: the resolved config of this run") and "  vocab_size: 64  # " in stored


def test_tiny_model_learns_the_toy_task(trained: Path, toy_corpus: Path) -> None:
    result = invoke("eval", "--model", trained, "--src", toy_corpus / "test.xx", "--ref", toy_corpus / "test.yy", "--json")
    assert result.exit_code == 0, result.output
    scores = json.loads(result.stdout)
    assert scores["bleu"] > 75, scores
    assert scores["bleu_signature"].startswith("nrefs:1|case:mixed") and "chrf" in scores and "ter" in scores


def test_translate_stdin_keeps_lines_and_empties(trained: Path) -> None:
    lines = ["ka lu mi", "", "   ", "ze bo"]
    result = invoke("translate", "--model", trained, "--beam", "1", input="\n".join(lines) + "\n")
    assert result.exit_code == 0, result.output
    out = result.stdout.split("\n")[:-1]
    assert len(out) == 4 and out[1] == "" and out[2] == ""
    assert out[0] == toy_translate("ka lu mi")


def test_translate_nbest(trained: Path) -> None:
    result = invoke("translate", "--model", trained, "--beam", "4", "--nbest", "3", input="ka lu\nze\n")
    assert result.exit_code == 0, result.output
    rows = [line.split(" ||| ") for line in result.stdout.splitlines()]
    assert [r[0] for r in rows] == ["0", "0", "0", "1", "1", "1"]
    scores = [float(r[2]) for r in rows[:3]]
    assert scores == sorted(scores, reverse=True) and rows[0][1] == toy_translate("ka lu")
    assert_error(invoke("translate", "--model", trained, "--beam", "2", "--nbest", "3", input="ka\n"), "--nbest")


def test_translate_files_and_eval_hyp(trained: Path, toy_corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "hyp.yy"
    result = invoke("translate", "--model", trained, "--input", toy_corpus / "test.xx", "--output", out, "--beam", "3")
    assert result.exit_code == 0, result.output
    assert len(out.read_text().splitlines()) == len((toy_corpus / "test.xx").read_text().splitlines())
    forked = tmp_path / "forked.yy"
    result = invoke("translate", "--model", trained, "--input", toy_corpus / "test.xx", "--output", forked, "--beam", "3",
                    "--workers", "2", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert forked.read_text() == out.read_text()
    text = invoke("eval", "--hyp", out, "--ref", toy_corpus / "test.yy")
    assert text.exit_code == 0 and "BLEU" in text.stdout and "chrF2" in text.stdout
    twice = invoke("eval", "--hyp", out, "--ref", toy_corpus / "test.yy", "--ref", toy_corpus / "test.yy", "--json")
    assert twice.exit_code == 0 and json.loads(twice.stdout)["bleu_signature"].startswith("nrefs:2|")


def test_eval_intervals_and_baseline(trained: Path, toy_corpus: Path, tmp_path: Path) -> None:
    ref = toy_corpus / "test.yy"
    sure = invoke("eval", "--hyp", ref, "--ref", ref, "--bootstrap", "100", "--json")
    assert sure.exit_code == 0, sure.output
    assert json.loads(sure.stdout)["bleu_ci"] == 0.0 and "|bs:100|" in json.loads(sure.stdout)["bleu_signature"]
    empty = tmp_path / "empty.yy"
    empty.write_text("\n" * len(ref.read_text().splitlines()))
    text = invoke("eval", "--model", trained, "--src", toy_corpus / "test.xx", "--ref", ref, "--baseline", empty)
    assert text.exit_code == 0, text.output
    assert "baseline   0.00" in text.stdout and "p = " in text.stdout  # every line empty against the model's
    out = tmp_path / "never.yy"
    assert_error(invoke("eval", "--model", trained, "--src", toy_corpus / "test.xx", "--ref", ref, "--output", out,
                        "--baseline", toy_corpus / "train.yy"), "must be line-aligned")
    assert not out.exists()  # refused before translating
    assert_error(invoke("eval", "--hyp", ref, "--ref", ref, "--bootstrap", "-1"), "--bootstrap must be >= 0")


def test_decode_settings_on_the_command_line(trained: Path, toy_corpus: Path) -> None:
    # An output limit of one token (EOS) leaves every translation empty.
    result = invoke("translate", "--model", trained, "--set", "decode.max_len_a=0", "--set", "decode.max_len_b=1",
                    input="ka lu mi\nze bo\n")
    assert result.exit_code == 0, result.output
    assert result.stdout == "\n\n"
    scored = invoke("eval", "--model", trained, "--src", toy_corpus / "test.xx", "--ref", toy_corpus / "test.yy",
                    "--set", "decode.length_penalty=0.5", "--json")
    assert scored.exit_code == 0, scored.output
    assert json.loads(scored.stdout)["length_penalty"] == 0.5
    assert_error(invoke("translate", "--model", trained, "--set", "decode.lenght_penalty=1", input="ka\n"),
                 "did you mean 'length_penalty'")
    assert_error(invoke("translate", "--model", trained, "--set", "train.lr=1", input="ka\n"), "only decode.*")
    assert_error(invoke("eval", "--hyp", toy_corpus / "test.yy", "--ref", toy_corpus / "test.yy",
                        "--set", "decode.beam=2"), "not --hyp")


def test_train_resumes_an_existing_run(trained: Path, tmp_path: Path, toy_corpus: Path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(trained, run_dir)
    result = invoke("train", "--run-dir", run_dir, *sets(*TINY, f"data.train={toy_corpus / 'train'}", "train.max_steps=710"))
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.strip().splitlines()[-1])["step"] == 710
    again = invoke("train", "--run-dir", run_dir, *sets(*TINY, f"data.train={toy_corpus / 'train'}", "train.max_steps=710"))
    assert again.exit_code == 0 and "nothing to train: train.max_steps=710 already" in again.stderr


def assert_error(result, *fragments: str) -> None:
    assert result.exit_code == 1, result.output
    message = result.stderr.strip()
    assert message.startswith("error: ") and "\n" not in message and "Traceback" not in result.output, message
    for fragment in fragments:
        assert fragment in message, message


def test_bad_config_and_options(tmp_path: Path, toy_corpus: Path, trained: Path) -> None:
    assert_error(invoke("train", "--run-dir", tmp_path / "r", *sets("model.d_modle=3")), "model.d_modle", "d_model")
    assert_error(invoke("train", "--run-dir", tmp_path / "r", *sets("model.n_heads=7")), "n_heads (7)")
    assert_error(invoke("train", "--run-dir", tmp_path / "r", "--config", tmp_path / "none.yaml"), "none.yaml")
    assert_error(invoke("translate", "--model", trained, "--beam", "0", input="ka\n"), "--beam must be >= 1")
    assert_error(invoke("translate", "--model", trained, "--workers", "0", input="ka\n"), "--workers must be >= 1")
    assert_error(invoke("eval", "--hyp", toy_corpus / "test.yy"), "--ref")
    assert not (tmp_path / "r" / "checkpoints").exists()


def test_bad_corpora(tmp_path: Path) -> None:
    src, tgt = toy_pairs(30)
    train = lambda prefix: invoke("train", "--run-dir", tmp_path / "run", *sets(*TINY, f"data.train={prefix}"))  # noqa: E731
    assert_error(train(tmp_path / "missing"), "missing", "corpus not found")
    write_pair(tmp_path / "short", src, tgt[:-1])
    assert_error(train(tmp_path / "short"), "short.xx has 30 lines but", "short.yy has 29")
    write_pair(tmp_path / "bad", src, tgt)
    (tmp_path / "bad.yy").write_bytes((tmp_path / "bad.yy").read_bytes().replace(b"Haus", b"H\xe4us", 1))
    assert_error(train(tmp_path / "bad"), "bad.yy:", "invalid UTF-8")
    write_pair(tmp_path / "empty", ["", " "], ["x", ""])
    assert_error(train(tmp_path / "empty"), "no training pairs left after cleaning")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_missing_input_files(trained: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    assert_error(invoke("translate", "--model", trained, "--input", tmp_path / "nope.txt", "--output", out), "nope.txt", "not found")
    assert not out.exists()
    assert_error(invoke("translate", "--model", tmp_path, input="ka\n"), "config.yaml")
    assert_error(invoke("eval", "--hyp", tmp_path / "h", "--ref", tmp_path / "r"), "file not found")


def test_run_dir_that_does_not_match_its_tokenizer(trained: Path, tmp_path: Path, toy_corpus: Path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(trained, run_dir)
    other = tmp_path / "other"
    assert invoke("tokenizer", "train", "--corpus", toy_corpus / "train", "--src-lang", "xx", "--tgt-lang", "yy",
                  "--output", other, "--vocab-size", "40").exit_code == 0
    shutil.copy(other / "spm.model", run_dir / "spm.model")
    assert_error(invoke("translate", "--model", run_dir, input="ka\n"), "do not match")
    result = invoke("train", "--run-dir", run_dir, *sets(*TINY, f"data.train={toy_corpus / 'train'}", "model.d_model=32"))
    assert_error(result, "model.d_model=64", "new --run-dir")


def test_help_everywhere() -> None:
    import click
    import typer

    from nmt import __version__

    shown = invoke("--version")
    assert shown.exit_code == 0 and shown.stdout.startswith(f"nmt {__version__} (Python ") and "torch " in shown.stdout
    top = invoke("--help")
    assert top.exit_code == 0 and all(c in top.stdout for c in ("train", "translate", "eval", "tokenizer"))

    def walk(command: click.Command, path: list[str]):
        yield path, command
        for name, sub in getattr(command, "commands", {}).items():
            yield from walk(sub, path + [name])

    for path, command in walk(typer.main.get_command(app), []):
        assert command.help, f"nmt {' '.join(path)} has no help text"
        for param in command.params:
            if isinstance(param, click.Option) and param.name != "help":
                assert param.help, f"nmt {' '.join(path)} {param.opts[0]} has no help text"
        assert invoke(*path, "--help").exit_code == 0
    # Help text goes through Rich markup, where an unescaped "[export]" would vanish.
    assert "nmt[export]" in invoke("export", "--help").stdout


def test_more_bad_inputs(trained: Path, untrained_model: Path, tmp_path: Path, toy_corpus: Path) -> None:
    import torch

    if not torch.cuda.is_available():
        assert_error(invoke("translate", "--model", trained, "--device", "cuda", input="ka\n"), "no CUDA GPU", "--device cpu")
    assert_error(invoke("translate", "--model", trained, "--input", tmp_path), "is a directory")
    run_dir = tmp_path / "run"
    shutil.copytree(trained, run_dir)
    result = invoke("train", "--run-dir", run_dir, *sets(*TINY, f"data.train={toy_corpus / 'train'}", "train.lr=0.01"))
    assert_error(result, "train.lr=0.003", "new --run-dir")


def test_unwritable_outputs_fail_before_the_work(untrained_model: Path, tmp_path: Path) -> None:
    source = tmp_path / "in.txt"
    source.write_text("ka lu\n", encoding="utf-8")
    missing = tmp_path / "no" / "such" / "out.txt"
    for args in (("translate", "--model", untrained_model, "--input", source),
                 ("eval", "--model", untrained_model, "--src", source, "--ref", source),
                 ("attention", "--model", untrained_model, "--src", "ka lu", "--format", "json")):
        assert_error(invoke(*args, "--output", missing), f"directory {missing.parent} does not exist")
        assert_error(invoke(*args, "--output", tmp_path), "is a directory, expected a file name")
    assert not (tmp_path / "no").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["in.txt"]


def test_translate_from_a_terminal_answers_each_line(untrained_model: Path) -> None:
    import os
    import select
    import subprocess
    import sys

    leader, follower = os.openpty()  # stdin is a terminal, as for a person typing sentences
    process = subprocess.Popen([sys.executable, "-m", "nmt_cli.main", "translate", "--model", str(untrained_model)],
                               stdin=follower, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        os.write(leader, b"ka lu\n")
        # The translation comes while the input is still open: the line is answered, not held until Ctrl-D.
        ready, _, _ = select.select([process.stdout], [], [], 60)
        assert ready and process.poll() is None
        first = process.stdout.readline()
        os.write(leader, b"\x04")  # Ctrl-D
        rest, messages = process.communicate(timeout=120)
    finally:
        process.kill()
        os.close(follower)
        os.close(leader)
    assert process.returncode == 0, messages
    assert "Ctrl-D to end" in messages and first.endswith("\n") and rest == ""


def test_bom_crlf_and_long_lines(untrained_model: Path, tmp_path: Path) -> None:
    source = tmp_path / "in.txt"
    source.write_bytes("\ufeffka lu\r\n".encode() + ("ze " * 300 + "\r\n").encode() + b"mi\r\n")
    out = tmp_path / "out.txt"
    result = invoke("translate", "--model", untrained_model, "--input", source, "--output", out)
    assert result.exit_code == 0, result.output
    assert len(out.read_text(encoding="utf-8").split("\n")) == 4  # three lines and the final newline
    assert "1 sentence(s) longer than the model's 40 tokens were cut into 8 pieces" in result.stderr  # not truncated
    result = invoke("translate", "--model", untrained_model, "--input", source, "--split-sentences")  # to stdout
    assert result.exit_code == 0, result.output
    assert "1 sentence(s) longer than the model's 40 tokens were cut into 8 pieces" in result.stderr  # counted once


def test_nasty_unicode_through_the_cli(untrained_model: Path) -> None:
    lines = ["\u202eשלום עולם", "emoji 🙂🚀", "ctrl \x00\x07\x1b[31m", "\x0b\x0c\u2028\u2029\x85 split?", "", "ka"]
    result = invoke("translate", "--model", untrained_model, input="".join(l + "\n" for l in lines))
    assert result.exit_code == 0, result.output
    assert len(result.stdout.split("\n")) == len(lines) + 1


def test_average_command(trained: Path, tmp_path: Path, toy_corpus: Path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(trained, run_dir)
    result = invoke("average", "--model", run_dir, "--last", "3")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().endswith("average_last3")
    scores = json.loads(invoke("eval", "--model", run_dir, "--src", toy_corpus / "test.xx", "--ref", toy_corpus / "test.yy",
                               "--json").stdout)
    assert scores["bleu"] > 75
    assert_error(invoke("average", "--model", run_dir, "--last", "50"), "cannot average the last 50")
    assert_error(invoke("average", "--model", run_dir, "--last", "0"), "--last must be >= 1")


def test_average_chosen_on_validation(trained: Path, tmp_path: Path, toy_corpus: Path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(trained, run_dir)
    from nmt import Translator, checkpoint

    checkpoint.save_ema(run_dir, 1, Translator.load(run_dir, device="cpu").model)  # as train.ema_decay would
    valid = ["--valid-src", toy_corpus / "valid.xx", "--valid-ref", toy_corpus / "valid.yy"]
    result = invoke("average", "--model", run_dir, "--last", "2", "--last", "3", *valid)
    assert result.exit_code == 0, result.output
    found = json.loads(result.stdout)
    assert set(found["bleu"]) == {"none", "ema", "last2", "last3"}
    assert found["bleu"][found["chosen"]] == max(found["bleu"].values())
    pointer = run_dir / "checkpoints" / "average"
    assert pointer.is_file() == (found["chosen"] != "none")
    assert_error(invoke("average", "--model", run_dir, "--last", "2", "--last", "3"), "need --valid-src")
    assert_error(invoke("average", "--model", run_dir, "--valid-src", toy_corpus / "valid.xx"), "go together")


def test_pictures(trained: Path, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    curves = tmp_path / "curves.png"
    result = invoke("plot", trained, "--output", curves)
    assert result.exit_code == 0, result.output
    assert curves.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    raw = invoke("attention", "--model", trained, "--src", "ka lu mi", "--format", "json", "--beam", "1")
    assert raw.exit_code == 0, raw.output
    data = json.loads(raw.stdout)
    assert data["translation"] == toy_translate("ka lu mi")  # the greedy translation, as checked above
    assert len(data["layers"]) == 2 and len(data["layers"][0][0]) == len(data["target_pieces"])
    assert all(abs(sum(row) - 1) < 1e-4 for row in data["layers"][0][0])
    picture = tmp_path / "map.png"
    assert invoke("attention", "--model", trained, "--src", "ka lu mi", "--output", picture, "--layer", "2").exit_code == 0
    assert picture.read_bytes()[:4] == b"\x89PNG"
    assert_error(invoke("attention", "--model", trained, "--src", "ka", "--layer", "9", "--format", "json"), "--layer 9")
    # Decode settings apply to the translation shown: a limit of one token leaves only EOS.
    short = invoke("attention", "--model", trained, "--src", "ka lu mi", "--format", "json",
                   "--set", "decode.max_len_a=0", "--set", "decode.max_len_b=1")
    assert short.exit_code == 0, short.output
    assert json.loads(short.stdout)["translation"] == "" and json.loads(short.stdout)["target_pieces"] == ["</s>"]
    assert_error(invoke("attention", "--model", trained, "--src", "ka", "--format", "json", "--set", "train.lr=1"),
                 "only decode.*")
