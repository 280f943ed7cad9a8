"""The Multi30k recipe script end to end on a toy corpus (tiny model, a few updates)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import write_splits

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "multi30k.sh"


# No hub: nothing listens on the discard port of this machine, so every connection is refused at once.
OFFLINE_ENV = {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_OFFLINE": "", "HF_DATASETS_OFFLINE": "", "TRANSFORMERS_OFFLINE": ""}


def run_recipe(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    # The venv's bin first, so the script's `nmt` and `python` are this interpreter's.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", **(env or {})}
    return subprocess.run(["bash", str(RECIPE), *args], capture_output=True, text=True, env=env, timeout=600)


def test_recipe_end_to_end(tmp_path: Path) -> None:
    data = write_splits(tmp_path / "data", (600, 30, 30))
    run_dir = tmp_path / "run"
    result = run_recipe("--src", "xx", "--tgt", "yy", "--data-dir", str(data), "--run-dir", str(run_dir),
                        "--set", "model.preset=tiny", "--set", "tokenizer.vocab_size=64", "--set", "train.max_steps=40",
                        "--set", "train.save_every=10", "--set", "train.valid_every=20", "--set", "train.threads=1")
    assert result.returncode == 0, result.stderr[-2000:]
    line = json.loads(result.stdout.strip().splitlines()[-1])
    assert line["pair"] == "xx-yy" and line["profile"] == "cpu" and line["sentences"] == 30
    assert set(line["val_bleu"]) == {"none", "last4"}  # 4 checkpoints kept at most 40 / 10; last8 is skipped
    assert line["average"] in line["val_bleu"] and line["bleu_signature"].startswith("nrefs:1|bs:1000|seed:12345|case:mixed")
    assert line["bleu_ci"] >= 0 and line["chrf_ci"] >= 0  # 95% bootstrap intervals
    assert (run_dir / "test_2016_flickr.hyp.yy").is_file()


def test_multilingual_recipe_end_to_end(tmp_path: Path) -> None:
    from conftest import write_multiway

    data = tmp_path / "data"
    for name, n, seed in (("train", 600, 1), ("val", 20, 2), ("test_2016_flickr", 20, 3)):
        write_multiway(data / name, n, seed)
    run_dir = tmp_path / "run"
    result = run_recipe("--multilingual", "--data-dir", str(data), "--run-dir", str(run_dir),
                        "--set", "data.pairs=xx-yy,xx-zz", "--set", "model.preset=tiny", "--set", "tokenizer.vocab_size=80",
                        "--set", "train.max_steps=30", "--set", "train.save_every=10", "--set", "train.valid_every=15",
                        "--set", "train.threads=1")
    assert result.returncode == 0, result.stderr[-2000:]
    line = json.loads(result.stdout.strip().splitlines()[-1])
    assert line["profile"] == "multilingual" and set(line["directions"]) == {"xx-yy", "xx-zz", "yy-zz", "zz-yy"}
    assert [row["trained"] for row in line["directions"].values()] == [True, True, False, False]
    assert "mean_bleu_trained" in line and line["bleu_signature"].startswith("nrefs:1|case:mixed")
    assert (run_dir / "test_2016_flickr" / "test_2016_flickr.xx-zz.hyp.zz").is_file()


def test_recipe_refuses_bad_arguments(tmp_path: Path) -> None:
    bad = run_recipe("--src", "en", "--tgt", "xx", "--run-dir", str(tmp_path / "r"))
    assert bad.returncode == 2 and "Multi30k has en, de, fr and cs, not xx" in bad.stderr
    bad = run_recipe("--hub", "--src", "en", "--tgt", "fr", "--run-dir", str(tmp_path / "r"))
    assert bad.returncode == 2 and "the hub copy of Multi30k has en and de only" in bad.stderr
    bad = run_recipe("--hub", "--data-dir", str(tmp_path), "--run-dir", str(tmp_path / "r"))
    assert bad.returncode == 2 and "give --data-dir or --hub, not both" in bad.stderr
    bad = run_recipe("--profile", "tpu", "--data-dir", str(tmp_path), "--run-dir", str(tmp_path / "r"))
    assert bad.returncode == 2 and "--profile must be quick, cpu or gpu" in bad.stderr
    assert not (tmp_path / "r").exists()


def test_recipe_hub_option_without_network_is_one_line(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = run_recipe("--hub", "--run-dir", str(run_dir), env=OFFLINE_ENV)
    assert result.returncode == 1, result.stderr[-2000:]
    message = result.stderr.strip()
    assert message.startswith("error: hub:bentrevett/multi30k: cannot reach the Hugging Face hub at http://127.0.0.1:9")
    assert "\n" not in message and "drop --hub to use the copy of Multi30k shipped in recipes/data/multi30k" in message
    assert not (run_dir / "checkpoints").exists() and not (run_dir / "data").exists()


def test_profiles_load_and_the_readme_quickstart_runs_the_quick_one() -> None:
    from nmt.config import load_config

    recipes = RECIPE.parent
    for profile in ("quick", "cpu", "gpu", "multilingual"):
        load_config(recipes / f"multi30k-{profile}.yaml", [])  # unknown keys or bad values would raise
    readme = (recipes.parent / "README.md").read_text(encoding="utf-8")
    quickstart = readme[readme.index("## Quickstart"):readme.index("\n## ", readme.index("## Quickstart") + 1)]
    commands = [line for line in quickstart.splitlines() if line.startswith("recipes/multi30k.sh ")]
    assert commands and "--profile quick" in commands[0] and "--data-dir" not in commands[0] and "--hub" not in commands[0]


def test_finetune_recipe_end_to_end(tmp_path: Path) -> None:
    """recipes/finetune.sh from a Hugging Face directory (a tiny nmt model exported), on toy data standing in for
    the software strings and for Multi30k: import, score, fine-tune, score again, one JSON line."""
    import pytest

    pytest.importorskip("transformers")
    from test_export import make_model_dir

    from nmt.export import export_hf

    source = export_hf(make_model_dir(tmp_path / "start", "model.norm_first=false"), tmp_path / "hf")
    data = write_splits(tmp_path / "data", (300, 20, 20))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "NMT_CACHE": str(tmp_path / "cache")}
    result = subprocess.run(
        ["bash", str(RECIPE.parent / "finetune.sh"), "--from", str(source), "--run-dir", str(tmp_path / "run"),
         "--src", "xx", "--tgt", "yy", "--domain-dir", str(data), "--general-dir", str(data),
         *[x for s in ("train.max_steps=6", "train.valid_every=3", "train.save_every=3", "train.threads=1",
                       "train.max_minutes=0", "data.max_tokens_per_side=60", "train.valid_bleu_sentences=10",
                       "train.warmup_steps=2") for x in ("--set", s)]],
        capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    line = json.loads(result.stdout.strip().splitlines()[-1])
    assert line["pair"] == "xx-yy" and line["steps"] == 6 and line["from"] == str(source)
    for key in ("software_val_bleu", "multi30k_test_bleu", "software_val_chrf"):
        assert set(line[key]) == {"before", "after"} and all(isinstance(v, float) for v in line[key].values())
    assert (tmp_path / "run" / "imported" / "vocab.json").is_file() and (tmp_path / "run" / "finetuned" / "vocab.json").is_file()
    records = [json.loads(r) for r in (tmp_path / "run" / "finetuned" / "metrics.jsonl").read_text().splitlines()]
    assert any(set(r.get("valid_sets", {})) == {"software", "multi30k"} for r in records)
    assert not (tmp_path / "run" / "scratch").exists()
