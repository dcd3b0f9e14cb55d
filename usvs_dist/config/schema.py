"""The typed configuration tree of a pretraining run.

The defaults *are* the CPU quickstart (`configs/quickstart.yaml` restates them, and a test keeps
the two equal), so `python -m usvs_dist.train` with no arguments runs on embedded defaults.
Each section validates itself in `__post_init__`; errors name the full key and what was expected.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from usvs_format import SPLITS

DECODE_DEVICES = ("auto", "cpu", "gpu")
OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULES = ("cosine", "constant")
SELF_PACED_SCHEDULES = ("linear", "cosine", "step")
AFFINITIES = ("mean", "video", "audio")
GRANULARITIES = ("fine", "coarse")
PLACEMENTS = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")


class ConfigError(ValueError):
    """A configuration value or key is invalid; the message names the full key."""


def _check(ok: bool, key: str, value: object, expected: str) -> None:
    if not ok:
        raise ConfigError(f"config key {key}={value!r} is invalid: expected {expected}")


@dataclass(kw_only=True)
class PhantomConfig:
    """Phantom data set built into the local cache when `data.shards` is empty."""

    cache_dir: str = "~/.cache/usvs_dist"
    """Where phantom scans and shards are cached, keyed by the settings below."""
    scans: int = 8
    """Number of phantom scans (one patient each)."""
    seconds: float = 30.0
    """Length of each phantom scan in seconds."""
    seed: int = 0
    """Seed of the phantom generator: same seed, same bytes."""
    speech_share: float = 0.8
    """Share of plane segments whose narration is about the plane (the rest: chatter/silence)."""
    clip_seconds: float = 2.0
    """Clip length cut by `sharding build`."""
    fps: float = 5.0
    """Frame rate stored in the shards: 10 frames per 2 s clip, so sampling data.num_frames=8 of
    them decodes few frames it does not use."""
    size: int = 64
    """Frame side length stored in the shards (square)."""

    def __post_init__(self) -> None:
        _check(self.scans >= 2, "phantom.scans", self.scans, "an integer >= 2")
        _check(
            self.seconds >= 2 * self.clip_seconds,
            "phantom.seconds",
            self.seconds,
            f">= 2 x phantom.clip_seconds ({2 * self.clip_seconds})",
        )
        _check(
            0.0 <= self.speech_share <= 1.0, "phantom.speech_share", self.speech_share, "a fraction in [0, 1]"
        )
        _check(self.clip_seconds > 0, "phantom.clip_seconds", self.clip_seconds, "> 0")
        _check(1.0 <= self.fps <= 60.0, "phantom.fps", self.fps, "in [1, 60]")
        _check(16 <= self.size <= 512, "phantom.size", self.size, "in [16, 512]")


@dataclass(kw_only=True)
class AugmentConfig:
    """Clip augmentation in the training loader; also makes awcl2022's two views of a frame."""

    enabled: bool = True
    """Augment training clips in the loader (validation and evaluation never are)."""
    crop_min_scale: float = 0.5
    """Random resized crop inside the ultrasound sector keeps this share of its area or more."""
    brightness: float = 0.2
    """Intensity jitter: gain drawn from [1 - b, 1 + b]."""
    contrast: float = 0.2
    """Contrast jitter: factor drawn from [1 - c, 1 + c]."""
    flip: bool = False
    """Random horizontal flip (off by default: probe side and situs carry meaning in fetal scans)."""

    def __post_init__(self) -> None:
        _check(
            0.05 <= self.crop_min_scale <= 1.0,
            "data.augment.crop_min_scale",
            self.crop_min_scale,
            "in [0.05, 1]",
        )
        _check(0.0 <= self.brightness < 1.0, "data.augment.brightness", self.brightness, "in [0, 1)")
        _check(0.0 <= self.contrast < 1.0, "data.augment.contrast", self.contrast, "in [0, 1)")


