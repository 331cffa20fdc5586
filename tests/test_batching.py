import pytest
import torch

from lafr_core.batching import run_in_chunks


class FakeOOM(RuntimeError):
    pass


def test_whole_batch_in_one_call_when_it_fits():
    calls = []
    out = run_in_chunks(lambda x: calls.append(len(x)) or x * 2, torch.arange(6.0))
    assert calls == [6] and torch.equal(out, torch.arange(6.0) * 2)


def test_halves_on_oom_and_retries_the_failed_chunk():
    calls, halved, done = [], [], []

    def fn(x):
        calls.append(len(x))
        if len(x) > 2:
            raise FakeOOM
        return x + 1

    out = run_in_chunks(fn, torch.arange(5.0), oom_errors=(FakeOOM,), on_oom=halved.append, after_chunk=done.append)
    assert torch.equal(out, torch.arange(5.0) + 1)
    assert calls == [5, 2, 2, 1] and halved == [2] and done == [2, 4, 5]


def test_reraises_at_min_chunk_and_checks_interrupts_before_each_chunk():
    def always_oom(x):
        raise FakeOOM("out of memory")

    with pytest.raises(FakeOOM):
        run_in_chunks(always_oom, torch.zeros(4), oom_errors=(FakeOOM,))

    class Interrupted(Exception):
        pass

    seen = []

    def interrupt():
        seen.append(1)
        if len(seen) == 2:
            raise Interrupted

    with pytest.raises(Interrupted):
        run_in_chunks(lambda x: x, torch.zeros(4), chunk=2, before_chunk=interrupt)


def test_empty_batch_is_refused():
    with pytest.raises(ValueError, match="empty batch"):
        run_in_chunks(lambda x: x, torch.zeros(0))


def test_failed_chunks_tensors_are_released_before_on_oom_frees_the_cache():
    """A host empties its allocator cache in on_oom: that only helps if nothing still holds the
    failed chunk's activations (the exception's traceback keeps its frames alive)."""
    import weakref

    activations: list[weakref.ref] = []
    alive_at_on_oom = []

    def fn(x):
        hidden = torch.zeros(len(x), 1024)  # the forward's activations
        activations.append(weakref.ref(hidden))
        if len(x) > 1:
            raise FakeOOM("CUDA out of memory")
        return x

    def on_oom(size):
        alive_at_on_oom.append(sum(ref() is not None for ref in activations))

    run_in_chunks(fn, torch.arange(4.0), oom_errors=(FakeOOM,), on_oom=on_oom)
    assert alive_at_on_oom == [0, 0]
