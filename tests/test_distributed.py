"""Data-parallel training: 2 CPU processes (gloo) take the same step as 1 process on the same global batch."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from conftest import TINY, toy_pairs
from nmt.config import load_config
from nmt.tokenizer import prepare_tokenizer
from test_train import make_trainer

SAME_STEP = ("train.max_steps=2", "model.dropout=0.0", "train.save_every=100", "train.precision=fp32")  # fp32: equal to 2e-6


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, run_dir: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        trainer = make_trainer(Path(run_dir), *SAME_STEP)
        trainer.train()
        if rank == 0:
            torch.save(trainer.model.state_dict(), out)
    finally:
        dist.destroy_process_group()


def test_two_processes_equal_one_process_on_the_global_batch(tmp_path: Path) -> None:
    reference = make_trainer(tmp_path / "single", *SAME_STEP, "train.accum_steps=2")
    reference.train()
    ddp_dir = tmp_path / "ddp"
    config = load_config(None, ["tokenizer.vocab_size=48"])
    prepare_tokenizer(config.tokenizer, ddp_dir, *toy_pairs(120))  # the ranks reuse it, as under `nmt train`
    out = tmp_path / "ddp.pt"
    mp.spawn(_worker, args=(2, free_port(), str(ddp_dir), str(out)), nprocs=2, join=True)
    found = torch.load(out, weights_only=True)
    for name, expected in reference.model.state_dict().items():
        torch.testing.assert_close(found[name], expected, atol=2e-6, rtol=1e-5, msg=name)
    assert reference.progress.batch_index == 4  # both consumed the same 2 x 2 batches


def _count_collectives(rank: int, world: int, port: int, run_dir: str, out: str) -> None:
    """Three updates; the collectives of the third (DDP has rebuilt its buckets after the first two)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Collectives(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.names: list[str] = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.namespace == "c10d":
                self.names.append(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        trainer = make_trainer(Path(run_dir), *SAME_STEP)
        stream = trainer._stream()
        items = [next(stream) for _ in range(3)]
        for item in items[:2]:
            trainer._update(item["group"], item)
        with Collectives() as seen:
            trainer._update(items[2]["group"], items[2])
        buckets = len(trainer.ddp._get_ddp_logging_data()["bucket_sizes"].split(","))
        if rank == 0:
            Path(out).write_text(json.dumps({"collectives": seen.names, "buckets": buckets}))
    finally:
        dist.destroy_process_group()


def test_an_update_makes_one_all_reduce_besides_the_gradients(tmp_path: Path) -> None:
    """Per update: DDP's gradient buckets and one all-reduce of the losses and token counts, no broadcast."""
    config = load_config(None, ["tokenizer.vocab_size=48"])
    prepare_tokenizer(config.tokenizer, tmp_path, *toy_pairs(120))
    out = tmp_path / "collectives.json"
    mp.spawn(_count_collectives, args=(2, free_port(), str(tmp_path), str(out)), nprocs=2, join=True)
    found = json.loads(out.read_text())
    assert found["collectives"] == ["allreduce_"] * (found["buckets"] + 1), found


def test_nmt_train_under_torchrun(toy_corpus: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    sets = [*TINY, f"data.train={toy_corpus / 'train'}", f"data.valid={toy_corpus / 'valid'}", "train.max_steps=12",
            "train.valid_every=6", "train.save_every=6", "train.log_every=3"]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(free_port()),
               "-m", "nmt_cli.main", "train", "--run-dir", str(run_dir), *[x for s in sets for x in ("--set", s)]]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    summaries = [line for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(summaries) == 1 and json.loads(summaries[0])["step"] == 12
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [3, 6, 9, 12]  # written once, by rank 0
    assert [r["step"] for r in records if "valid_bleu" in r] == [6, 12]
    state = torch.load(run_dir / "checkpoints" / "step_00000012" / "state.pt", weights_only=True)
    assert len(state["torch_rng"]) == 2  # each rank's dropout stream, for an exact resume
    assert (state["progress"]["epoch"], state["progress"]["batch_index"]) == (0, 24)  # 12 steps x 2 ranks