@dataclass(kw_only=True)
class DataConfig:
    """Shard stream, decoding and the tensors a batch holds."""

    shards: str = ""
    """Folder or URL (s3://, gs://, ...: fsspec) of index.json and the shards; empty: the phantom cache."""
    split: str = "train"
    """Split to train on (train, val or test)."""
    batch_size: int = 8
    """Clips per rank per step (the micro-batch); the global batch is this x world size."""
    num_frames: int = 8
    """Frames T sampled uniformly from each clip (the papers use 14)."""
    frame_size: int = 64
    """Side of the square frames fed to the encoders (the papers use 128)."""
    channels: int = 1
    """1 for grey, 3 to replicate grey into RGB-shaped stems."""
    sample_rate: int = 16000
    """Audio rate the narration is decoded at."""
    n_fft: int = 512
    """Log-mel FFT size (32 ms at 16 kHz)."""
    hop_length: int = 160
    """Log-mel hop (10 ms at 16 kHz)."""
    n_mels: int = 64
    """Mel bins M."""
    f_min: float = 50.0
    """Lowest mel frequency in Hz."""
    f_max: float = 8000.0
    """Highest mel frequency in Hz."""
    loader_workers: int = 1
    """DataLoader worker processes per rank."""
    shard_urls: list[str] = field(default_factory=list)
    """Shards to read instead of all of the split's under data.shards: paths, globs, brace ranges
    ({000000..000099}), fsspec URLs (s3://...) or pipe: commands; matched to index.json by name."""
    interleave: int = 16
    """Units a loader stream reads at once; shards are cut into parts so every stream gets at least
    this many. More mixes more scans into each batch and reads each shard more often: see
    docs/architecture.md ("Batches across scans") and `python -m usvs_dist.bench batches`."""
    resample: bool = False
    """Draw shards with replacement each epoch (clips may repeat) instead of exact epochs."""
    decode_threads: int = 1
    """Decord threads per reader; more than 2 per loader worker oversubscribes cores."""
    decode_device: str = "auto"
    """auto: GPU when Decord has CUDA and a GPU is used, else CPU (with a warning); cpu; gpu."""
    max_bad_fraction: float = 0.05
    """Share of undecodable samples a loader worker tolerates (skipped, counted) before the run stops."""
    seed: int = 0
    """Seed of shard and sample shuffling (the rank is mixed in for samples)."""
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        _check(self.split in SPLITS, "data.split", self.split, f"one of {', '.join(SPLITS)}")
        _check(
            self.batch_size >= 2,
            "data.batch_size",
            self.batch_size,
            "an integer >= 2 (contrastive losses need negatives)",
        )
        _check(self.num_frames >= 1, "data.num_frames", self.num_frames, "an integer >= 1")
        _check(self.frame_size >= 16, "data.frame_size", self.frame_size, "an integer >= 16")
        _check(self.channels in (1, 3), "data.channels", self.channels, "1 or 3")
        _check(self.sample_rate > 0, "data.sample_rate", self.sample_rate, "> 0")
        _check(self.n_fft >= 16, "data.n_fft", self.n_fft, "an integer >= 16")
        _check(
            0 < self.hop_length <= self.n_fft,
            "data.hop_length",
            self.hop_length,
            f"in (0, data.n_fft={self.n_fft}]",
        )
        _check(self.n_mels >= 1, "data.n_mels", self.n_mels, "an integer >= 1")
        _check(
            0 <= self.f_min < self.f_max <= self.sample_rate / 2,
            "data.f_max",
            self.f_max,
            f"f_min < f_max <= sample_rate/2 ({self.sample_rate / 2})",
        )
        _check(self.loader_workers >= 0, "data.loader_workers", self.loader_workers, ">= 0")
        _check(self.interleave >= 1, "data.interleave", self.interleave, ">= 1")
        _check(self.decode_threads >= 0, "data.decode_threads", self.decode_threads, ">= 0")
        _check(
            self.decode_device in DECODE_DEVICES,
            "data.decode_device",
            self.decode_device,
            f"one of {', '.join(DECODE_DEVICES)}",
        )
        _check(
            0.0 <= self.max_bad_fraction < 1.0,
            "data.max_bad_fraction",
            self.max_bad_fraction,
            "a fraction in [0, 1)",
        )


@dataclass(kw_only=True)
class ModelConfig:
    """Encoders, projection heads, fusion and pretext heads (built as the recipe needs them)."""

    video: str = "tiny3d"
    """Video encoder in usvs_dist.models.VIDEO_ENCODERS: r2plus1d_18 (paper), tiny_r2plus1d, tiny3d."""
    audio: str = "tiny2d"
    """Audio encoder in usvs_dist.models.AUDIO_ENCODERS: cnn14 (paper), tiny_cnn14, tiny2d."""
    image: str = "tiny_resnet"
    """Image encoder in usvs_dist.models.IMAGE_ENCODERS: resnet18 (paper), tiny_resnet."""
    width: int = 16
    """Base channel width of the tiny encoders (paper-size encoders keep their published widths)."""
    embed_dim: int = 64
    """Shared latent size D (512 at paper size)."""
    head_hidden: int = 128
    """Hidden units of the pretext-task MLP heads (isbi2020)."""
    video_weights: str = ""
    """Optional local file of video-encoder weights (a state dict or a usvs_dist encoders.pt)."""
    audio_weights: str = ""
    """Optional local file of audio-encoder weights."""
    image_weights: str = ""
    """Optional local file of image-encoder weights."""

    def __post_init__(self) -> None:
        _check(self.width >= 1, "model.width", self.width, "an integer >= 1")
        _check(self.embed_dim >= 2, "model.embed_dim", self.embed_dim, "an integer >= 2")
        _check(self.head_hidden >= 1, "model.head_hidden", self.head_hidden, "an integer >= 1")


