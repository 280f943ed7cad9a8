"""One model, several directions: data.pairs, target tags, temperature sampling, per-direction validation,
evaluation of every direction, serving two directions in one batch, exact resume."""

from __future__ import annotations

import json
import math
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from conftest import TINY, toy_pairs, toy_translate, toy_translate_zz, write_multiway, write_pair
from nmt import Translator
from nmt.config import load_config
from nmt.data import Preparation
from nmt.data.multilingual import temperature_shares, temperature_weights
from nmt.errors import ConfigError, DataError
from test_cli import assert_error, invoke

MULTI = [*TINY, "data.pairs=xx-yy,xx-zz", "tokenizer.language_tags=target_in_source", "tokenizer.vocab_size=96"]


@pytest.fixture(scope="module")
def multiway(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("multiway")
    for name, n, seed in (("train", 2000, 1), ("valid", 40, 2), ("test", 40, 3)):
        write_multiway(root / name, n, seed)
    return root


@pytest.fixture(scope="module")
def model(multiway: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from nmt.pipeline import train

    run_dir = tmp_path_factory.mktemp("multi") / "run"
    config = load_config(None, [*MULTI, f"data.train={multiway / 'train'}", f"data.valid={multiway / 'valid'}",
                                "train.max_steps=700", "train.valid_every=350", "train.save_every=350"])
    train(config, run_dir)
    return run_dir


def test_one_model_translates_into_the_language_asked_for(model: Path, multiway: Path) -> None:
    translator = Translator.load(model, device="cpu")
    src = (multiway / "test.xx").read_text().splitlines()[:20]
    into_yy = translator.translate(src, tgt_lang="yy")
    into_zz = translator.translate(src, tgt_lang="zz")
    assert sum(h == toy_translate(s) for s, h in zip(src, into_yy)) >= 17, into_yy
    assert sum(h == toy_translate_zz(s) for s, h in zip(src, into_zz)) >= 17, into_zz
    assert not any(">>" in h for h in into_yy + into_zz)  # the tag is never an output
    assert translator.tokenizer.languages() == ["yy", "zz"]
    with pytest.raises(DataError, match="'qq'.*yy, zz"):
        translator.translate(src, tgt_lang="qq")
    with pytest.raises(DataError, match="no target language given.*xx-yy, xx-zz"):
        translator.translate(src)


def test_validation_per_direction_and_their_mean(model: Path) -> None:
    records = [json.loads(line) for line in (model / "metrics.jsonl").read_text().splitlines()]
    valid = [r for r in records if "valid_sets" in r]
    assert valid and set(valid[-1]["valid_sets"]) == {"xx-yy", "xx-zz"}
    sets = valid[-1]["valid_sets"]
    assert math.isclose(valid[-1]["valid_bleu"], (sets["xx-yy"]["bleu"] + sets["xx-zz"]["bleu"]) / 2)
    assert "pairs: [xx-yy, xx-zz]" in (model / "config.yaml").read_text()


def test_the_cli_translates_and_scores_every_direction(model: Path, multiway: Path, tmp_path: Path) -> None:
    result = invoke("translate", "--model", model, "--tgt-lang", "zz", "--beam", "1", input="ka lu mi\n")
    assert result.exit_code == 0, result.output
    assert result.stdout == toy_translate_zz("ka lu mi") + "\n"
    assert_error(invoke("translate", "--model", model, "--tgt-lang", "qq", input="ka\n"), "'qq'", "yy, zz")
    assert_error(invoke("translate", "--model", model, input="ka\n"), "no target language given")
    scored = invoke("eval", "--model", model, "--test", multiway / "test", "--output-dir", tmp_path, "--json")
    assert scored.exit_code == 0, scored.output
    table = json.loads(scored.stdout)
    rows = table["directions"]  # the trained directions, and zero-shot between their languages into a tagged one
    assert {pair: row["trained"] for pair, row in rows.items()} == {"xx-yy": True, "xx-zz": True, "yy-zz": False,
                                                                   "zz-yy": False}
    assert rows["xx-yy"]["bleu"] > 60 and rows["xx-zz"]["bleu"] > 60, table
    assert table["mean_bleu_trained"] == round((rows["xx-yy"]["bleu"] + rows["xx-zz"]["bleu"]) / 2, 2)
    assert (tmp_path / "test.xx-zz.hyp.zz").read_text().splitlines()[0] == \
        toy_translate_zz((multiway / "test.xx").read_text().splitlines()[0])
    only = invoke("eval", "--model", model, "--test", multiway / "test", "--directions", "xx-zz", "--json")
    assert only.exit_code == 0 and list(json.loads(only.stdout)["directions"]) == ["xx-zz"]
    assert_error(invoke("eval", "--model", model, "--test", multiway / "test", "--directions", "xx-qq"), "test.qq")
    text = invoke("eval", "--model", model, "--test", multiway / "test")
    assert text.exit_code == 0 and "mean BLEU, trained" in text.stdout and "xx-zz" in text.stdout


def test_temperature_shares_follow_the_formula() -> None:
    shares = temperature_shares([8000, 2000], 5.0)
    assert np.allclose(shares, np.array([0.8, 0.2]) ** 0.2 / (0.8 ** 0.2 + 0.2 ** 0.2))
    assert np.allclose(temperature_shares([8000, 2000], 1.0), [0.8, 0.2])
    assert np.allclose(temperature_shares([8000, 2000], math.inf), [0.5, 0.5])
    assert np.allclose(temperature_weights([8000, 2000], 1.0), [1.0, 1.0])


def test_each_directions_share_of_many_batches_matches_the_temperature(tmp_path: Path) -> None:
    for tgt, n in (("yy", 2000), ("zz", 250)):  # two directions of unequal size, through {tgt} in the path
        src, yy = toy_pairs(n, seed=5 if tgt == "yy" else 6)
        write_pair(tmp_path / tgt / "train", src, yy if tgt == "yy" else [toy_translate_zz(s) for s in src], "xx", tgt)
    config = load_config(None, [*MULTI, f"data.train={tmp_path / '{tgt}' / 'train'}", "data.temperature=5",
                                "data.dedup=false"])
    from nmt.tokenizer import prepare_tokenizer, tag_piece

    with Preparation(config.data, 1, quiet=True) as preparation:
        src, tgt = preparation.sample(10_000, 1, True)
        tokenizer = prepare_tokenizer(config.tokenizer, tmp_path / "tok", src, tgt, symbols=[tag_piece("yy"), tag_piece("zz")])
        data = preparation.finish(tokenizer)
    sizes = np.array(data.sizes, dtype=float)
    expected = temperature_shares(sizes, 5.0)
    seen = np.zeros(2)
    for epoch in range(20):
        batches = data.epoch(1200, seed=1, epoch=epoch)
        rows = np.concatenate([batches[i] for i in range(len(batches))])
        seen += np.bincount(np.searchsorted(data.first_rows, rows, side="right") - 1, minlength=2)
    assert np.allclose(seen / seen.sum(), expected, atol=0.01), (seen / seen.sum(), expected)
    assert abs(seen.sum() / 20 - sizes.sum()) <= 2  # an epoch keeps its size
    zz_src = data.pair(int(data.first_rows[1]))[0]  # the small direction's sources start with its tag
    assert zz_src[0] == tokenizer.src.piece_to_id(">>zz<<")


def test_bad_multilingual_configs_are_refused() -> None:
    with pytest.raises(ConfigError, match="target_in_source"):
        load_config(None, ["data.pairs=en-de,de-en"])
    with pytest.raises(ConfigError, match="SRC-TGT"):
        load_config(None, ["data.pairs=en-en", "tokenizer.language_tags=target_in_source"])
    with pytest.raises(ConfigError, match="named twice"):
        load_config(None, ["data.pairs=en-de,en-de", "tokenizer.language_tags=target_in_source"])
    with pytest.raises(ConfigError, match="data.temperature"):
        load_config(None, ["data.temperature=0"])
    assert math.isinf(load_config(None, ["data.temperature=inf"]).data.temperature)


def test_the_server_answers_two_directions_in_one_batch(model: Path) -> None:
    pytest.importorskip("uvicorn")
    from test_serve import Server

    from nmt.serve import load_pairs

    pairs = load_pairs([model], device="cpu")
    assert sorted((p.source, p.target) for p in pairs) == [("xx", "yy"), ("xx", "zz")]
    translator = pairs[0].loop.translator
    seen: list[set] = []
    mixed = translator.translate_mixed
    lock = threading.Lock()

    def recording(lines, languages, *args, **kwargs):
        with lock:
            seen.append(set(languages))
        return mixed(lines, languages, *args, **kwargs)

    translator.translate_mixed = recording
    server = Server([], pairs=pairs)
    try:
        lines = toy_pairs(24, seed=9)[0]
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda i: server.request("POST", "/translate", {
                "q": lines[i], "source": "xx", "target": "yy" if i % 2 else "zz"}), range(len(lines))))
        offline = Translator.load(model, device="cpu")
        for i, (status, answer) in enumerate(answers):
            assert status == 200, answer
            assert answer["translatedText"] == offline.translate([lines[i]], tgt_lang="yy" if i % 2 else "zz")[0]
        assert any(len(languages) == 2 for languages in seen), seen  # both directions in one search
        status, languages = server.request("GET", "/languages")
        assert status == 200 and {row["code"]: row["targets"] for row in languages}["xx"] == ["yy", "zz"]
    finally:
        server.stop()


