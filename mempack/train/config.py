"""The training config: one dataclass, defaults that run offline on the built-in sample."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

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
class TrainConfig:
    """Stage, data, model, optimisation, Ray and tracking settings of one training run."""

    stage: int = 1
    data: str = str(layout.prep_dir())
    output: str = ""  # default: outputs/train/stage{stage}
    preset: str = "tiny"
    pretrained: str | None = None  # FramePack-F1 transformer (diffusers layout) or one of our exports
    model: ArchitectureConfig = field(default_factory=ArchitectureConfig)
    init: str | None = None  # stage 2: the stage-1 export to start from
    seed: int = 0
    # optimisation
    lr: float = 1e-5
    memory_lr: float | None = None  # what writes ψ (SemanticPack but its projection); None: lr (mempack.train.optim)
    trainable: str | None = None  # "all" or "head"; None: the stage's (stage 1 all, stage 2 head, as the paper)
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # DeepSpeed's gradient_clipping (global norm); 0 disables
    warmup_steps: int = 0  # linear LR warm-up from 0 over this many optimizer steps, then constant (the paper's)
    ema_decay: float = 0.0  # > 0: keep an EMA of the trained weights and export it beside the raw ones (model_ema/)
    max_nonfinite_steps: int = 5  # steps in a row with a non-finite loss or gradients before the run stops
    batch_size: int = 1  # videos per worker per step (one bucket: same clips and size), 1 as F1 and the paper
    max_steps: int = 40  # optimizer steps (one per video in stage 2)
    epochs: int = 1000  # upper bound on passes over every bucket; max_steps usually stops first
    curriculum: str = "progression"  # buckets short → long once ("cycle": short → long every pass; data.curriculum)
    forcing: ForcingConfig = field(default_factory=ForcingConfig)
    stage1_clips: str = "uniform"  # which clip a stage-1 step trains: uniform, late (∝ i + 1) or all (train/step.py)
    gradient_checkpointing: bool = False
    # distribution
    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: float = 0.5  # two 1-CPU workers on 2 cores starve Ray Data
    placement_strategy: str = "PACK"  # Ray placement group strategy of the workers (SPREAD: one per node)
    deepspeed: str | None = None  # JSON file; default built in code
    zero_stage: int = 2
    # checkpoints (docs/checkpoints.md): at 12.9 B a stage-1 checkpoint is ~155 GB, a few minutes to write, so
    # by wall time (every 30 min: a failure costs at most that, writing costs a few %) unless steps are asked for
    checkpoint_every: int = 0  # also every N optimizer steps (0: by time only)
    checkpoint_minutes: float = 30.0  # every N minutes of training (0: by steps only)
    checkpoint_scratch: str | None = None  # node-local folder to write into, uploaded in the background (None: storage)
    max_failures: int = 2
    # tracking
    mlflow_uri: str | None = None
    experiment: str = "mempack-train"
    run_name: str | None = None
    log_every: int = 1
    progress_every: int = 10  # rank-0 console line every N steps: step, loss, s/step, ETA (0: off)
    sample_every: int = 0  # render a validation video every N steps on rank 0 and log it to MLflow (0: off)
    sample_image: str | None = None  # start image of the validation video (default: the built-in sample image)
    sample_prompt: str = ""  # prompt of the validation video (default: the built-in sample prompt)
    sample_sections: int = 1  # length of the validation video in sections
    sample_steps: int = 10  # sampling steps of the validation video
    system_metrics: bool = False  # also log CPU, memory and GPU use of every node to the run (MLflow system metrics)
    register_model: str | None = None  # register the logged MLflow Model under this name (registry aliases, not stages)
    mlflow_weights: str = "upload"  # "upload": the export is the MLflow Model's artifact; "reference": only its path

    def __post_init__(self) -> None:
        if self.stage not in (1, 2):
            raise ValueError(f"stage must be 1 or 2, got {self.stage}")
        if not self.output:
            self.output = str(layout.stage_dir(self.stage))
        if self.warmup_steps < 0 or self.grad_clip < 0 or self.max_nonfinite_steps < 1 or self.batch_size < 1:
            raise ValueError("warmup_steps and grad_clip must be >= 0, batch_size and max_nonfinite_steps >= 1")
        if self.memory_lr is not None and self.memory_lr <= 0:
            raise ValueError(f"memory_lr must be > 0 (or unset: lr), got {self.memory_lr}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        resolve_trainable(self.trainable, self.stage)  # raises on an unknown scope
        if self.checkpoint_every < 0 or self.checkpoint_minutes < 0:
            raise ValueError("checkpoint_every and checkpoint_minutes must be >= 0 (0: off)")
        if self.mlflow_weights not in MLFLOW_WEIGHTS:
            raise ValueError(f"mlflow_weights must be one of {MLFLOW_WEIGHTS}, got {self.mlflow_weights!r}")
        if self.curriculum not in ("progression", "cycle"):
            raise ValueError(f"curriculum must be 'progression' or 'cycle', got {self.curriculum!r}")
        check_stage1_clips(self.stage1_clips)

    def resolved_forcing(self) -> ForcingConfig:
        """The forcing config with the stage's default mode filled in (stage 1 teacher, stage 2 direct)."""
        return dataclasses.replace(self.forcing, mode=resolve_mode(self.forcing.mode, self.stage))

    def resolved_trainable(self) -> str:
        """What this run trains: `trainable`, or the stage's default (stage 1 all, stage 2 the head)."""
        return resolve_trainable(self.trainable, self.stage)