@dataclass(kw_only=True)
class SelfPacedConfig:
    """usvs2020's affinity-aware self-paced negatives (the schedule Tune sweeps; docs/methods.md)."""

    lambda0: float = 0.5
    """Share lambda(0) of each anchor's negatives admitted at the start, lowest affinity first."""
    kappa: float = 0.9
    """Affinity above which a negative is always excluded as a likely positive."""
    schedule: str = "linear"
    """How lambda grows from lambda0 to 1: linear, cosine or step."""
    ramp_fraction: float = 0.5
    """Share of train.steps over which lambda reaches 1 (project default: the first half)."""
    stages: int = 4
    """Equal stairs of the step schedule."""
    affinity: str = "mean"
    """Affinity A_kj: mean of the video-video and audio-audio cosines, or video or audio alone."""

    def __post_init__(self) -> None:
        _check(0.0 <= self.lambda0 <= 1.0, "objective.self_paced.lambda0", self.lambda0, "in [0, 1]")
        _check(-1.0 < self.kappa <= 1.0, "objective.self_paced.kappa", self.kappa, "in (-1, 1]")
        _check(
            self.schedule in SELF_PACED_SCHEDULES,
            "objective.self_paced.schedule",
            self.schedule,
            f"one of {', '.join(SELF_PACED_SCHEDULES)}",
        )
        _check(
            0.0 < self.ramp_fraction <= 1.0,
            "objective.self_paced.ramp_fraction",
            self.ramp_fraction,
            "in (0, 1]",
        )
        _check(self.stages >= 1, "objective.self_paced.stages", self.stages, "an integer >= 1")
        _check(
            self.affinity in AFFINITIES,
            "objective.self_paced.affinity",
            self.affinity,
            f"one of {', '.join(AFFINITIES)}",
        )


@dataclass(kw_only=True)
class PretextConfig:
    """isbi2020's pretext tasks: sub-clip order and geometric transformation prediction."""

    subclips: int = 3
    """Sub-clips K a clip is cut into for order prediction (each gets num_frames // K frames)."""
    permutations: int = 0
    """Orders P to classify; 0: all K!, else the first P in lexicographic order."""
    rotations: int = 4
    """Rotations to classify: 4 (0/90/180/270 degrees) or 2 (0/180)."""
    transform_weight: float = 1.0
    """w in L = CE_order + w CE_transform."""

    def __post_init__(self) -> None:
        _check(2 <= self.subclips <= 5, "objective.pretext.subclips", self.subclips, "an integer in [2, 5]")
        _check(
            self.permutations == 0 or 2 <= self.permutations <= math.factorial(self.subclips),
            "objective.pretext.permutations",
            self.permutations,
            f"0 (all) or in [2, {math.factorial(self.subclips)}] for {self.subclips} sub-clips",
        )
        _check(self.rotations in (2, 4), "objective.pretext.rotations", self.rotations, "2 or 4")
        _check(
            self.transform_weight >= 0, "objective.pretext.transform_weight", self.transform_weight, ">= 0"
        )


@dataclass(kw_only=True)
class AnatomyConfig:
    """awcl2022's anatomy-aware positives (needs plane labels in the shards)."""

    granularity: str = "fine"
    """fine: same standard plane; coarse: same anatomy (heart, brain, spine, ...)."""
    ratio: float = 0.5
    """Anatomy ratio: share of each anchor's positive weight on other samples of its anatomy."""
    background_positive: bool = False
    """Count two background frames as an anatomy pair (off: background is not an anatomy)."""

    def __post_init__(self) -> None:
        _check(
            self.granularity in GRANULARITIES,
            "objective.anatomy.granularity",
            self.granularity,
            f"one of {', '.join(GRANULARITIES)}",
        )
        _check(0.0 <= self.ratio <= 1.0, "objective.anatomy.ratio", self.ratio, "in [0, 1]")


