"""Training: loss, schedule, learning, checkpoints, and exact resume."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from conftest import toy_pairs, write_pair
from nmt import checkpoint
from nmt.config import load_config
from nmt.data import prepare_corpora
from nmt.errors import CheckpointError
from nmt.model import Transformer
from nmt.tokenizer import PAD_ID, prepare_tokenizer
from nmt.train import Trainer, compile_model, inverse_sqrt, label_smoothed_loss


class Operators(TorchDispatchMode):
    """The names of the operators dispatched while active, less those that only make a view."""

    views = {"view", "_unsafe_view", "t", "transpose", "permute", "expand", "slice", "select", "unsqueeze",
             "squeeze", "detach", "alias", "as_strided", "unbind", "lift_fresh", "_record_function_enter_new",
             "_record_function_exit"}

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ not in self.views:
            self.names.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def test_label_smoothed_loss_and_gradients_match_the_definition() -> None:
    """Loss, NLL and the hand-made gradients equal autograd through the textbook formula (float64 inputs)."""
    torch.manual_seed(0)
    hidden, weight = torch.randn(11, 6, dtype=torch.float64), torch.randn(9, 6, dtype=torch.float64)
    target = torch.tensor([1, 4, PAD_ID, 8, 2, PAD_ID, 3, 3, 5, 7, 1])
    mask = target != PAD_ID
    for smoothing, chunk in ((0.0, 4 * 9), (0.2, 4 * 9), (0.2, 2 ** 20)):  # 3 chunks of 4 rows, then one
        h1, w1 = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
        log_probs = torch.log_softmax((h1 @ w1.t())[:, 1:], -1)  # the 8 real classes; padding is none
        expected_nll = -log_probs.gather(-1, (target - 1).clamp(min=0)[:, None])[:, 0][mask].sum()
        expected = (1 - smoothing) * expected_nll + smoothing * -log_probs.mean(-1)[mask].sum()
        (1.5 * expected).backward()
        h2, w2 = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
        loss, nll = label_smoothed_loss(h2, w2, target, smoothing, chunk_elements=chunk)
        (1.5 * loss).backward()
        torch.testing.assert_close(loss.double(), expected.detach(), rtol=1e-5, atol=1e-5)  # computed in float32
        torch.testing.assert_close(nll.double(), expected_nll.detach(), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(h2.grad, h1.grad, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(w2.grad, w1.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("rows", [40, 43])
def test_label_smoothed_loss_under_bf16_autocast_follows_fp32(rows: int) -> None:
    """The bf16 branch (the default on CUDA) runs here under CPU autocast: same loss and gradients to bf16
    precision. 40 rows are 5 whole chunks (one group of 4 for the weight's gradient, then 1); 43 rows end
    in a chunk of 3 that is padded to a whole one."""
    torch.manual_seed(0)
    hidden, weight = torch.randn(rows, 16), torch.randn(50, 16) * 0.3
    target = torch.randint(1, 50, (rows,))
    target[5] = PAD_ID
    results = []
    for bf16 in (False, True):
        h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss, nll = label_smoothed_loss(h, w, target, 0.1, chunk_elements=8 * 50)  # 5 chunks
        loss.backward()
        assert loss.dtype == torch.float32 and h.grad.dtype == w.grad.dtype == torch.float32
        assert h.grad.shape == hidden.shape
        results.append((loss.detach(), nll, h.grad, w.grad))
    for exact, approximate in zip(*results):
        torch.testing.assert_close(approximate, exact, rtol=2e-2, atol=2e-2)
    assert torch.all(results[1][2][5] == 0)  # the padding row gets no gradient


def test_inverse_sqrt_schedule() -> None:
    factor = inverse_sqrt(100)
    assert factor(0) == pytest.approx(0.01) and factor(99) == pytest.approx(1.0)
    assert factor(399) == pytest.approx(0.5)  # sqrt(100 / 400)
    assert factor(199) > factor(399)


def make_trainer(run_dir: Path, *overrides: str, device: str = "cpu") -> Trainer:
    src, tgt = toy_pairs(120)
    prefix = write_pair(run_dir.parent / f"{run_dir.name}-corpus" / "train", src, tgt, "en", "de")
    config = load_config(None, ["model.preset=tiny", "tokenizer.vocab_size=48", "train.max_tokens=400",
                                "train.log_every=2", "train.save_every=3", "train.valid_every=1000",
                                "train.warmup_steps=5", "train.lr=2e-3", "model.dropout=0.1", f"data.train={prefix}",
                                *overrides])
    tokenizer = prepare_tokenizer(config.tokenizer, run_dir, src, tgt, reuse=(run_dir / "spm.model").exists())
    corpus = prepare_corpora(config.data, tokenizer)
    torch.manual_seed(config.train.seed)
    model = Transformer(config.model, tokenizer.src_vocab_size, tokenizer.tgt_vocab_size)
    return Trainer(model, config.train, run_dir, corpus, device=torch.device(device))


def test_loss_falls_on_one_batch(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, "model.dropout=0.0")
    batch = np.arange(16)
    x = trainer.corpus.collate(batch, trainer.model.start_id)
    def nll() -> float:
        with torch.no_grad():
            hidden = trainer.model(x["src"], x["tgt_in"], x["targets"], project=False)
            return float(label_smoothed_loss(hidden, trainer.model.output_weight(), x["tgt_out"].view(-1)[x["targets"]], 0.0)[1])

    first = nll()
    for _ in range(40):
        trainer._update([batch])
    last = nll()
    assert last < first / 3
    # The decoder starts from the padding embedding, which must stay the zero vector (Marian/CTranslate2).
    assert trainer.model.start_id == PAD_ID
    assert torch.count_nonzero(trainer.model.tgt_embed.tokens.weight[PAD_ID]) == 0


@pytest.mark.parametrize("compiled, precision", [(False, "fp32"), (True, "fp32"), (False, "bf16")])
def test_resume_continues_the_same_run(tmp_path: Path, compiled: bool, precision: str) -> None:
    """Stopping after 6 updates and resuming to 13 equals 13 uninterrupted updates, bit for bit, eager or
    compiled (a compiled run resumed at a later batch must pick the same kernels as the straight run),
    and in bf16 (on a CPU: the twin's bucketed linear layers, the fp32 attention)."""
    flags = (f"train.compile={str(compiled).lower()}", f"train.precision={precision}")
    straight = make_trainer(tmp_path / "a", "train.max_steps=13", *flags)
    straight.train()
    first = make_trainer(tmp_path / "b", "train.max_steps=6", *flags)
    first.train()
    resumed = make_trainer(tmp_path / "b", "train.max_steps=13", *flags)
    resumed.resume(checkpoint.latest_checkpoint(tmp_path / "b"))
    assert resumed.progress.step == 6
    resumed.train()
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert resumed.progress.epoch == straight.progress.epoch and resumed.progress.batch_index == straight.progress.batch_index
    losses = [line for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    resumed_losses = [line for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    strip = lambda lines: [l.split('"tokens_per_s"')[0] for l in lines]  # noqa: E731 (timings differ)
    assert strip(resumed_losses) == strip(losses)


def test_checkpoints_are_complete_and_pruned(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, "train.max_steps=14", "train.keep_last=2")
    trainer.train()
    steps = sorted(p.name for p in checkpoint.checkpoint_dir(tmp_path).glob("step_*"))
    assert steps == ["step_00000012", "step_00000014"]
    assert checkpoint.latest_checkpoint(tmp_path).name == "step_00000014"
    state = checkpoint.load_state(checkpoint.latest_checkpoint(tmp_path))
    assert state["progress"]["step"] == 14


def test_max_epochs_and_minutes_bound_the_run(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, "train.max_epochs=1")
    assert "max_epochs" in trainer.train() and trainer.progress.epoch == 1
    quick = make_trainer(tmp_path / "m", "train.max_minutes=0.0001")
    assert "max_minutes" in quick.train()


def test_pickle_payload_is_refused(tmp_path: Path) -> None:
    """A trainer state carrying a pickled callable must not execute on load."""
    import os
    import pickle

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    step = tmp_path / "step"
    step.mkdir()
    (step / checkpoint.STATE).write_bytes(pickle.dumps({"x": Payload()}))
    with pytest.raises(CheckpointError, match="unreadable trainer state"):
        checkpoint.load_state(step)
    assert not (tmp_path / "pwned").exists()


def test_weights_from_another_vocabulary_are_refused(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, "train.max_steps=1")
    best = checkpoint.save_best(tmp_path, 1, trainer.model, {})
    config = load_config(None, ["model.preset=tiny"])
    other = Transformer(config.model, 99, 99)
    with pytest.raises(CheckpointError, match="do not match"):
        checkpoint.load_checkpoint_weights(other, best)
    (tmp_path / "broken.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(CheckpointError, match="unreadable checkpoint|do not match"):
        checkpoint.load_weights(trainer.model, tmp_path / "broken.safetensors")


def test_non_finite_loss_skips_then_stops(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from nmt.train import loop as train_module
    from nmt.errors import TrainingError

    trainer = make_trainer(tmp_path, "train.max_steps=30", "train.save_every=4", "train.max_nonfinite=3")
    real_loss = train_module.label_smoothed_loss
    calls = {"n": 0}

    def flaky(hidden, weight, target, smoothing):
        calls["n"] += 1
        loss, nll = real_loss(hidden, weight, target, smoothing)
        if calls["n"] == 3 or calls["n"] >= 10:  # one isolated bad batch, then nothing but bad batches
            return loss * float("nan"), nll
        return loss, nll

    monkeypatch.setattr(train_module, "label_smoothed_loss", flaky)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    with pytest.raises(TrainingError, match="not finite for 3 updates in a row at step 12.*step_00000008 is intact"):
        trainer.train()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    skipped = [r for r in records if r.get("event") == "update_skipped"]
    # Update 3 and updates 10-12 were skipped on the device and found so when the figures were read
    # (every 2 updates); the checkpoint of step 12 was not written.
    assert [(r["step"], r["in_a_row"]) for r in skipped] == [(3, 1), (10, 1), (11, 2), (12, 3)]
    assert [r["step"] for r in records if "loss" in r] == [2, 4, 6, 8, 10]  # 12: only skipped updates, nothing to log
    assert all(torch.isfinite(v).all() for v in trainer.model.state_dict().values())
    assert any(not torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())
    checkpoint.verify(checkpoint.latest_checkpoint(tmp_path))


def test_out_of_memory_splits_the_batch(tmp_path: Path) -> None:
    import json

    # fp32: the patched forward is the model's own (bf16 training runs a bf16 copy of it).
    trainer = make_trainer(tmp_path, "train.max_steps=3", "model.dropout=0.0", "train.precision=fp32")
    real_forward = trainer.model.forward

    def small_batches_only(src, tgt_in, keep=None, project=True):
        if src.size(0) > 8:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_forward(src, tgt_in, keep, project)

    trainer.model.forward = small_batches_only
    trainer.train()
    assert trainer.progress.step == 3 and trainer.progress.budget_scale < 1.0
    events = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert any(e.get("event") == "out_of_memory" and e["action"] == "split" for e in events)
    assert checkpoint.load_state(checkpoint.latest_checkpoint(tmp_path))["progress"]["budget_scale"] < 1.0


def test_average_of_the_last_checkpoints(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    trainer = make_trainer(tmp_path, "train.max_steps=9", "train.keep_last=3")
    trainer.train()
    steps = sorted(checkpoint.checkpoint_dir(tmp_path).glob("step_*"))
    averaged = checkpoint.average_checkpoints(tmp_path, 2)
    found = load_file(str(averaged / checkpoint.WEIGHTS))
    a, b = (load_file(str(d / checkpoint.WEIGHTS)) for d in steps[-2:])
    for name in a:
        torch.testing.assert_close(found[name], (a[name] + b[name]) / 2)
    assert checkpoint.inference_checkpoint(tmp_path) == averaged
    checkpoint.forget_average(tmp_path)
    assert checkpoint.inference_checkpoint(tmp_path) != averaged
    with pytest.raises(CheckpointError, match="holds 3 step checkpoints, cannot average the last 4"):
        checkpoint.average_checkpoints(tmp_path, 4)


CPU_AND_GPU = ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(),
                                                                                      reason="needs a CUDA GPU")])]


@pytest.mark.parametrize("device", CPU_AND_GPU)
def test_training_forward_compiles_to_one_graph(device: str) -> None:
    """Under torch.compile(dynamic=True) encoder and decoder trace into one graph, without a graph break,
    and batches of 50 random shapes compile at most twice more (a batch of one sentence compiles once
    more). As training runs under bf16: the twin with bf16 linear weights, under autocast."""
    import random

    import torch._dynamo
    from torch._dynamo.utils import counters

    from nmt.train.optim import LowPrecisionCopy

    graphs = []

    def counting_backend(graph, example_inputs):  # no inductor: the graphs run as traced
        graphs.append(graph)
        return graph.forward

    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    config = load_config(None, ["model.preset=tiny", "model.norm_first=false", "model.attention_dropout=0.1"])
    model = LowPrecisionCopy(Transformer(config.model, 40, 40).to(device), torch.bfloat16).module.train()
    compiled = compile_model(model, backend=counting_backend)
    rng = random.Random(0)
    for _ in range(50):
        B, S, T = rng.choice([1, *range(2, 9)]), rng.randint(2, 12), rng.randint(2, 12)  # a source holds EOS and more
        src, tgt = torch.randint(1, 40, (B, S), device=device), torch.randint(1, 40, (B, T), device=device)
        keep = torch.arange(rng.randint(2, B * T), device=device)
        with torch.autocast(device, dtype=torch.bfloat16):
            assert compiled(src, tgt, keep, project=False).shape == (keep.numel(), 64)
    assert not counters["graph_break"], dict(counters["graph_break"])
    assert len(graphs) <= 3, f"{len(graphs)} compilations"  # the first and at most 2 recompilations
    torch._dynamo.reset()


def test_compiled_training_matches_eager(tmp_path: Path) -> None:
    pytest.importorskip("torch._inductor")
    eager = make_trainer(tmp_path / "eager", "model.dropout=0.0")
    compiled = make_trainer(tmp_path / "compiled", "model.dropout=0.0", "train.compile=true")
    for index, batch in enumerate((list(range(16)), list(range(16, 40)), list(range(40, 50)))):
        # After the first two shapes, a batch of yet another shape must not compile again.
        with torch._dynamo.config.patch(error_on_recompile=index == 2):
            a, b = eager._update([batch]).figures.tolist(), compiled._update([batch]).figures.tolist()
        assert b[0] == pytest.approx(a[0], rel=1e-4) and b[2:] == a[2:] and a[2] == 1.0  # applied


def test_moving_average_of_the_weights(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, "model.dropout=0.0", "train.ema_decay=0.9")
    expected = [p.detach().clone() for p in trainer.model.parameters()]
    for batch in (list(range(16)), list(range(16, 32))):
        assert trainer._update([batch]).figures[2] == 1.0  # applied
        expected = [0.9 * e + 0.1 * p.detach() for e, p in zip(expected, trainer.model.parameters())]
    for found, wanted in zip(trainer.ema.model.parameters(), expected):
        torch.testing.assert_close(found, wanted)
    assert not all(torch.equal(a, b) for a, b in zip(trainer.ema.model.parameters(), trainer.model.parameters()))
    trainer.save()  # the average goes into the trainer state (for resume) and into checkpoints/ema_*
    trainer.writer.wait()  # written in the background
    again = make_trainer(tmp_path, "model.dropout=0.0", "train.ema_decay=0.9")
    again.resume(checkpoint.latest_checkpoint(tmp_path))
    assert all(torch.equal(a, b) for a, b in zip(again.ema.model.parameters(), trainer.ema.model.parameters()))
    assert checkpoint.use_ema(tmp_path) == checkpoint.inference_checkpoint(tmp_path)
    assert checkpoint.inference_checkpoint(tmp_path).name.startswith("ema_")


def test_skipped_update_changes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A non-finite loss leaves weights, optimizer moments and the moving average exactly as they were."""
    from nmt.train import loop as train_module

    trainer = make_trainer(tmp_path, "train.ema_decay=0.9")
    assert trainer._update([list(range(16))]).figures[2] == 1.0
    snapshot = lambda: [t.clone() for t in (*trainer.model.parameters(), *trainer.ema.model.parameters())]  # noqa: E731
    moments = lambda: [v.clone() for s in trainer.optimizer.state.values() for v in s.values()]  # noqa: E731
    weights, state = snapshot(), moments()
    real_loss = train_module.label_smoothed_loss
    monkeypatch.setattr(train_module, "label_smoothed_loss", lambda *a: tuple(x * float("inf") for x in real_loss(*a)))
    assert trainer._update([list(range(16, 32))]).figures[2] == 0.0  # skipped
    assert all(torch.equal(a, b) for a, b in zip(weights, snapshot()))
    assert all(torch.equal(a, b) for a, b in zip(state, moments()))  # the step count too


def test_loader_workers_change_nothing(tmp_path: Path) -> None:
    """Batches collated ahead in a worker process train exactly like batches collated in the loop."""
    inline = make_trainer(tmp_path / "inline", "train.max_steps=7", "train.loader_workers=0")
    inline.train()
    ahead = make_trainer(tmp_path / "ahead", "train.max_steps=7", "train.loader_workers=1")
    ahead.train()
    for (name, a), b in zip(inline.model.state_dict().items(), ahead.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert (ahead.progress.epoch, ahead.progress.batch_index) == (inline.progress.epoch, inline.progress.batch_index)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("compiled", [False, True])
def test_training_step_does_not_wait_for_the_gpu(tmp_path: Path, compiled: bool) -> None:
    """Between the points where figures are read, an update never synchronises host and device: bf16
    through the twin, clipping and the step on the device, the moving average too; eager and compiled."""
    trainer = make_trainer(tmp_path, "train.ema_decay=0.999", f"train.compile={str(compiled).lower()}", device="cuda")
    stream = trainer._stream()
    items = [next(stream) for _ in range(4)]
    for item in items[:2]:  # the first steps allocate optimizer state and compile
        trainer._update(item["group"], item)
    torch.cuda.set_sync_debug_mode("error")
    try:
        updates = [trainer._update(item["group"], item) for item in items[2:]]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert all(u.figures[2].item() == 1.0 for u in updates)


def test_checkpoints_are_written_in_the_background_from_a_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """save() returns while its files are still being written; they hold the state at the call, although
    training changes the weights meanwhile; a run stopped (a second Ctrl-C) while a write is in flight
    waits for it, and that checkpoint is complete."""
    import threading

    from safetensors.torch import load_file

    trainer = make_trainer(tmp_path, "train.max_steps=10", "train.save_every=3")
    started, release = threading.Event(), threading.Event()
    real_save = checkpoint.save_checkpoint

    def slow_save(*args, **kwargs):
        started.set()
        release.wait(30)
        return real_save(*args, **kwargs)

    monkeypatch.setattr(checkpoint, "save_checkpoint", slow_save)
    trainer._update([list(range(16))])
    trainer.progress.step = 1
    expected = {name: t.clone() for name, t in trainer.model.state_dict().items()}
    trainer.save()
    assert started.wait(30) and checkpoint.latest_checkpoint(tmp_path) is None  # in flight
    with torch.no_grad():
        for p in trainer.model.parameters():
            p.add_(1.0)
    release.set()
    trainer.writer.wait()
    saved = load_file(str(checkpoint.latest_checkpoint(tmp_path) / checkpoint.WEIGHTS))
    assert saved and all(torch.equal(t, expected[name]) for name, t in saved.items())

    release.clear()
    real_update = trainer._update

    def second_ctrl_c(group, collated=None):
        if trainer.progress.step == 4:  # the checkpoint of step 3 is being written
            threading.Timer(0.5, release.set).start()
            raise KeyboardInterrupt
        return real_update(group, collated)

    monkeypatch.setattr(trainer, "_update", second_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    latest = checkpoint.latest_checkpoint(tmp_path)
    assert latest.name == "step_00000003" and checkpoint.load_state(latest)["progress"]["step"] == 3
    checkpoint.verify(latest)
    assert not list(checkpoint.checkpoint_dir(tmp_path).glob("*.tmp"))


@pytest.mark.parametrize("amx", [False, True])
def test_auto_trains_in_bf16_where_the_device_multiplies_it_in_hardware(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                         amx: bool) -> None:
    from nmt.precision import trains_in_bf16

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    assert trains_in_bf16("auto", cpu) is amx and trains_in_bf16("auto", cuda)
    assert not trains_in_bf16("fp32", cpu) and not trains_in_bf16("fp32", cuda) and trains_in_bf16("bf16", cpu)
    trainer = make_trainer(tmp_path, "train.precision=auto", "train.max_steps=1")
    assert (trainer.low_precision is not None) is amx
    trainer.train()
    assert trainer.progress.step == 1
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported")  # a torch without the probe: fp32
    assert not trains_in_bf16("auto", cpu)


def test_bf16_weights_cast_once_give_autocast_gradients(tmp_path: Path) -> None:
    """Under bf16 the update runs through bf16 copies of the linear weights, made once per update; the
    gradients it leaves on the fp32 weights are exactly those of autocast's cast at every use."""
    import copy

    trainer = make_trainer(tmp_path, "model.dropout=0.0", "train.precision=bf16", "train.accum_steps=2")
    reference = copy.deepcopy(trainer.model)
    groups = [np.arange(16), np.arange(16, 30)]
    inputs = [trainer.corpus.collate(b, trainer.model.start_id) for b in groups]
    trainer.low_precision.refresh()
    trainer._accumulate(inputs)
    for x in inputs:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            hidden = reference(x["src"], x["tgt_in"], x["targets"], project=False)
            loss, _ = label_smoothed_loss(hidden, reference.output_weight(), x["tgt_out"].view(-1)[x["targets"]],
                                          trainer.config.label_smoothing)
        loss.backward()
    for (name, expected), found in zip(reference.named_parameters(), trainer.model.parameters()):
        assert found.grad is not None and torch.equal(found.grad, expected.grad), name
    assert all(c.grad is None for c in trainer.low_precision.copies)  # handed off
    assert trainer.low_precision.copies[0].dtype == torch.bfloat16


@pytest.mark.parametrize("device", CPU_AND_GPU)
def test_operators_of_a_bf16_update_do_not_grow_with_the_parameters(tmp_path: Path, device: str) -> None:
    """Kernel launches bound a GPU update: counted here as the operators dispatched (views aside) by an
    update under bf16 with a moving average, for 1+1 and 3+3 layers. Per added encoder+decoder layer
    (32 parameter tensors) they grow by the layers' own work (130 today), not by a cast of each
    weight at each use or an average step per tensor (274 before: 4 casts per linear layer's tensor
    and a lerp_ per tensor)."""
    counted = {}
    for layers in (1, 3):
        trainer = make_trainer(tmp_path / str(layers), "train.precision=bf16", "train.ema_decay=0.99",
                               f"model.n_encoder_layers={layers}", f"model.n_decoder_layers={layers}", "train.compile=false",
                               device=device)
        trainer._update([list(range(16))])  # the first update allocates the optimizer's state
        with Operators() as seen:
            trainer._update([list(range(16))])
        counted[layers] = seen.names
        assert "lerp_" not in seen.names and seen.names.count("_fused_adamw_") == 1
    # On a CPU the 3 attentions of a layer pair compute in fp32 (see `Attention._sdpa`): their inputs'
    # and output's casts, forward and backward, are 26 operators more; the padding of the 9 linear
    # layers' rows to a multiple of 256 (see `RowBucketedLinear`) 33 more.
    extra = 0 if device == "cuda" else 26 + 33
    assert (len(counted[3]) - len(counted[1])) / 2 <= 150 + extra, (len(counted[3]) - len(counted[1])) / 2
    assert (counted[3].count("_to_copy") - counted[1].count("_to_copy")) / 2 <= 30 + (0 if device == "cuda" else 26)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_an_update_of_the_gpu_profile_dispatches_under_half_the_operators(tmp_path: Path) -> None:
    """The GPU recipe's update (6+6 layers, 8,192-token batch, bf16, moving average), eager: at most half
    of the 1,637 operators (views aside) the code dispatched before the launches were cut."""
    import random

    from nmt.data import token_pairs

    config = load_config(Path(__file__).resolve().parents[1] / "recipes" / "multi30k-gpu.yaml", ["train.compile=false"])
    rng = random.Random(0)
    pairs = [[[rng.randrange(4, 10000) for _ in range(rng.randint(10, 18))] for _ in range(2)] for _ in range(215)]
    corpus = token_pairs([p[0] for p in pairs], [p[1] for p in pairs], tmp_path / "tokens.arrow")
    trainer = Trainer(Transformer(config.model, 10000, 10000), config.train, tmp_path, corpus, device=torch.device("cuda"))
    group = [np.arange(len(pairs))]
    for _ in range(2):
        trainer._update(group)
    with Operators() as seen:
        trainer._update(group)
    assert len(seen.names) <= 1637 // 2, len(seen.names)


def test_a_failing_compiler_falls_back_to_eager_under_auto() -> None:
    import torch._dynamo

    def broken_backend(graph, example_inputs):
        raise RuntimeError("Cannot find a working triton installation")

    torch._dynamo.reset()
    model = Transformer(load_config(None, ["model.preset=tiny"]).model, 40, 40)
    src, tgt = torch.randint(1, 40, (3, 5)), torch.randint(1, 40, (3, 4))
    with pytest.raises(Exception, match="triton"):
        compile_model(model, backend=broken_backend)(src, tgt)
    torch._dynamo.reset()
    assert compile_model(model, backend=broken_backend, fallback=True)(src, tgt).shape == (3, 4, 40)
    torch._dynamo.reset()
