"""Checkpoints: atomic folders, keep-last-N, 'latest', RNG round trip, Ctrl-C handling."""

import json
import random
import signal

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from train.checkpoint import (
    TrainState,
    clean_incomplete,
    list_checkpoints,
    load_checkpoint,
    resolve_resume,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from train.loop import StopRequest, constant_with_warmup


@pytest.fixture(scope="module")
def accelerator():
    from accelerate import Accelerator

    return Accelerator(cpu=True)


def parts(lr=0.1):
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    return model, optimizer, constant_with_warmup(optimizer, 5)


def save(accelerator, out, step, model, optimizer, scheduler, keep=3, gen=None, write=None):
    def write_weights(path):
        if write is not None:
            write(path)
        save_file(model.state_dict(), str(path))

    state = TrainState(stage="stage1", step=step, epoch=1, batch_in_epoch=2, images_seen=8, extra={"k": [1, 2]})
    return save_checkpoint(accelerator, out, state, write_weights, optimizer, scheduler, {"g": gen or torch.Generator()}, keep)


def test_save_then_load_restores_everything(tmp_path, accelerator):
    model, optimizer, scheduler = parts()
    gen = torch.Generator().manual_seed(5)
    torch.randn(3, generator=gen)  # a used generator, not a fresh one
    path = save(accelerator, tmp_path, 7, model, optimizer, scheduler, gen=gen)
    assert path.name == "checkpoint-00000007" and json.loads((path / "state.json").read_text())["step"] == 7
    expected_next = (random.random(), float(np.random.rand()), torch.rand(1).item(), torch.rand(1, generator=gen).item())

    model2, optimizer2, scheduler2 = parts(lr=0.5)
    gen2 = torch.Generator()
    random.random(), np.random.rand(), torch.rand(1)  # move every RNG on
    state = load_checkpoint(accelerator, path, lambda p: model2.load_state_dict(load_file(str(p))), optimizer2, scheduler2, {"g": gen2})
    assert (state.step, state.epoch, state.batch_in_epoch, state.extra) == (7, 1, 2, {"k": [1, 2]})
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), model2.state_dict().values()))
    assert optimizer2.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"]
    assert torch.equal(optimizer2.state_dict()["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"])
    assert scheduler2.state_dict()["last_epoch"] == scheduler.state_dict()["last_epoch"]
    assert (random.random(), float(np.random.rand()), torch.rand(1).item(), torch.rand(1, generator=gen2).item()) == expected_next


def test_keep_last_n_and_latest(tmp_path, accelerator):
    model, optimizer, scheduler = parts()
    for step in (10, 20, 30, 40):
        save(accelerator, tmp_path, step, model, optimizer, scheduler, keep=2)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [30, 40]
    assert resolve_resume(tmp_path, "latest").name == "checkpoint-00000040"
    assert resolve_resume(tmp_path, "checkpoint-00000030").name == "checkpoint-00000030"
    assert resolve_resume(tmp_path, None) is None
    assert resolve_resume(tmp_path / "empty", "latest") is None
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        resolve_resume(tmp_path, "checkpoint-00000010")


def test_a_save_cut_off_midway_leaves_the_previous_checkpoint_as_latest(tmp_path, accelerator):
    model, optimizer, scheduler = parts()
    save(accelerator, tmp_path, 1, model, optimizer, scheduler)

    def crash(path):
        raise KeyboardInterrupt  # e.g. killed while writing the weights

    with pytest.raises(KeyboardInterrupt):
        save(accelerator, tmp_path, 2, model, optimizer, scheduler, write=crash)
    leftovers = [p.name for p in (tmp_path / "checkpoints").iterdir()]
    assert ".tmp-checkpoint-00000002" in leftovers and "checkpoint-00000002" not in leftovers
    assert resolve_resume(tmp_path, "latest").name == "checkpoint-00000001"
    clean_incomplete(tmp_path)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["checkpoint-00000001"]
    # saving the same step twice replaces it whole
    save(accelerator, tmp_path, 1, model, optimizer, scheduler)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [1]


def test_checkpoint_files_load_with_weights_only(tmp_path, accelerator):
    model, optimizer, scheduler = parts()
    path = save(accelerator, tmp_path, 3, model, optimizer, scheduler)
    for name in ("optimizer.pt", "scheduler.pt", "rng-0.pt"):
        torch.load(path / name, weights_only=True)  # raises on anything but tensors and plain data


def test_resuming_with_another_process_count_is_refused(tmp_path, accelerator):
    model, optimizer, scheduler = parts()
    path = save(accelerator, tmp_path, 3, model, optimizer, scheduler)
    info = json.loads((path / "state.json").read_text())
    info["num_processes"] = 2
    (path / "state.json").write_text(json.dumps(info))
    with pytest.raises(ValueError, match="2 process"):
        load_checkpoint(accelerator, path, lambda p: None, optimizer, scheduler, {})


def test_rng_state_round_trip_covers_python_numpy_torch_and_generators():
    gen = torch.Generator().manual_seed(1)
    state = rng_state({"g": gen})
    first = (random.random(), np.random.rand(), torch.rand(2), torch.rand(2, generator=gen))
    set_rng_state(state, {"g": gen})
    second = (random.random(), np.random.rand(), torch.rand(2), torch.rand(2, generator=gen))
    assert first[0] == second[0] and first[1] == second[1]
    assert torch.equal(first[2], second[2]) and torch.equal(first[3], second[3])
    with pytest.raises(ValueError, match="generator"):
        set_rng_state(state, {"other": torch.Generator()})


def test_first_signal_requests_a_stop_second_ctrl_c_aborts():
    original = signal.getsignal(signal.SIGINT)
    stop = StopRequest()
    with stop.installed():
        signal.raise_signal(signal.SIGTERM)
        assert stop.requested and stop.signum == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is original