@dataclass(kw_only=True)
class TermConfig:
    """One weighted term of the custom recipe."""

    term: str = "va_nce"
    """Name in usvs_dist.losses.TERMS."""
    weight: float = 1.0
    """Its weight in the sum."""


@dataclass(kw_only=True)
class ObjectiveConfig:
    """The training objective: a recipe of docs/methods.md and its hyperparameters."""

    recipe: str = "usvs2020"
    """usvs2020, dual2024, isbi2020, awcl2022 (docs/methods.md: their papers) or custom."""
    temperature: float = 0.1
    """InfoNCE temperature tau (dual2024's paper: 0.1)."""
    symmetric: bool = True
    """Symmetrise InfoNCE: 1/2 [L_c(x, y) + L_c(y, x)]."""
    pi: float = 0.5
    """dual2024's balance of L_c(v, a) against L_c(v, va) in L_a (and of L_c(v, i), L_c(v, vi) in L_i)."""
    margin: float = 0.2
    """Margin alpha of the hardest-negative triplet ranking loss (VSE++)."""
    weights: dict[str, float] = field(default_factory=dict)
    """Weights of the recipe's named parts, e.g. {mmcl_a: 1.0, mmsl_va: 0.5}; parts not named weigh 1."""
    terms: list[TermConfig] = field(default_factory=list)
    """The custom recipe's weighted terms (names from usvs_dist.losses.TERMS)."""
    self_paced: SelfPacedConfig = field(default_factory=SelfPacedConfig)
    pretext: PretextConfig = field(default_factory=PretextConfig)
    anatomy: AnatomyConfig = field(default_factory=AnatomyConfig)

    def __post_init__(self) -> None:
        _check(0.0 < self.temperature <= 1.0, "objective.temperature", self.temperature, "a float in (0, 1]")
        _check(0.0 <= self.pi <= 1.0, "objective.pi", self.pi, "in [0, 1]")
        _check(0.0 <= self.margin <= 2.0, "objective.margin", self.margin, "in [0, 2] (cosines span 2)")
        for name, weight in self.weights.items():
            _check(weight >= 0, f"objective.weights.{name}", weight, ">= 0")
        _check(
            (self.recipe == "custom") == bool(self.terms),
            "objective.terms",
            [t.term for t in self.terms],
            "a non-empty list when objective.recipe=custom, and empty otherwise",
        )
        for k, term in enumerate(self.terms):
            _check(term.weight >= 0, f"objective.terms[{k}].weight", term.weight, ">= 0")


@dataclass(kw_only=True)
class OptimConfig:
    """Optimizer; DeepSpeed wraps a torch optimizer built from this."""

    name: str = "adamw"
    """adamw, adam or sgd (torch optimizers: FusedAdam needs CUDA)."""
    lr: float = 1e-3
    """Peak learning rate."""
    weight_decay: float = 1e-4
    """Decoupled (adamw) or L2 (adam, sgd) weight decay."""
    grad_clip: float = 1.0
    """Gradient-norm clip; 0 turns it off (DeepSpeed clips at 1.0 unless told)."""
    schedule: str = "cosine"
    """LR after warmup: cosine (decays to min_lr_ratio x lr at train.steps) or constant."""
    warmup_steps: int = 4
    """Optimizer steps of linear warmup from 0 to lr."""
    min_lr_ratio: float = 0.1
    """Final LR of the cosine schedule as a fraction of lr."""

    def __post_init__(self) -> None:
        _check(self.name in OPTIMIZERS, "optim.name", self.name, f"one of {', '.join(OPTIMIZERS)}")
        _check(self.lr > 0, "optim.lr", self.lr, "> 0")
        _check(self.weight_decay >= 0, "optim.weight_decay", self.weight_decay, ">= 0")
        _check(self.grad_clip >= 0, "optim.grad_clip", self.grad_clip, ">= 0")
        _check(self.schedule in SCHEDULES, "optim.schedule", self.schedule, f"one of {', '.join(SCHEDULES)}")
        _check(self.warmup_steps >= 0, "optim.warmup_steps", self.warmup_steps, ">= 0")
        _check(0.0 <= self.min_lr_ratio <= 1.0, "optim.min_lr_ratio", self.min_lr_ratio, "in [0, 1]")


