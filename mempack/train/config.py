"""The training config, in parts: one dataclass per component (data, optim, schedule, distributed, placement,
checkpoint, tracking, validation), defaults that run offline on the built-in sample.

Each component is handed its own part, not the whole run, so what it can read is what it depends on, and
`--resume` decides by part (mempack/train/checkpoint.py): a setting added to a part follows its part's rule.
The flat names of before the parts (`--lr`, `lr:` in a file) stay valid through `TrainConfig.ALIASES`.
"""

from __future__ import annotations

import dataclasses
import operator
from dataclasses import dataclass, field
from typing import ClassVar

from mempack import layout
from mempack.model.history import HistoryLayout
from mempack.model.semantic_pack import MEMORIZE_INPUTS, POOLINGS, canonical_option
from mempack.train.forcing import ForcingConfig, resolve_mode
from mempack.train.optim import resolve_trainable
from mempack.train.step import check_stage1_clips

MLFLOW_WEIGHTS = ("upload", "reference")


@dataclass
class ArchitectureConfig:
    """Stage-1 architecture choices, for longer histories and the paper's ablations (`--set model.KEY=V`).

    Stage 2 fine-tunes the head of what stage 1 exported, so it always keeps the export's choices.
    """

    frames_1x: int = HistoryLayout.frames_1x  # FramePack-F1 history: newest frames at full resolution ...
    frames_2x: int = HistoryLayout.frames_2x  # ... then at 2x compression ...
    frames_4x: int = HistoryLayout.frames_4x  # ... then at 4x (F1: 1 + 2 + 16; longer costs more tokens)
    rope: str = "absolute"  # RoPE consistency; "relative" is F1's fixed layout (ablation)
    semantic_pack: bool = True  # False: FramePack-only (ablation)
    structure: str = "A"  # Squeeze structure of appendix A.1: A, B or C
    memory_init: str = "prompt_image"  # ψ₀ = prompt ⊕ image, or "zero" (ablation)
    memorize_input: str = "minus_start_latent"  # what Memorize reads; "segment": the section as is (old: novelty)
    pooling: str = "input_energy"  # Memorize's pooling biased by its input's energy; "learned": queries alone
    carry: bool = True  # ψₙ₊₁ = (Squeeze(ψₙ, Memorize(xⁿ)) + ψₙ)/√2 (semantic_pack.py says why each)
    context_gate: bool = True  # ψ through a zero-initialised gate: stage 1 starts from F1 unchanged (context_gate.py)
    gate_gain: float = 100.0  # g = gain · value: how fast the gate opens under Adam (ContextGate says why)

    def __post_init__(self) -> None:
        HistoryLayout(self.frames_1x, self.frames_2x, self.frames_4x)  # raises on an empty stream
        self.memorize_input = canonical_option("memorize_input", self.memorize_input)
        self.pooling = canonical_option("pooling", self.pooling)
        for name, value, allowed in (
            ("rope", self.rope, ("absolute", "relative")),
            ("structure", self.structure, ("A", "B", "C")),
            ("memory_init", self.memory_init, ("prompt_image", "zero")),
            ("memorize_input", self.memorize_input, MEMORIZE_INPUTS),
            ("pooling", self.pooling, POOLINGS),
        ):
            if value not in allowed:
                raise ValueError(f"model.{name} must be one of {allowed}, got {value!r}")
        if not self.gate_gain > 0:
            raise ValueError(f"model.gate_gain must be > 0, got {self.gate_gain!r}")

    def model_overrides(self) -> dict:
        """Keyword arguments of `MemoryPackTransformer.from_preset` / `from_pretrained`."""
        return dict(
            frames_1x=self.frames_1x,
            frames_2x=self.frames_2x,
            frames_4x=self.frames_4x,
            rope=self.rope,
            use_semantic_pack=self.semantic_pack,
            semantic_pack_overrides=dict(
                structure=self.structure,
                init=self.memory_init,
                memorize_input=self.memorize_input,
                pooling=self.pooling,
                carry=self.carry,
                context_gate=self.context_gate,
                gate_gain=self.gate_gain,
            ),
        )


