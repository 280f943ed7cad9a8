"""bench/gpu_suite.sh as a dry run on the CPU at tiny sizes: every stage runs and writes its JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import write_splits

SUITE = Path(__file__).resolve().parents[1] / "bench" / "gpu_suite.sh"


@pytest.mark.slow
def test_gpu_suite_dry_run_on_the_cpu(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    data = write_splits(tmp_path / "data", (400, 20, 20), "en", "de")
    ops_config = tmp_path / "ops.yaml"
    ops_config.write_text("model: {preset: tiny, norm_first: false}\ntokenizer: {vocab_size: 64}\ntrain: {max_tokens: 600}\n")
    tiny = ["model.preset=tiny", "tokenizer.vocab_size=64", "train.max_steps=6", "train.save_every=3",
            "train.max_tokens=1200", "train.threads=1", "decode.max_tokens=600"]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "DEVICE": "cpu", "EXTRA": " ".join(tiny), "OPS_CONFIG": str(ops_config), "OPS_ARGS": "--no-compiled --threads 1",
           "TRAIN_ARGS": "--shape tiny --max-tokens 600 --vocab-size 64 --rounds 1 --steps 1 --warmup 1 --threads 1",
           "DECODE_ARGS": "--rounds 1 --limit 8 --workers 1 --batch-size 8", "OMP_NUM_THREADS": "1"}
    out = tmp_path / "out"
    result = subprocess.run(["bash", str(SUITE), str(data), str(out)], capture_output=True, text=True, env=env,
                            timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "suite.json").read_text())
    assert {name: r["status"] for name, r in report.items()} == dict.fromkeys(("tests", "train", "recipe", "decode", "ops"), "ok"), \
        result.stderr[-3000:]
    assert json.loads((out / "gpu_tests.json").read_text())["failed"] == 0  # skipped here: no CUDA
    speed = json.loads((out / "train_speed_cpu.json").read_text())
    assert speed["nmt_tokens_per_s"] > 0 and speed["hf_tokens_per_s"] > 0
    assert "bleu" in json.loads((out / "recipe_en-de.json").read_text())
    assert json.loads((out / "decode_cpu.json").read_text())
    assert json.loads((out / "ops_cpu.json").read_text())["eager"]["operators"] > 0
    assert json.loads((out / "environment.json").read_text())["torch"]