@dataclass(kw_only=True)
class TrainConfig:
    """Ray Train scaling, DeepSpeed ZeRO and checkpoints."""

    num_workers: int = 2
    """Ray Train workers (ranks)."""
    use_gpu: bool = False
    """One GPU per worker; NCCL and bf16 on GPU, gloo and fp32 on CPU."""
    cpus_per_worker: int = 1
    """CPUs Ray reserves per worker."""
    worker_resources: dict[str, float] = field(default_factory=dict)
    """Custom Ray resources each worker needs (e.g. {h100_node: 1}), besides CPU and GPU."""
    placement_strategy: str = "PACK"
    """Ray placement of the workers: PACK (fill nodes), SPREAD, STRICT_PACK, STRICT_SPREAD (one a node)."""
    steps: int = 40
    """Optimizer steps in the run."""
    grad_accum_steps: int = 1
    """Micro-batches accumulated per optimizer step."""
    global_batch: int = 0
    """Clips per optimizer step over all ranks; 0: data.batch_size x num_workers x grad_accum_steps.
    When set it must equal that product (an error names the three), so a changed worker count is caught."""
    max_failures: int = 3
    """Worker-group restarts from the latest checkpoint before the run fails."""
    zero_stage: int = 2
    """DeepSpeed ZeRO stage 0-3."""
    checkpoint_every: int = 20
    """Report a checkpoint every this many steps (and at the last step)."""
    keep_checkpoints: int = 2
    """Checkpoints Ray keeps in storage."""
    storage_path: str = "ray_results"
    """Ray Train storage (local dir or URI); relative paths resolve against the working dir."""
    run_name: str = ""
    """Unique run name; same name and storage resume. Empty: generated."""
    log_every: int = 1
    """Log metrics every this many steps."""
    seed: int = 0
    """Seed of model init (the rank is mixed in for augmentation)."""

    def __post_init__(self) -> None:
        _check(self.num_workers >= 1, "train.num_workers", self.num_workers, "an integer >= 1")
        _check(self.cpus_per_worker >= 1, "train.cpus_per_worker", self.cpus_per_worker, ">= 1")
        _check(
            self.placement_strategy in PLACEMENTS,
            "train.placement_strategy",
            self.placement_strategy,
            f"one of {', '.join(PLACEMENTS)}",
        )
        for name, amount in self.worker_resources.items():
            _check(
                amount > 0 and name not in ("CPU", "GPU"),
                f"train.worker_resources.{name}",
                amount,
                "> 0, and not CPU or GPU (train.cpus_per_worker and train.use_gpu set those)",
            )
        _check(self.steps >= 1, "train.steps", self.steps, "an integer >= 1")
        _check(self.zero_stage in (0, 1, 2, 3), "train.zero_stage", self.zero_stage, "0, 1, 2 or 3")
        _check(self.grad_accum_steps >= 1, "train.grad_accum_steps", self.grad_accum_steps, ">= 1")
        _check(self.global_batch >= 0, "train.global_batch", self.global_batch, ">= 0")
        _check(self.max_failures >= 0, "train.max_failures", self.max_failures, ">= 0")
        _check(self.checkpoint_every >= 1, "train.checkpoint_every", self.checkpoint_every, ">= 1")
        _check(self.keep_checkpoints >= 1, "train.keep_checkpoints", self.keep_checkpoints, ">= 1")
        _check(self.log_every >= 1, "train.log_every", self.log_every, ">= 1")
        _check(bool(self.storage_path), "train.storage_path", self.storage_path, "a path or URI")


@dataclass(kw_only=True)
class TrackingConfig:
    """MLflow tracking (rank 0 only)."""

    uri: str = "sqlite:///mlruns.db"
    """Tracking URI; MLFLOW_TRACKING_URI in the environment wins when set."""
    experiment: str = "usvs_dist"
    """Experiment name; created once by the driver."""
    system_metrics: bool = True
    """Log CPU/memory (and GPU with nvidia-ml-py) from rank 0's node into the run."""
    system_metrics_interval: float = 10.0
    """Seconds between system-metric samples."""

    def __post_init__(self) -> None:
        _check(bool(self.uri), "tracking.uri", self.uri, "an MLflow tracking URI")
        _check(bool(self.experiment), "tracking.experiment", self.experiment, "a name")
        _check(
            self.system_metrics_interval >= 1.0,
            "tracking.system_metrics_interval",
            self.system_metrics_interval,
            ">= 1 second",
        )