@dataclass
class DataConfig:
    """What a run trains on and in which order (mempack.train.data): the prep output, the curriculum, the batch."""

    path: str = str(layout.prep_dir())  # the prep output (pipelines/prep.py) to train on
    curriculum: str = "progression"  # buckets short → long once ("cycle": short → long every pass; data.curriculum)
    batch_size: int = 1  # videos per worker per step (one bucket: same clips and size), 1 as F1 and the paper
    stage1_clips: str = "uniform"  # which clip a stage-1 step trains: uniform, late (∝ i + 1) or all (train/step.py)

    def __post_init__(self) -> None:
        if self.curriculum not in ("progression", "cycle"):
            raise ValueError(f"curriculum must be 'progression' or 'cycle', got {self.curriculum!r}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        check_stage1_clips(self.stage1_clips)


@dataclass
class OptimConfig:
    """The optimisation (mempack.train.optim, deepspeed_config): learning rates, what trains, clipping, EMA."""

    lr: float = 1e-5
    memory_lr: float | None = None  # what writes ψ (SemanticPack but its projection); None: lr (mempack.train.optim)
    trainable: str | None = None  # "all" or "head"; None: the stage's (stage 1 all, stage 2 head, as the paper)
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # DeepSpeed's gradient_clipping (global norm); 0 disables
    warmup_steps: int = 0  # linear LR warm-up from 0 over this many optimizer steps, then constant (the paper's)
    ema_decay: float = 0.0  # > 0: keep an EMA of the trained weights and export it beside the raw ones (model_ema/)

    def __post_init__(self) -> None:
        if self.warmup_steps < 0 or self.grad_clip < 0:
            raise ValueError("warmup_steps and grad_clip must be >= 0")
        if self.memory_lr is not None and self.memory_lr <= 0:
            raise ValueError(f"memory_lr must be > 0 (or unset: lr), got {self.memory_lr}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        resolve_trainable(self.trainable, 1)  # raises on an unknown scope (None: the stage's, any stage)


@dataclass
class ScheduleConfig:
    """How long a run trains and how long it tolerates non-finite steps (mempack.train.loop)."""

    max_steps: int = 40  # optimizer steps (one per video in stage 2)
    epochs: int = 1000  # upper bound on passes over every bucket; max_steps usually stops first
    max_nonfinite_steps: int = 5  # steps in a row with a non-finite loss or gradients before the run stops

    def __post_init__(self) -> None:
        if self.max_nonfinite_steps < 1:
            raise ValueError(f"max_nonfinite_steps must be >= 1, got {self.max_nonfinite_steps}")


@dataclass
class DistributedConfig:
    """The workers and the DeepSpeed engine they run (mempack.train.deepspeed_config): the layout a checkpoint
    is written in and what the memory plan (`train.py --plan`) is of."""

    num_workers: int = 2
    use_gpu: bool = False
    deepspeed: str | None = None  # JSON file; default built in code
    zero_stage: int = 2
    gradient_checkpointing: bool = False


@dataclass
class PlacementConfig:
    """Where Ray places the workers; nothing a checkpoint holds depends on it."""

    cpus_per_worker: float = 0.5  # two 1-CPU workers on 2 cores starve Ray Data
    strategy: str = "PACK"  # Ray placement group strategy of the workers (SPREAD: one per node)


@dataclass
class CheckpointConfig:
    """When checkpoints are written and how many failures a run survives (docs/checkpoints.md).

    At 12.9 B a stage-1 checkpoint is ~155 GB, a few minutes to write, so by wall time (every 30 min: a
    failure costs at most that, writing costs a few %) unless steps are asked for.
    """

    every_steps: int = 0  # also every N optimizer steps (0: by time only)
    every_minutes: float = 30.0  # every N minutes of training (0: by steps only)
    scratch: str | None = None  # node-local folder to write into, uploaded in the background (None: storage)
    max_failures: int = 2  # worker failures Ray Train restarts from the last checkpoint

    def __post_init__(self) -> None:
        if self.every_steps < 0 or self.every_minutes < 0:
            raise ValueError("checkpoint_every and checkpoint_minutes must be >= 0 (0: off)")


@dataclass
class TrackingConfig:
    """How the run is reported: MLflow run, console progress, logged model (mempack.train.metrics, trainer)."""

    mlflow_uri: str | None = None
    experiment: str = "mempack-train"
    run_name: str | None = None
    log_every: int = 1
    progress_every: int = 10  # rank-0 console line every N steps: step, loss, s/step, ETA (0: off)
    system_metrics: bool = False  # also log CPU, memory and GPU use of every node to the run (MLflow system metrics)
    register_model: str | None = None  # register the logged MLflow Model under this name (registry aliases, not stages)
    mlflow_weights: str = "upload"  # "upload": the export is the MLflow Model's artifact; "reference": only its path

    def __post_init__(self) -> None:
        if self.mlflow_weights not in MLFLOW_WEIGHTS:
            raise ValueError(f"mlflow_weights must be one of {MLFLOW_WEIGHTS}, got {self.mlflow_weights!r}")


@dataclass
class ValidationConfig:
    """The validation video rendered during training (mempack.train.validation)."""

    every: int = 0  # render a validation video every N steps on rank 0 and log it to MLflow (0: off)
    image: str | None = None  # start image of the validation video (default: the built-in sample image)
    prompt: str = ""  # prompt of the validation video (default: the built-in sample prompt)
    sections: int = 1  # length of the validation video in sections
    steps: int = 10  # sampling steps of the validation video


# The flat keys of the config before it had parts (`--lr`, `lr:` in a config file, `--set lr=...`), by the
# dotted key each is now. Every leaf of these parts keeps its old name as its flag; these few were renamed.
_RENAMED = {
    "data.path": "data",
    "placement.strategy": "placement_strategy",
    "checkpoint.every_steps": "checkpoint_every",
    "checkpoint.every_minutes": "checkpoint_minutes",
    "checkpoint.scratch": "checkpoint_scratch",
    "validation.every": "sample_every",
    "validation.image": "sample_image",
    "validation.prompt": "sample_prompt",
    "validation.sections": "sample_sections",
    "validation.steps": "sample_steps",
}
_FLAT_PARTS = {
    "data": DataConfig,
    "optim": OptimConfig,
    "schedule": ScheduleConfig,
    "distributed": DistributedConfig,
    "placement": PlacementConfig,
    "checkpoint": CheckpointConfig,
    "tracking": TrackingConfig,
    "validation": ValidationConfig,
}
FLAT_KEYS = {
    _RENAMED.get(f"{part}.{f.name}", f.name): f"{part}.{f.name}"
    for part, cls in _FLAT_PARTS.items()
    for f in dataclasses.fields(cls)
}


@dataclass
class TrainConfig:
    """One training run, in parts: each component is handed its own part (`config.optim`, `config.data`...).

    The top level says what is trained from what (stage, preset, weights, seed, architecture, forcing).
    Every leaf of a part is also reachable by its flat name of before the split: the flag (`--lr`), a config
    file's or `--set`'s key (`lr: 1e-5`) and, read-only, the attribute (`config.lr`, for code written
    against the flat config, e.g. mempack.train.plan).
    """

    ALIASES: ClassVar[dict[str, str]] = FLAT_KEYS  # mempack.config resolves these keys, flags and attributes

    stage: int = 1
    output: str = ""  # default: outputs/train/stage{stage}
    preset: str = "tiny"
    pretrained: str | None = None  # FramePack-F1 transformer (diffusers layout) or one of our exports
    init: str | None = None  # stage 2: the stage-1 export to start from
    seed: int = 0
    model: ArchitectureConfig = field(default_factory=ArchitectureConfig)
    forcing: ForcingConfig = field(default_factory=ForcingConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    placement: PlacementConfig = field(default_factory=PlacementConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)

    def __post_init__(self) -> None:
        if self.stage not in (1, 2):
            raise ValueError(f"stage must be 1 or 2, got {self.stage}")
        if not self.output:
            self.output = str(layout.stage_dir(self.stage))

    def __getattr__(self, name: str):
        """`config.lr` reads `config.optim.lr` (only called for names that are not attributes)."""
        dotted = FLAT_KEYS.get(name)
        if dotted is None:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        return operator.attrgetter(dotted)(self)

    def __setattr__(self, name: str, value) -> None:
        if name in FLAT_KEYS and name not in self.__dataclass_fields__:  # would shadow the part's value silently
            raise AttributeError(f"TrainConfig.{name} is read-only; set {FLAT_KEYS[name]}")
        super().__setattr__(name, value)

    def resolved_forcing(self) -> ForcingConfig:
        """The forcing config with the stage's default mode filled in (stage 1 teacher, stage 2 direct)."""
        return dataclasses.replace(self.forcing, mode=resolve_mode(self.forcing.mode, self.stage))

    def resolved_trainable(self) -> str:
        """What this run trains: `optim.trainable`, or the stage's default (stage 1 all, stage 2 the head)."""
        return resolve_trainable(self.optim.trainable, self.stage)