def test_sigkill_and_resume_of_a_multilingual_run_gives_the_uninterrupted_result(tmp_path: Path) -> None:
    import os
    import subprocess

    from test_reliability import final_weights, kill_and_resume, train_command

    for tgt, n in (("yy", 1500), ("zz", 300)):  # unequal: temperature weights with fractional parts, drawn anew each epoch
        src, yy = toy_pairs(n, seed=3 if tgt == "yy" else 4)
        write_pair(tmp_path / "corpus" / tgt / "train", src, yy if tgt == "yy" else [toy_translate_zz(s) for s in src],
                   "xx", tgt)
    extra = [*MULTI[len(TINY):], f"data.train={tmp_path / 'corpus' / '{tgt}' / 'train'}", "data.temperature=5"]
    straight = tmp_path / "straight"
    subprocess.run(train_command(straight, tmp_path / "corpus", extra=extra),
                   env={**os.environ, "NMT_CACHE": str(straight / "cache")}, check=True, capture_output=True, timeout=300)
    kill_and_resume(tmp_path / "corpus", tmp_path, final_weights(straight), extra)


@pytest.fixture(scope="module")
def postnorm(multiway: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A post-norm multilingual model (exportable), trained briefly: sure enough of its outputs to compare."""
    from nmt.pipeline import train

    run_dir = tmp_path_factory.mktemp("multi-postnorm") / "run"
    config = load_config(None, [*MULTI, f"data.train={multiway / 'train'}", "model.norm_first=false",
                                "model.max_positions=300", "train.max_steps=300", "train.save_every=300"])
    train(config, run_dir)
    return run_dir


def test_hugging_face_export_reads_the_target_tag_as_opus_mt_does(postnorm: Path, tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    import torch

    from nmt.export import export_hf

    out = export_hf(postnorm, tmp_path / "hf")
    tokenizer = transformers.MarianTokenizer.from_pretrained(str(out))
    model = transformers.MarianMTModel.from_pretrained(str(out)).eval()
    ours = Translator.load(postnorm, device="cpu")
    lines = ["ka lu mi", "ze bo di"]
    for tgt in ("yy", "zz"):
        batch = tokenizer([f">>{tgt}<< {line}" for line in lines], return_tensors="pt", padding=True)
        assert batch["input_ids"][0, 0].item() == tokenizer.convert_tokens_to_ids(f">>{tgt}<<")
        with torch.no_grad():
            generated = model.generate(**batch, num_beams=1, do_sample=False, max_new_tokens=20)
        theirs = tokenizer.batch_decode(generated, skip_special_tokens=True)
        assert theirs == ours.translate(lines, beam=1, tgt_lang=tgt)


def test_argos_packages_one_direction_with_the_tag_as_the_source_bos(postnorm: Path, tmp_path: Path) -> None:
    ctranslate2 = pytest.importorskip("ctranslate2")
    import zipfile

    from nmt.export import export_argos

    with pytest.raises(Exception, match="give --src-lang and --tgt-lang"):
        export_argos(postnorm, tmp_path / "all.argosmodel")
    package = export_argos(postnorm, tmp_path / "xx_zz.argosmodel", src_lang="xx", tgt_lang="zz")
    with zipfile.ZipFile(package) as archive:
        archive.extractall(tmp_path / "unpacked")
    root = tmp_path / "unpacked" / "translate-xx_zz-1_0"
    metadata = json.loads((root / "metadata.json").read_text())
    assert (metadata["from_code"], metadata["to_code"]) == ("xx", "zz")
    assert json.loads((root / "model" / "config.json").read_text())["bos_token"] == ">>zz<<"
    # As Argos hands CTranslate2 a sentence: its pieces alone; the package's config adds the tag and EOS.
    ours = Translator.load(postnorm, device="cpu")
    engine = ctranslate2.Translator(str(root / "model"), device="cpu")
    lines = ["ka lu mi", "ze bo di no"]
    pieces = [ours.tokenizer.src.encode(line, out_type=str) for line in lines]
    found = [ours.tokenizer.src.decode(r.hypotheses[0]) for r in engine.translate_batch(pieces, beam_size=1)]
    assert found == ours.translate(lines, beam=1, tgt_lang="zz")


def test_the_tokenizer_sample_gives_each_language_its_share_by_temperature() -> None:
    from nmt.data.multilingual import LanguageSamples

    def sample(small_size: int) -> dict[str, int]:
        samples = LanguageSamples(size=3000, seed=1, temperature=5.0)
        samples.offer([f"big sentence {i}" for i in range(20_000)], "aa")
        samples.offer([f"small sentence {i}" for i in range(small_size)], "bb")
        sentences, others = samples.sentences()
        assert others == [] and len(set(sentences)) == len(sentences) == 3000
        return {lang: sum(s.startswith(word) for s in sentences) for lang, word in (("aa", "big"), ("bb", "small"))}

    counts = sample(2_000)
    share = temperature_shares([20_000, 2_000], 5.0)[1]
    assert counts["bb"] == round(3000 * share) and counts["bb"] > 3000 * 2_000 / 22_000 * 3, counts
    assert sample(1_000) == {"aa": 2000, "bb": 1000}  # fewer than its share: all of it, the rest to the other
