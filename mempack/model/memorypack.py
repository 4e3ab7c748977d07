"""The MemoryPack transformer: diffusers' FramePack-F1 MM-DiT + SemanticPack, not a fork.

How ψ enters the backbone. The backbone already joins two kinds of context tokens in front of the
video tokens: the SigLIP image tokens (through `image_projection`) and the refined text tokens.
Neither gets RoPE, and the image tokens' attention mask is built from `image_projection`'s output
length. So a forward hook on `image_projection` that returns `[ψ tokens ; image tokens]` adds ψ as
extra context tokens with no change to diffusers' code or weight names: FramePack-F1 checkpoints load
as they are, and with ψ switched off the hook is a no-op — the output is bit-identical to calling
diffusers directly. With ψ on, ψ's keys get their own softmax in each block, weighted by SemanticPack's
gate (0 at init): a fresh SemanticPack leaves F1's output unchanged (`context_gate.py`). ψ is built from
timestep-independent features and updated once per section, outside the denoising loop; only its
projection to the backbone width runs inside each forward.

For batch size 1 (how F1 and the paper train and sample) padded ψ tokens are dropped exactly; with
a batch they are zero vectors, the best the backbone's image-token mask (all ones) allows.
"""

from __future__ import annotations

import json
import logging
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from diffusers import HunyuanVideoFramepackTransformer3DModel
from torch import nn

from mempack import flow
from mempack.model import context_gate
from mempack.model.context_gate import GateState
from mempack.model.history import DEFAULT_TRAINED_SECONDS, POSITIONS, HistoryLayout, PackedHistory
from mempack.model.semantic_pack import SemanticMemory, SemanticPack
from mempack.presets import FPS, PRESETS, VAE_TEMPORAL, Preset, get_preset

log = logging.getLogger(__name__)

CONFIG_NAME = "mempack.json"
BACKBONE_DIR = "transformer"
SEMANTIC_PACK_DIR = "semantic_pack"


@dataclass
class Conditioning:
    """Per-video conditions: prompt tokens + mask, pooled prompt, image tokens, start latent."""

    prompt_embeds: torch.Tensor  # [B, L, text_dim]
    prompt_mask: torch.Tensor  # [B, L]
    pooled: torch.Tensor  # [B, pooled_dim]
    image_embeds: torch.Tensor  # [B, N, image_dim]
    start_latent: torch.Tensor  # [B, C, 1, h, w]

    def to(self, device=None, dtype=None) -> Conditioning:
        return Conditioning(
            self.prompt_embeds.to(device=device, dtype=dtype),
            self.prompt_mask.to(device=device),
            self.pooled.to(device=device, dtype=dtype),
            self.image_embeds.to(device=device, dtype=dtype),
            self.start_latent.to(device=device, dtype=dtype),
        )


@dataclass
class MemoryPackConfig:
    """What the wrapper adds to the two diffusers configs; saved as mempack.json."""

    preset: str = "tiny"
    use_semantic_pack: bool = True
    rope: str = "absolute"
    frames_1x: int = 1
    frames_2x: int = 2
    frames_4x: int = 16
    window: int = 9
    # Past the trained length (history.py, docs/long_videos.md): the positions a section gets beyond the
    # longest training video (a generation call may override it), and that length in sections; None: the
    # length prep cuts training videos to by default (60 s).
    positions: str = "shift"
    trained_sections: int | None = None

    def __post_init__(self) -> None:
        if self.positions not in POSITIONS:
            raise ValueError(f"positions must be one of {POSITIONS}, got {self.positions!r}")
        if self.trained_sections is not None and self.trained_sections < 1:
            raise ValueError(f"trained_sections must be >= 1, got {self.trained_sections}")

    @property
    def layout(self) -> HistoryLayout:
        return HistoryLayout(self.frames_1x, self.frames_2x, self.frames_4x, self.window)

    @property
    def trained_frames(self) -> int:
        """Latent frames of the longest training video, the start latent included (1 + window·sections)."""
        sections = self.trained_sections
        if sections is None:
            sections = round(DEFAULT_TRAINED_SECONDS * FPS / (VAE_TEMPORAL * self.window))
        return 1 + self.window * sections

    # The one reader and writer of mempack.json (diffusers' ConfigMixin with `config_name`, in small).
    def save(self, folder: str | Path) -> Path:
        """Write `folder/mempack.json`: what makes a folder a MemoryPack model (or pipeline) folder."""
        path = Path(folder) / CONFIG_NAME
        path.write_text(json.dumps(asdict(self), indent=2))
        return path

    @classmethod
    def load(cls, folder: str | Path) -> MemoryPackConfig:
        """Read `folder/mempack.json` (FileNotFoundError without one); an unknown key is a TypeError."""
        return cls(**json.loads((Path(folder) / CONFIG_NAME).read_text()))

    @staticmethod
    def saved_in(folder: str | Path) -> bool:
        """Whether `folder` holds a saved config (an export, as opposed to plain diffusers weights)."""
        return (Path(folder) / CONFIG_NAME).is_file()


