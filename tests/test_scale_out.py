"""`lafr restore` under torchrun: the items split across processes, each exactly once, outputs
byte for byte those of one process (a folder of photos and a clip, tiny random LAFR pipeline)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from conftest import REPO
from face_fixtures import DATA
from lafr_core.scale_out import ProcessSlot

WORKER = REPO / "tests" / "scale_out_worker.py"


@pytest.mark.parametrize("world", [1, 2, 3, 5])
def test_every_item_goes_to_exactly_one_process(world):
    items = [f"item{i:02d}" for i in range(11)]
    shares = [ProcessSlot(rank, world, rank).take(items) for rank in range(world)]
    assert sorted(sum(shares, [])) == items
    assert max(map(len, shares)) - min(map(len, shares)) <= 1


def test_slot_from_launcher_environment():
    assert ProcessSlot.from_env({}) == ProcessSlot(0, 1, 0)
    slot = ProcessSlot.from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})  # second GPU of the second machine
    assert (slot.rank, slot.world_size, slot.local_rank, slot.prefix()) == (3, 4, 1, "[rank 3/4] ")
    with pytest.raises(ValueError, match="RANK=4 is not within WORLD_SIZE=4"):
        ProcessSlot.from_env({"RANK": "4", "WORLD_SIZE": "4"})
    with pytest.raises(ValueError, match="must be integers"):
        ProcessSlot.from_env({"RANK": "zero", "WORLD_SIZE": "2"})


def test_two_processes_write_what_one_process_writes(tmp_path):
    pytest.importorskip("av")
    from video_cli_fixtures import write_clip

    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(DATA / "astronaut.png", inputs)
    shutil.copy(DATA / "grace_hopper.jpg", inputs)
    write_clip(inputs / "clip.mp4", frames=10, size=128)
    # torchrun gives each process OMP_NUM_THREADS=1; the reference gets the same threads
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(key, None)
    args = [str(inputs), "--detector", "mtcnn", "--max-gap", "2"]
    one = subprocess.run([sys.executable, str(WORKER), *args, "-o", str(tmp_path / "one")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert one.returncode == 0, one.stdout + one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(WORKER),
                          *args, "-o", str(tmp_path / "two")], capture_output=True, text=True, env=env, timeout=300)
    assert two.returncode == 0, two.stdout + two.stderr
    names = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert names == ["astronaut.png", "clip.mp4", "grace_hopper.jpg"]
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == names
    for name in names:
        assert (tmp_path / "two" / name).read_bytes() == (tmp_path / "one" / name).read_bytes(), name
    # sorted items split round-robin: rank 0 took the photos (positions 0 and 2), rank 1 the clip
    log = two.stdout
    assert log.count("[rank 0/2]") == 2 and log.count("[rank 1/2]") == 1
    assert "[rank 1/2] " + str(inputs / "clip.mp4") + ": 10 frames" in log
