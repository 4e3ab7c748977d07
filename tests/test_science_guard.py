"""A guard for the science: the memory path still does what the method-fidelity benchmark showed.

The benchmark (`bench/method_fidelity.py`) takes half an hour and is not a test; this is its smallest
deterministic slice, on the smallest world (K = 2 identities, every object out of view for exactly 3
sections, i.e. 27 latent frames, beyond FramePack's 19-frame history), with models at
`world_preset(64, 1)`. It fails when

* ψ stops carrying an identity across the absent sections (a held-out ridge read-out of the identity
  from ψ's tokens, untrained and trained), or
* MemoryPack trained 250 stage-1 steps on the return sections (the oracle curriculum: the world's layout
  says which section that is) stops recalling the identity that comes back, while FramePack alone, trained
  the same way, cannot (it only ever sees the last 19 latent frames, so it is at chance by construction).

Measured when the guard was written (world seed 0, the development world): recall 1.00 (12 / 12) for
MemoryPack at 200 and 300 steps, 0.08 at 100; at 250 steps MemoryPack 1.00 and FramePack alone 0.50
(chance); ψ read-out ≥ 0.75 untrained and trained. The thresholds below leave these margins: recall ≥ 0.75 (3 of 12
returns may go
wrong), FramePack ≤ 0.67 (chance 0.5; a FramePack above it would mean the scorer or the world leaks the
identity into the recent history), read-out ≥ 0.75 on 12 held-out videos. Training on CPU is
deterministic, so a failure is a change in behaviour, not noise. Select with `pytest -k science_guard`.
"""

import pytest
import torch

from mempack.fidelity.metrics import memory_probe, memory_recall
from mempack.fidelity.model import world_model
from mempack.fidelity.world import World, WorldConfig
from mempack.train.forcing import ForcingConfig
from mempack.train.in_process import LocalTrainConfig, train_in_process

ABSENCE = 3  # sections out of view: 27 latent frames, beyond FramePack's 1 + 2 + 16
STEPS = 250
EVENTS = 12  # return events, identities balanced (6 each)
RECALL_AT_LEAST = 0.75
FRAMEPACK_AT_MOST = 0.67
READOUT_AT_LEAST = 0.75


@pytest.fixture(scope="module")
def world():
    return World(WorldConfig(identities=2, absence=(ABSENCE, ABSENCE), seed=0))


def _trained(world: World, memory: bool):
    model = world_model(64, 1, memory=memory, seed=0)

    def video(step: int):
        v = world.video(1_000_000 + step)
        return v.clips(), world.conditioning(v)

    config = LocalTrainConfig(
        stage=1,
        steps=STEPS,
        lr=1e-3,
        memory_lr=1e-4 if memory else None,
        seed=0,
        forcing=ForcingConfig(mode="teacher", memory_grad_window=-1),
    )
    train_in_process(model, video, config, pick_clip=lambda clips: clips - 1)  # the return section
    return model


def test_science_guard_psi_carries_the_identity_across_absent_sections(world):
    model = world_model(64, 1, memory=True, seed=0)
    with torch.no_grad():
        readout = memory_probe(model, world, [ABSENCE], seed=920_000_000, videos=48)[ABSENCE]
    assert readout >= READOUT_AT_LEAST, f"untrained psi lost the identity after {ABSENCE} absent sections: {readout}"


def test_science_guard_memorypack_recalls_where_framepack_alone_cannot(world):
    recalls = {}
    for name, memory in (("memorypack", True), ("framepack_only", False)):
        model = _trained(world, memory)
        recalls[name] = memory_recall(model, world, [ABSENCE], EVENTS, seed=900_000_000, steps=8).recall[ABSENCE]
        if memory:
            readout = memory_probe(model, world, [ABSENCE], seed=920_000_000, videos=48)[ABSENCE]
            assert readout >= READOUT_AT_LEAST, f"trained psi lost the identity: read-out {readout}"
    print(f"science guard: recall at L = {ABSENCE} after {STEPS} steps {recalls}")  # shown with -s
    assert recalls["memorypack"] >= RECALL_AT_LEAST, recalls
    assert recalls["framepack_only"] <= FRAMEPACK_AT_MOST, recalls
