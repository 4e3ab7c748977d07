"""Offload modes and float8 weight storage (mempack.offload): diffusers' hooks, the plain run's frames.

No GPU here: every mode runs with its onload device = "cpu" (diffusers accepts it). The hooks are
installed and run (checked), weights really leave their modules (sequential: on `meta` between calls),
and the frames are compared with the plain run's.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mempack.encoders import VideoEncoders
from mempack.model import MemoryPackTransformer
from mempack.offload import FP8_STORAGE, apply_memory_settings
from mempack.pipeline import MemoryPackPipeline
from mempack.sample import sample_image

SECTIONS = 3
# 3 sections, 2 steps, 32x32: frames go through the streamed section decode
CALL = dict(prompt="a kite", num_frames=1 + 36 * SECTIONS, num_inference_steps=2, height=32, width=32, output_type="np")


def _pipe() -> MemoryPackPipeline:
    model = MemoryPackTransformer.from_preset("tiny", seed=1).eval()
    pipe = MemoryPackPipeline.from_model(model, VideoEncoders.build("tiny", seed=0))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _frames(pipe: MemoryPackPipeline) -> np.ndarray:
    return pipe(image=sample_image(32, 32), generator=torch.Generator().manual_seed(3), **CALL).frames[0]


@pytest.fixture(scope="module")
def plain() -> np.ndarray:
    return _frames(_pipe())


def _transformer_onloads(pipe: MemoryPackPipeline) -> tuple[list[int], list[set[str]]]:
    """Replay accelerate's model-offload rule on the hooks' real calls: a component's `pre_forward` moves it
    in and evicts the one before it in the chain. On the CPU every move is a no-op, so the calls are
    logged and the residency replayed: (the call indices where the transformer was moved in, what was
    resident after each call)."""
    calls: list[str] = []
    chain: dict[str, str | None] = {}
    names = {id(module): name for name, module in pipe.components.items()}
    for name, module in pipe.components.items():
        hook = getattr(module, "_hf_hook", None)
        if hook is None or not hasattr(hook, "prev_module_hook"):
            continue
        prev = hook.prev_module_hook
        chain[name] = None if prev is None else names[id(prev.model)]
        pre_forward = hook.pre_forward

        def logged(*args, _name=name, _pre=pre_forward, **kwargs):
            calls.append(_name)
            return _pre(*args, **kwargs)

        hook.pre_forward = logged
    frames_holder.append(_frames(pipe))
    resident: set[str] = set()
    moved_in, after = [], []
    for i, name in enumerate(calls):
        if chain[name] in resident:
            resident.discard(chain[name])
        if name not in resident and name == "transformer":
            moved_in.append(i)
        resident.add(name)
        after.append(set(resident))
    first = calls.index("transformer")
    return moved_in, after[first]


frames_holder: list[np.ndarray] = []


@pytest.mark.parametrize("seq", ["ours", "diffusers_f1"])
def test_model_offload_keeps_the_transformer_across_section_decodes(plain, seq):
    """Model offload: the text encoders, SigLIP and the VAE have left when sampling starts; the transformer
    moves in once, however many sections are decoded (diffusers' F1 order, checked too, moves it back
    in after every section's decode)."""
    pipe = _pipe()
    if seq == "diffusers_f1":
        pipe.model_cpu_offload_seq = "text_encoder->text_encoder_2->image_encoder->transformer->vae"
    apply_memory_settings(pipe, "cpu", offload="model")
    frames_holder.clear()
    moved_in, at_first_step = _transformer_onloads(pipe)
    np.testing.assert_array_equal(frames_holder[0], plain)  # same frames, bit for bit
    if seq == "ours":
        assert at_first_step == {"transformer"}  # the encoders are off the device while sections are sampled
        assert len(moved_in) == 1
    else:
        assert len(moved_in) == SECTIONS  # what the reorder avoids: 26 GB out and back per section


def test_sequential_offload_installs_leaf_hooks():
    """Leaf by leaf: weights wait on `meta` and come in for their own module's call; ψ stays on the device.

    Installation only: a CPU run does not get through accelerate here. diffusers passes the device as
    "cpu:0", and moving a leaf back to `meta` after its call then fails inside accelerate
    (`set_module_tensor_to_device`: the onloaded weight is no longer an `nn.Parameter`). A GPU's
    "cuda:0" takes accelerate's ordinary path; the frames of a GPU run are not checked here."""
    pipe = _pipe()
    apply_memory_settings(pipe, "cpu", offload="sequential")
    block = pipe.transformer.transformer_blocks[0].attn.to_q
    assert block.weight.device.type == "meta" and hasattr(block, "_hf_hook")  # weights live in the hook's map
    assert pipe.text_encoder.embed_tokens.weight.device.type == "meta"  # the text encoders too
    assert pipe.vae.decoder.conv_in.conv.weight.device.type == "meta"
    assert pipe.semantic_pack.text_in.weight.device.type == "cpu"  # ψ is excluded: real weights on the device


def test_group_offload_gives_the_plain_frames(plain):
    from diffusers.hooks import HookRegistry

    pipe = _pipe()
    apply_memory_settings(pipe, "cpu", offload="group")
    hooks = HookRegistry.check_if_exists_or_initialize(pipe.transformer.transformer_blocks[0])._hook_order
    assert "group_offloading" in hooks  # block level: each block is a group
    leaf = HookRegistry.check_if_exists_or_initialize(pipe.vae.decoder.conv_in.conv)._hook_order
    assert "group_offloading" in leaf  # leaf level: the VAE's decoder, called directly by the section decode
    np.testing.assert_array_equal(_frames(pipe), plain)


def test_fp8_weights_equal_the_run_with_fp8_rounded_weights(plain):
    """Layerwise float8 storage changes exactly one thing, the stored weights' rounding: a plain run whose
    transformer weights were rounded through float8 (the same tensors) gives identical frames. Against the
    unrounded weights the frames move by the rounding's effect (bounded here, then compared exactly)."""
    pipe = _pipe()
    apply_memory_settings(pipe, "cpu", weights_dtype="fp8")
    stored = {n: p for n, p in pipe.transformer.named_parameters() if p.dtype == FP8_STORAGE}
    in_blocks = [
        n
        for n, _ in pipe.transformer.named_parameters()
        if n.split(".")[0] in ("transformer_blocks", "single_transformer_blocks") and "norm" not in n
    ]
    assert in_blocks and set(in_blocks) <= set(stored)  # every block weight but the norms is stored in float8
    assert pipe.transformer.transformer_blocks[0].attn.to_q.weight.dtype == FP8_STORAGE
    frames = _frames(pipe)

    rounded = _pipe()
    with torch.no_grad():
        for name, param in rounded.transformer.named_parameters():
            if name in stored:
                param.copy_(stored[name].float())
    np.testing.assert_array_equal(frames, _frames(rounded))
    diff = np.abs(frames - plain)
    assert 0 < diff.max() <= 0.05  # measured 0.016 (4/255): float8 rounding moves pixels, no more
    print(f"fp8 storage vs plain: max |Δ| {diff.max():.4f}, mean {diff.mean():.5f} (frames in [0, 1])")


def test_bad_settings_are_one_line():
    with pytest.raises(ValueError, match="offload must be one of"):
        apply_memory_settings(_pipe(), "cpu", offload="disk")
    with pytest.raises(ValueError, match="weights_dtype must be one of"):
        apply_memory_settings(_pipe(), "cpu", weights_dtype="int4")