@dataclass(kw_only=True)
class EvalConfig:
    """Downstream evaluation (`python -m usvs_dist.evaluate`) and its periodic form in training."""

    every: int = 0
    """Evaluate retrieval and a linear probe on a fixed subset every this many steps; 0: never."""
    subset: int = 64
    """Clips of the periodic evaluation (fixed: the first ones of the splits, in shard order)."""
    plane_splits: list[str] = field(default_factory=lambda: list(SPLITS))
    """Splits whose labelled clips form the cross-validation set of plane detection and saliency."""
    retrieval_split: str = "val"
    """Split of the cross-modal retrieval metric."""
    max_clips: int = 2000
    """Clips read per evaluation set at most (decoded clips are held in memory)."""
    folds: int = 5
    """k of the k-fold cross-validation by scan (the papers: 5)."""
    probe_l2: float = 1e-3
    """L2 penalty of the linear probe (multinomial logistic regression, full-batch L-BFGS)."""
    probe_iters: int = 200
    """L-BFGS iterations of the linear probe."""
    finetune_steps: int = 200
    """Optimizer steps of full fine-tuning per fold (batches of eval.batch_size); 0: skip it."""
    finetune_lr: float = 1e-4
    """Adam learning rate of the encoder when fine-tuning."""
    finetune_head_lr: float = 1e-2
    """Adam learning rate of the new linear head when fine-tuning."""
    saliency_encoder: str = "video"
    """Encoder under the saliency decoder: video (the clip's gaze) or image (its frame's gaze)."""
    saliency_epochs: int = 30
    """Epochs of the saliency decoder per fold (encoder frozen)."""
    saliency_sigma: float = 1 / 16
    """Gaussian blur of fixations as a fraction of the map width (project default 1/16)."""
    batch_size: int = 16
    """Clips per forward pass in evaluation."""
    seed: int = 0
    """Seed of folds, probes and the random-encoder baseline."""

    def __post_init__(self) -> None:
        _check(self.every >= 0, "eval.every", self.every, ">= 0 (0: off)")
        _check(self.subset >= 4, "eval.subset", self.subset, ">= 4")
        for split in self.plane_splits:
            _check(
                split in SPLITS,
                "eval.plane_splits",
                self.plane_splits,
                f"splits of {', '.join(SPLITS)}",
            )
        _check(
            self.retrieval_split in SPLITS,
            "eval.retrieval_split",
            self.retrieval_split,
            f"one of {', '.join(SPLITS)}",
        )
        _check(self.max_clips >= 4, "eval.max_clips", self.max_clips, ">= 4")
        _check(self.folds >= 2, "eval.folds", self.folds, ">= 2")
        _check(self.probe_l2 >= 0, "eval.probe_l2", self.probe_l2, ">= 0")
        _check(self.probe_iters >= 1, "eval.probe_iters", self.probe_iters, ">= 1")
        _check(
            self.finetune_steps >= 0,
            "eval.finetune_steps",
            self.finetune_steps,
            ">= 0 (0: skip fine-tuning)",
        )
        _check(self.finetune_lr > 0, "eval.finetune_lr", self.finetune_lr, "> 0")
        _check(self.finetune_head_lr > 0, "eval.finetune_head_lr", self.finetune_head_lr, "> 0")
        _check(
            self.saliency_encoder in ("video", "image"),
            "eval.saliency_encoder",
            self.saliency_encoder,
            "video or image",
        )
        _check(self.saliency_epochs >= 1, "eval.saliency_epochs", self.saliency_epochs, ">= 1")
        _check(0 < self.saliency_sigma <= 0.5, "eval.saliency_sigma", self.saliency_sigma, "in (0, 0.5]")
        _check(self.batch_size >= 1, "eval.batch_size", self.batch_size, ">= 1")


@dataclass(kw_only=True)
class RootConfig:
    """A whole pretraining run."""

    data: DataConfig = field(default_factory=DataConfig)
    phantom: PhantomConfig = field(default_factory=PhantomConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        per_step = self.data.batch_size * self.train.num_workers * self.train.grad_accum_steps
        _check(
            self.train.global_batch in (0, per_step),
            "train.global_batch",
            self.train.global_batch,
            f"0 or data.batch_size ({self.data.batch_size}) x train.num_workers ({self.train.num_workers})"
            f" x train.grad_accum_steps ({self.train.grad_accum_steps}) = {per_step}",
        )

    @property
    def global_batch(self) -> int:
        """Clips per optimizer step over all ranks."""
        return self.data.batch_size * self.train.num_workers * self.train.grad_accum_steps