@contextmanager
def default_dtype(dtype: torch.dtype | None):
    """Parameters created inside are `dtype` from the start: a bf16 model never passes through an
    fp32 copy (which at 12.9 B parameters is 52 GB per process)."""
    if dtype is None:
        yield
        return
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def build_backbone(
    preset: str | Preset, device: torch.device | str = "cpu", dtype: torch.dtype | None = None
) -> HunyuanVideoFramepackTransformer3DModel:
    """A randomly initialised backbone of a preset's size (device="meta" allocates nothing)."""
    with torch.device(device), default_dtype(dtype):
        return HunyuanVideoFramepackTransformer3DModel(**get_preset(preset).transformer)


@dataclass(frozen=True)
class PretrainedFolders:
    """Where a pretrained model's parts live: our export or a plain diffusers transformer folder."""

    saved_config: dict  # mempack.json, empty for plain FramePack-F1 weights
    backbone: Path
    semantic_pack: Path | None  # None: SemanticPack starts from random init


def pretrained_folders(path: str | Path) -> PretrainedFolders:
    """Resolve `path` (export, diffusers transformer folder, or a folder holding transformer/)."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"no model folder at {path}")
    saved = {}
    if MemoryPackConfig.saved_in(path):
        saved = asdict(MemoryPackConfig.load(path))
        backbone_dir = path / BACKBONE_DIR
    elif (path / "config.json").is_file():
        backbone_dir = path
    elif (path / BACKBONE_DIR / "config.json").is_file():
        backbone_dir = path / BACKBONE_DIR
    else:
        raise FileNotFoundError(f"{path} holds neither {CONFIG_NAME} nor a diffusers transformer config.json")
    sp_dir = path / SEMANTIC_PACK_DIR
    return PretrainedFolders(saved, backbone_dir, sp_dir if sp_dir.is_dir() else None)


def _preset_matching(backbone: HunyuanVideoFramepackTransformer3DModel) -> str:
    """The preset whose transformer has this backbone's widths (what a fresh SemanticPack must match)."""
    keys = ("num_attention_heads", "attention_head_dim", "text_embed_dim", "image_proj_dim")
    for name, preset in PRESETS.items():
        if all(preset.transformer[k] == backbone.config[k] for k in keys):
            return name
    raise ValueError(
        f"no preset matches this backbone's widths ({', '.join(f'{k}={backbone.config[k]}' for k in keys)});"
        " pass preset=... and semantic_pack_overrides"
    )


def _join_memory_tokens(module: nn.Module, args, output: torch.Tensor) -> torch.Tensor:
    """`image_projection`'s forward hook: [ψ tokens ; image tokens] while a wrapper's forward has ψ pending."""
    pending = getattr(module, "_mempack_pending", None)
    return output if pending is None else torch.cat([pending.to(output.dtype), output], dim=1)


def _own_memory_hook(projection: nn.Module) -> None:
    """One hook per backbone, whatever number of wrappers share it (training's model and the validation
    pipeline's, stage 2 over stage 1's): the pending ψ lives on the module, so the hook holds no wrapper alive
    and every wrapper of the backbone keeps working."""
    if getattr(projection, "_mempack_hook", None) is None:
        projection._mempack_pending = None
        projection._mempack_hook = projection.register_forward_hook(_join_memory_tokens)


