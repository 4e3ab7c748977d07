"""Where does MemoryPack's memory get stuck? One-model probes behind the README's diagnosis table.

Trains one model of `bench/method_fidelity.py`'s size on the synthetic world with mempack's own trainer
(`mempack.train.in_process.train_in_process`, the per-video step the Ray loop runs), and before training and
every `--every` steps prints memory
recall (`mempack.fidelity.metrics.memory_recall`), the held-out ψ read-out (`memory_probe`), how loudly ψ holds
the identity (`memory_energy`) and the gradient RMS of each part of the model. The knobs isolate the
halves of the memory claim:

    --variant oracle_memory     ψ holds the answer: can the backbone, sampler and scorer use a memory?
    --clip return               train only each video's return section (the oracle curriculum: the one clip
                                that needs memory, found from the world's layout); uniform, late, all: the
                                library's stage-1 clip policies
    --world-seed 1 --camera moving
                                the world (seed 0 is the development world, where choices are made; the
                                JSON says which role the world has)
    --freeze-memory             Memorize/Squeeze frozen (ψ's projection and the backbone train)
    --absence 1,1 --eval 1      one absence length only
    --memory-lr 2e-5            what writes ψ at its own learning rate (Adam's noise at 1e-3 erases ψ)
    --oracle-share 0.01         the oracle's code as 1 % of its token's energy (a learned ψ's proportions)
    --memorize-input segment --pooling learned --no-carry
                                SemanticPack read literally (each flag alone: one ablation)

    python bench/memory_diagnosis.py --variant oracle_memory --clip return --steps 400
    python bench/memory_diagnosis.py --clip return --absence 1,1 --eval 1 --freeze-memory --steps 1200

Writes the curve as JSON (`--json`, default bench/results/memory_diagnosis.json).
"""

# No `from __future__ import annotations`: tests load this file without registering it in sys.modules, and
# a dataclass with string annotations needs its module there.
import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Clip = Literal["uniform", "late", "all", "return"]  # the library's stage-1 clip policies, or the return section


@dataclass
class Options:
    """The benchmark's flags (mempack.config.parse_config: also --set KEY=VALUE, --config, --print-config)."""

    variant: Literal["memorypack", "oracle_memory", "zero_memory"] = "memorypack"
    clip: Clip = "uniform"  # which clip of a video trains: a library stage-1 clip policy, or the return section only
    world_seed: int = 0  # the world; 0 is the development world
    camera: Literal["static", "moving"] = "static"
    freeze_memory: bool = False  # freeze SemanticPack except its projection
    steps: int = 600
    every: int = 200  # evaluate every N steps
    identities: int = 4
    absence: str = "1,8"  # absent sections in training videos, LO,HI
    eval: str = "1,4"  # absences to evaluate, comma-separated
    events: int = 12  # return events per L (identities cycle: use a multiple of K)
    probe_videos: int = 160
    lr: float = 1e-3
    memory_lr: float | None = None  # learning rate of what writes psi: SemanticPack but to_context (default: --lr)
    oracle_share: float = 1.0  # oracle_memory: the identity's share of its token's energy (the rest: the same)
    memorize_input: str = "minus_start_latent"  # what Memorize reads (segment: the paper literally)
    pooling: str = "input_energy"  # Memorize's window pooling: biased by its input's energy per token, or learned
    carry: bool = True  # residual carry of psi between updates
    width: int = 128
    layers: int = 2
    seed: int = 0
    json: str = "bench/results/memory_diagnosis.json"

    def __post_init__(self) -> None:
        try:
            absence, evaluated = self.absence_range, self.eval_absences
        except ValueError:
            raise ValueError("--absence is LO,HI and --eval a comma-separated list of integers") from None
        if len(absence) != 2 or min(absence) < 1 or min(evaluated) < 1:
            raise ValueError("--absence is LO,HI >= 1 and --eval positive integers")
        if not 0.0 < self.oracle_share <= 1.0:
            raise ValueError("--oracle-share must be in (0, 1]")
        if self.steps < 0 or self.every < 1 or self.probe_videos < 8:
            raise ValueError("--steps >= 0 (0: evaluate the untrained model only), --every >= 1, --probe-videos >= 8")

    @property
    def absence_range(self) -> tuple[int, ...]:
        """--absence as integers (LO, HI)."""
        return tuple(int(x) for x in self.absence.split(","))

    @property
    def eval_absences(self) -> list[int]:
        """--eval as integers."""
        return [int(x) for x in self.eval.split(",")]

    def record(self) -> dict:
        """The settings as the results JSON records them (the lists as lists)."""
        return {**dataclasses.asdict(self), "absence": self.absence_range, "eval": self.eval_absences}


def parse_args(argv=None) -> Options:
    from mempack.config import parse_config
    from mempack.model.semantic_pack import MEMORIZE_INPUTS, POOLINGS

    choices = {"memorize_input": MEMORIZE_INPUTS, "pooling": POOLINGS}
    return parse_config(Options, argv, __doc__.splitlines()[0], choices=choices)