class MemoryPackTransformer(nn.Module):
    """FramePack-F1 backbone with SemanticPack memory, speaking the paper's flow convention."""

    def __init__(
        self,
        backbone: HunyuanVideoFramepackTransformer3DModel,
        semantic_pack: SemanticPack | None,
        config: MemoryPackConfig | None = None,
    ):
        super().__init__()
        self.backbone = backbone
        self.semantic_pack = semantic_pack
        self.config = config or MemoryPackConfig()
        _own_memory_hook(backbone.image_projection)
        if semantic_pack is not None and semantic_pack.gate is not None:
            context_gate.install(backbone)  # once per backbone

    # ----- construction and persistence -------------------------------------------------------
    @classmethod
    def from_preset(
        cls,
        preset: str | Preset = "tiny",
        *,
        device: torch.device | str = "cpu",
        seed: int | None = 0,
        dtype: torch.dtype | None = None,
        semantic_pack_overrides: dict | None = None,
        backbone_context=None,
        **config_overrides,
    ) -> MemoryPackTransformer:
        """Random-init model of a named size, created directly in `dtype` (default: torch's default);
        `framepack-f1` on device="meta" for sizing. `backbone_context` (e.g. `deepspeed.zero.Init`) is
        entered while the backbone is built; SemanticPack, small and built with deep copies of its
        layers (which partitioned construction cannot follow), is built outside it."""
        if seed is not None:
            torch.manual_seed(seed)
        config = MemoryPackConfig(preset=get_preset(preset).name, **config_overrides)
        with backbone_context or nullcontext():
            backbone = build_backbone(preset, device, dtype)
        semantic_pack = None
        if config.use_semantic_pack:
            with torch.device(device), default_dtype(dtype):
                semantic_pack = SemanticPack(**{**get_preset(preset).semantic_pack, **(semantic_pack_overrides or {})})
        return cls(backbone, semantic_pack, config)

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        semantic_pack_overrides: dict | None = None,
        backbone_context=None,
        **config_overrides,
    ) -> MemoryPackTransformer:
        """Load an exported MemoryPack model, or plain FramePack-F1 weights in diffusers layout.

        `path` may be our export (mempack.json + transformer/ + semantic_pack/), or a diffusers
        transformer folder (config.json + safetensors): then SemanticPack starts fresh at the preset
        that matches the backbone's width. Nothing is downloaded. With `backbone_context` (ZeRO-3's
        `deepspeed.zero.Init`) the backbone is built from its config alone inside that context, in
        `dtype`, with no weight file read: its weights go into the partitions afterwards
        (`mempack.train.zero3.load_into_partitions`); SemanticPack loads as usual.
        """
        folders = pretrained_folders(path)
        if backbone_context is None:
            backbone = HunyuanVideoFramepackTransformer3DModel.from_pretrained(
                folders.backbone, torch_dtype=dtype, local_files_only=True
            ).to(device)
        else:
            with backbone_context, torch.device(device), default_dtype(dtype):
                backbone = HunyuanVideoFramepackTransformer3DModel.from_config(
                    HunyuanVideoFramepackTransformer3DModel.load_config(folders.backbone)
                )
        if not folders.saved_config and "preset" not in config_overrides:
            config_overrides["preset"] = _preset_matching(backbone)
        config = MemoryPackConfig(**{**folders.saved_config, **config_overrides})
        semantic_pack = None
        if config.use_semantic_pack:
            sp_dir = folders.semantic_pack
            if sp_dir is not None:
                semantic_pack = SemanticPack.from_pretrained(sp_dir, torch_dtype=dtype, local_files_only=True)
            else:
                log.info("no %s/ under %s: SemanticPack starts from random init", SEMANTIC_PACK_DIR, path)
                kwargs = {**get_preset(config.preset).semantic_pack, **(semantic_pack_overrides or {})}
                with torch.device(device), default_dtype(dtype):
                    semantic_pack = SemanticPack(**kwargs)
            if sp_dir is not None and semantic_pack_overrides:
                overrides = dict(semantic_pack_overrides)
                if "context_gate" in overrides or "gate_gain" in overrides:  # modules, not only config
                    semantic_pack.configure_gate(
                        overrides.pop("context_gate", semantic_pack.gate is not None),
                        overrides.pop("gate_gain", semantic_pack.config.gate_gain),
                    )
                semantic_pack.register_to_config(**overrides)
            semantic_pack = semantic_pack.to(device)
        return cls(backbone, semantic_pack, config)

    def save_pretrained(self, path: str | Path, *, safe_serialization: bool = True) -> Path:
        """Write mempack.json + transformer/ + semantic_pack/ (safetensors), the layout infer loads."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.backbone.save_pretrained(path / BACKBONE_DIR, safe_serialization=safe_serialization)
        if self.semantic_pack is not None:
            self.semantic_pack.save_pretrained(path / SEMANTIC_PACK_DIR, safe_serialization=safe_serialization)
        self.config.save(path)
        return path

    # ----- memory ------------------------------------------------------------------------------
    @property
    def uses_memory(self) -> bool:
        return self.semantic_pack is not None and self.config.use_semantic_pack

    def initial_memory(self, cond: Conditioning) -> SemanticMemory | None:
        """ψ₀ from the prompt and image features (None when SemanticPack is off)."""
        if not self.uses_memory:
            return None
        return self.semantic_pack.initial_memory(
            cond.prompt_embeds, cond.prompt_mask, cond.image_embeds, cond.start_latent
        )

    def update_memory(self, memory: SemanticMemory | None, segment_latents: torch.Tensor) -> SemanticMemory | None:
        """ψₙ₊₁ = Squeeze(ψₙ, Memorize(xⁿ)), once per finished section."""
        if memory is None or not self.uses_memory:
            return memory
        return self.semantic_pack.update(memory, segment_latents)

    @contextmanager
    def _memory_tokens(self, memory: SemanticMemory | None):
        if memory is None or not self.uses_memory:
            yield
            return
        tokens = self.semantic_pack.context_tokens(memory)
        if tokens.shape[0] == 1:
            tokens = tokens[:, memory.mask[0]]
        projection = self.backbone.image_projection
        gate = self.semantic_pack.gate
        projection._mempack_pending = tokens
        try:
            if gate is None:
                yield
            else:
                with context_gate.gated(self.backbone, GateState(tokens.shape[1], gate())):
                    yield
        finally:
            projection._mempack_pending = None

    # ----- forward -----------------------------------------------------------------------------
    def forward(
        self,
        noisy_latents: torch.Tensor,
        t: torch.Tensor,
        cond: Conditioning,
        history: PackedHistory,
        memory: SemanticMemory | None = None,
        guidance: float = 1.0,
    ) -> torch.Tensor:
        """Velocity v_θ(x_t, t) in the paper's convention (target x − ε) for one section.

        noisy_latents [B, C, window, h, w]; t [B] paper time (1 = data); `guidance` is F1's distilled
        guidance scale (embedded as scale × 1000).
        """
        batch = noisy_latents.shape[0]
        dtype = self.backbone.dtype
        t = torch.as_tensor(t, device=noisy_latents.device).reshape(-1).expand(batch)
        guidance_t = torch.full((batch,), guidance * 1000.0, device=noisy_latents.device, dtype=dtype)
        history = history.to(device=noisy_latents.device, dtype=dtype)
        with self._memory_tokens(memory):
            prediction = self.backbone(
                hidden_states=noisy_latents.to(dtype),
                timestep=flow.to_backbone_timestep(t.float()),  # fp32, as diffusers: bf16 rounds t (8-bit mantissa)
                encoder_hidden_states=cond.prompt_embeds.to(dtype),
                encoder_attention_mask=cond.prompt_mask,
                pooled_projections=cond.pooled.to(dtype),
                image_embeds=cond.image_embeds.to(dtype),
                guidance=guidance_t,
                return_dict=False,
                **history.backbone_kwargs(),
            )[0]
        return flow.velocity_from_backbone(prediction)

    # ----- parameter groups --------------------------------------------------------------------
    def head_parameters(self) -> list[nn.Parameter]:
        """The final norm and output projection: what Direct Forcing (stage 2) trains."""
        return list(self.backbone.norm_out.parameters()) + list(self.backbone.proj_out.parameters())

    def set_trainable(self, scope: str) -> int:
        """'all' (stage 1) or 'head' (stage 2); returns the number of trainable parameters."""
        if scope not in ("all", "head"):
            raise ValueError(f"scope must be 'all' or 'head', got {scope!r}")
        for p in self.parameters():
            p.requires_grad_(scope == "all")
        if scope == "head":
            for p in self.head_parameters():
                p.requires_grad_(True)
        return sum(p.numel() for p in self.parameters() if p.requires_grad)