def gradient_rms(model) -> dict[str, float]:
    """Root-mean-square gradient per parameter of the backbone and of each SemanticPack part (before
    clipping): how loud each part's training signal is (Adam moves each parameter by ~lr regardless)."""
    parts = {"backbone": model.backbone}
    if model.semantic_pack is not None:
        parts.update((name, module) for name, module in model.semantic_pack.named_children())
    out = {}
    for name, module in parts.items():
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        count = sum(p.numel() for p in module.parameters())
        if grads and count:
            out[name] = float(sum(g.float().square().sum() for g in grads) / count) ** 0.5
    return out


def mean_by_part(rows: list[dict[str, float]]) -> dict[str, float]:
    """Each part's mean over the steps that reached it (a video's first clip trains before any ψ update,
    so Memorize and Squeeze get no gradient on those steps)."""
    parts = sorted({k for row in rows for k in row})
    return {k: sum(row[k] for row in rows if k in row) / sum(k in row for row in rows) for k in parts}


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(1)
    from bench.method_fidelity import Settings, build_model, world_for
    from mempack.fidelity.metrics import energy_shares, memory_recall, psi_tokens, readout_accuracy
    from mempack.fidelity.world import describe_world
    from mempack.train.forcing import ForcingConfig
    from mempack.train.in_process import LocalTrainConfig, train_in_process

    s = Settings(
        identities=args.identities,
        absences=args.eval_absences,
        world_seed=args.world_seed,
        train_steps=args.steps,
        stage2_steps=0,
        stage2_videos=0,
        lr=args.lr,
        stage2_lr=0.0,
        events=args.events,
        drift_sections=1,
        rollouts=1,
        sample_steps=8,
        width=args.width,
        layers=args.layers,
        student_steps=5,
        memory_grad_window=-1,
        out="",
        mlflow_uri=None,
        train_absence=args.absence_range,
        probe_videos=args.probe_videos,
        camera=args.camera,
        semantic_pack=dict(memorize_input=args.memorize_input, pooling=args.pooling, carry=args.carry),
    )
    world = world_for(s, 1)
    model = build_model(s, args.variant, args.seed, world)
    if args.variant == "oracle_memory":
        model.identity_share = args.oracle_share
    curve, losses, grads, began = [], [], [], time.perf_counter()

    def evaluate(step: int) -> None:
        model.eval()
        recall = memory_recall(model, world, args.eval_absences, args.events, seed=900_000_000, steps=8)
        probe = energy = None
        if model.uses_memory:  # ψ built once per absence for both the read-out and its energy shares
            tokens = {
                L: psi_tokens(model, world, L, seed=920_000_000, videos=args.probe_videos) for L in args.eval_absences
            }
            probe = {L: readout_accuracy(*tokens[L], world.config.identities) for L in args.eval_absences}
            energy = {L: energy_shares(*tokens[L]) for L in args.eval_absences}
        model.train()
        window, grad_window = losses[-args.every :], grads[-args.every :]
        row = {
            "step": step,
            "loss": sum(window) / len(window) if window else None,
            "recall": recall.recall,
            "returned": recall.returned,
            "drawn": recall.drawn,
            "psi_readout": probe,
            "psi_energy": energy,
            "grad_rms": mean_by_part(grad_window) if grad_window else None,
            "seconds": time.perf_counter() - began,
        }
        curve.append(row)
        shares = None if energy is None else {L: f"{e['identity']:.4f}/{e['varying']:.3f}" for L, e in energy.items()}
        print(
            f"step {step:>5}  loss {row['loss'] or float('nan'):.4f}  recall {recall.recall}  returned "
            f"{recall.returned}  drawn {recall.drawn}  psi read-out {probe}  psi identity/varying energy {shares}"
            f"  ({row['seconds']:.0f} s)",
            flush=True,
        )

    def on_step(step: int, loss: float) -> None:
        losses.append(loss)
        if (step + 1) % args.every == 0 or step + 1 == args.steps:
            evaluate(step + 1)

    def video(step: int):
        v = world.video(1_000_000 * (args.seed + 1) + step)
        return v.clips(), world.conditioning(v)

    evaluate(0)  # the untrained model: what the architecture carries before any learning
    frozen = ()  # --freeze-memory: what writes ψ; ψ's projection into the backbone (to_context) still trains
    if args.freeze_memory:
        frozen = tuple(
            f"semantic_pack.{name}." for name, _ in model.semantic_pack.named_children() if name != "to_context"
        )
    config = LocalTrainConfig(
        stage=1,
        steps=args.steps,
        lr=args.lr,
        memory_lr=args.memory_lr,
        seed=args.seed,
        forcing=ForcingConfig(mode="teacher", memory_grad_window=-1),
        frozen=frozen,
        stage1_clips="uniform" if args.clip == "return" else args.clip,
    )
    train_in_process(
        model,
        video,
        config,
        on_step=on_step,
        on_gradients=lambda step: grads.append(gradient_rms(model)),
        pick_clip=(lambda clips: clips - 1) if args.clip == "return" else None,
    )
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(
        json.dumps(
            {"world": describe_world(world.config), "settings": args.record(), "curve": curve}, indent=2, default=str
        )
    )
    return curve


if __name__ == "__main__":
    main()
