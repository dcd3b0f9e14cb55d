"""The typed configuration tree of a pretraining run.

The defaults *are* the CPU quickstart (`configs/quickstart.yaml` restates them, and a test keeps
the two equal), so `python -m usvs_dist.train` with no arguments runs on embedded defaults.

Every section is a `Section`: choice fields are typed `Literal[...]` and refused outside it
(by OmegaConf while the tree is merged, and again in `__post_init__` for sections built in code);
each section's `check` then runs its range checks. A section's dotted key (`data.augment`) is
derived from where it sits in the tree (`name_sections`), so errors name the full key without any
check retyping it.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, get_args, get_origin, get_type_hints

from usvs_format import ConfigError

Split = Literal["train", "val", "test"]
"""A split of the shard format (usvs_format.SPLITS; a test keeps the two equal)."""


def invalid(key: str, value: object, expected: str) -> ConfigError:
    """The one-line error of a config value: `config key a.b=value is invalid: expected ...`."""
    return ConfigError(f"config key {key}={value!r} is invalid: expected {expected}")


def one_of(allowed: tuple[Any, ...]) -> str:
    """`one of a, b, c`: what a choice field expects."""
    return f"one of {', '.join(str(a) for a in allowed)}"


def _check(ok: bool, key: str, value: object, expected: str) -> None:
    if not ok:
        raise invalid(key, value, expected)


@functools.cache
def choice_fields(cls: type) -> dict[str, tuple[tuple[Any, ...], bool]]:
    """{field: (allowed values, whether the field is a list of them)} of a dataclass's `Literal` fields."""
    hints = get_type_hints(cls)
    found = {}
    for f in dataclasses.fields(cls):
        hint, is_list = hints[f.name], False
        if get_origin(hint) is list:
            (hint,), is_list = get_args(hint), True
        if get_origin(hint) is Literal:
            found[f.name] = (get_args(hint), is_list)
    return found


def check_choices(obj: Any, prefix: str) -> None:
    """ConfigError for the first `Literal` field of dataclass `obj` holding a value outside it.

    `prefix` is the dotted key of `obj` ("" at the root). Lists of choices are checked item by item.
    """
    for name, (allowed, is_list) in choice_fields(type(obj)).items():
        value = getattr(obj, name)
        key = f"{prefix}.{name}" if prefix else name
        if is_list:
            _check(all(v in allowed for v in value), key, value, f"a list of {', '.join(map(str, allowed))}")
        else:
            _check(value in allowed, key, value, one_of(allowed))


class Section:
    """Base of the config sections (each a dataclass): its dotted key, and checks that name it.

    `__post_init__` refuses a choice outside its `Literal`, then runs the section's own `check`.
    """

    KEY: ClassVar[str] = ""
    """Dotted key of the section in its tree (`data.augment`); set by `name_sections`."""

    def __post_init__(self) -> None:
        check_choices(self, self.KEY)
        self.check()

    def check(self) -> None:
        """The section's own checks (ranges, relations between its fields); none by default."""

    def key(self, name: str) -> str:
        """The full dotted key of this section's field `name` (or of a path below it)."""
        return f"{self.KEY}.{name}" if self.KEY else name

    def require(self, ok: bool, name: str, expected: str) -> None:
        """ConfigError naming field `name`'s full key, its value and `expected`, unless `ok`."""
        _check(ok, self.key(name), getattr(self, name), expected)


def name_sections(root: type[Section], key: str = "") -> None:
    """Give `root` and every section under it (a field typed as a Section, optional or not) its
    dotted KEY: where it sits in the tree whose root key is `key`."""
    assert root.__dict__.get("KEY", key) == key, f"{root.__name__} sits at two keys"
    root.KEY = key
    hints = get_type_hints(root)
    for f in dataclasses.fields(root):
        hint = hints[f.name]
        types = [t for t in get_args(hint) if t is not type(None)] or [hint]
        for t in types:
            if isinstance(t, type) and issubclass(t, Section):
                name_sections(t, f"{key}.{f.name}" if key else f.name)


@dataclass(kw_only=True)
class PhantomConfig(Section):
    """Phantom data set built into the local cache when `data.shards` is empty."""

    cache_dir: str = "~/.cache/usvs_dist"
    """Where phantom scans and shards are cached, keyed by the settings below."""
    scans: int = 12
    """Number of phantom scans (one patient each)."""
    split_fractions: list[float] = field(default_factory=lambda: [0.55, 0.1, 0.35])
    """train/val/test shares of the phantom's patients (split by salted hash, as `sharding build
    --split`). A large test share: the default 12 scans put 5 in train, 1 in val and 6 in test,
    so held-out plane detection (eval.plane_splits: [test]) has its eval.folds=5 scans."""
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

    def check(self) -> None:
        """Scan count and length, speech share and the stored clip format."""
        self.require(self.scans >= 2, "scans", "an integer >= 2")
        self.require(
            self.seconds >= 2 * self.clip_seconds,
            "seconds",
            f">= 2 x {self.key('clip_seconds')} ({2 * self.clip_seconds})",
        )
        self.require(0.0 <= self.speech_share <= 1.0, "speech_share", "a fraction in [0, 1]")
        self.require(
            len(self.split_fractions) == 3
            and all(f >= 0 for f in self.split_fractions)
            and abs(sum(self.split_fractions) - 1.0) <= 1e-6,
            "split_fractions",
            "three shares (train, val, test) >= 0 summing to 1",
        )
        self.require(self.clip_seconds > 0, "clip_seconds", "> 0")
        self.require(1.0 <= self.fps <= 60.0, "fps", "in [1, 60]")
        self.require(16 <= self.size <= 512, "size", "in [16, 512]")


@dataclass(kw_only=True)
class AugmentConfig(Section):
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

    def check(self) -> None:
        """Crop scale and jitter ranges."""
        self.require(0.05 <= self.crop_min_scale <= 1.0, "crop_min_scale", "in [0.05, 1]")
        self.require(0.0 <= self.brightness < 1.0, "brightness", "in [0, 1)")
        self.require(0.0 <= self.contrast < 1.0, "contrast", "in [0, 1)")


@dataclass(kw_only=True)
class DataConfig(Section):
    """Shard stream, decoding and the tensors a batch holds."""

    shards: str = ""
    """Folder or URL (s3://, gs://, ...: fsspec) of index.json and the shards; empty: the phantom cache."""
    split: Split = "train"
    """Split to train on (train, val or test)."""
    batch_size: int = 8
    """Clips per rank per step (the micro-batch); the global batch is this x world size."""
    num_frames: int = 8
    """Frames T sampled uniformly from each clip (the papers use 14)."""
    frame_size: int = 64
    """Side of the square frames fed to the encoders (the papers use 128)."""
    channels: Literal[1, 3] = 1
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
    decoder: Literal["decord", "torchcodec", "auto"] = "decord"
    """Video and narration decoder (usvs_dist.data.backends): decord (bundled FFmpeg, CPU from
    PyPI), torchcodec (`pip install -e ".[torchcodec]"` and the system's FFmpeg, 4 or later; NVDEC on
    NVIDIA GPUs from the same wheel), or auto (TorchCodec when it imports and finds FFmpeg)."""
    decode_threads: int = 1
    """Decoder threads per reader (0: the library's choice); more than 2 per loader worker
    oversubscribes cores."""
    decode_device: Literal["auto", "cpu", "gpu"] = "auto"
    """auto: the GPU when training on one and data.decoder can decode there (TorchCodec's NVDEC, or
    a CUDA build of Decord), else the CPU (with a warning); cpu; gpu (an error when it cannot)."""
    max_bad_fraction: float = 0.05
    """Share of undecodable samples a loader worker tolerates (skipped, counted) before the run stops."""
    seed: int = 0
    """Seed of shard and sample shuffling (the rank is mixed in for samples)."""
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def check(self) -> None:
        """Batch, frame and log-mel settings, loader and decoder counts."""
        self.require(
            self.batch_size >= 2, "batch_size", "an integer >= 2 (contrastive losses need negatives)"
        )
        self.require(self.num_frames >= 1, "num_frames", "an integer >= 1")
        self.require(self.frame_size >= 16, "frame_size", "an integer >= 16")
        self.require(self.sample_rate > 0, "sample_rate", "> 0")
        self.require(self.n_fft >= 16, "n_fft", "an integer >= 16")
        self.require(
            0 < self.hop_length <= self.n_fft, "hop_length", f"in (0, {self.key('n_fft')}={self.n_fft}]"
        )
        self.require(self.n_mels >= 1, "n_mels", "an integer >= 1")
        self.require(
            0 <= self.f_min < self.f_max <= self.sample_rate / 2,
            "f_max",
            f"f_min < f_max <= sample_rate/2 ({self.sample_rate / 2})",
        )
        self.require(self.loader_workers >= 0, "loader_workers", ">= 0")
        self.require(self.interleave >= 1, "interleave", ">= 1")
        self.require(self.decode_threads >= 0, "decode_threads", ">= 0")
        self.require(0.0 <= self.max_bad_fraction < 1.0, "max_bad_fraction", "a fraction in [0, 1)")


@dataclass(kw_only=True)
class ModelConfig(Section):
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
    sync_bn: bool = False
    """Encoders' BatchNorm over the global batch (torch.nn.SyncBatchNorm, a collective per layer
    per forward; GPU runs only). The projection heads' BatchNorm is global either way."""

    def check(self) -> None:
        """Widths and sizes (encoder names: models.check_names)."""
        self.require(self.width >= 1, "width", "an integer >= 1")
        self.require(self.embed_dim >= 2, "embed_dim", "an integer >= 2")
        self.require(self.head_hidden >= 1, "head_hidden", "an integer >= 1")


@dataclass(kw_only=True)
class SelfPacedConfig(Section):
    """usvs2020's affinity-aware self-paced negatives (the schedule Tune sweeps; docs/methods.md)."""

    lambda0: float = 0.5
    """Share lambda(0) of each anchor's negatives admitted at the start, lowest affinity first."""
    kappa: float = 0.9
    """Affinity above which a negative is always excluded as a likely positive."""
    schedule: Literal["linear", "cosine", "step"] = "linear"
    """How lambda grows from lambda0 to 1: linear, cosine or step."""
    ramp_fraction: float = 0.5
    """Share of train.steps over which lambda reaches 1 (project default: the first half)."""
    stages: int = 4
    """Equal stairs of the step schedule."""
    affinity: Literal["mean", "video", "audio"] = "mean"
    """Affinity A_kj: mean of the video-video and audio-audio cosines, or video or audio alone."""

    def check(self) -> None:
        """lambda0, kappa, the ramp and its stairs."""
        self.require(0.0 <= self.lambda0 <= 1.0, "lambda0", "in [0, 1]")
        self.require(-1.0 < self.kappa <= 1.0, "kappa", "in (-1, 1]")
        self.require(0.0 < self.ramp_fraction <= 1.0, "ramp_fraction", "in (0, 1]")
        self.require(self.stages >= 1, "stages", "an integer >= 1")


@dataclass(kw_only=True)
class PretextConfig(Section):
    """isbi2020's pretext tasks: sub-clip order and geometric transformation prediction."""

    subclips: int = 3
    """Sub-clips K a clip is cut into for order prediction (each gets num_frames // K frames)."""
    permutations: int = 0
    """Orders P to classify; 0: all K!, else the first P in lexicographic order."""
    rotations: Literal[2, 4] = 4
    """Rotations to classify: 4 (0/90/180/270 degrees) or 2 (0/180)."""
    transform_region: Literal["circle", "full"] = "circle"
    """Where the rotated clip is seen: circle, through a centred disc (every clip, rotated or not,
    is blanked outside it, so the sector's outline cannot tell the rotation); full, the whole
    frame (the fan's outline shows how it was turned)."""
    circle_radius: float = 0.4
    """Radius of that disc as a share of half the frame side; keep the disc inside the sector."""
    transform_weight: float = 1.0
    """w in L = CE_order + w CE_transform."""

    def check(self) -> None:
        """Sub-clips, permutations of them, the disc radius and the transform weight."""
        self.require(2 <= self.subclips <= 5, "subclips", "an integer in [2, 5]")
        self.require(
            self.permutations == 0 or 2 <= self.permutations <= math.factorial(self.subclips),
            "permutations",
            f"0 (all) or in [2, {math.factorial(self.subclips)}] for {self.subclips} sub-clips",
        )
        self.require(0.0 < self.circle_radius <= 1.0, "circle_radius", "in (0, 1]")
        self.require(self.transform_weight >= 0, "transform_weight", ">= 0")


@dataclass(kw_only=True)
class AnatomyConfig(Section):
    """awcl2022's anatomy-aware positives (needs plane labels in the shards)."""

    granularity: Literal["fine", "coarse"] = "fine"
    """fine: same standard plane; coarse: same anatomy (heart, brain, spine, ...)."""
    ratio: float = 0.5
    """Anatomy ratio: share of each anchor's positive weight on other samples of its anatomy."""
    background_positive: bool = False
    """Count two background frames as an anatomy pair (off: background is not an anatomy)."""

    def check(self) -> None:
        """The anatomy ratio."""
        self.require(0.0 <= self.ratio <= 1.0, "ratio", "in [0, 1]")


@dataclass(kw_only=True)
class TermConfig:
    """One weighted term of the custom recipe."""

    term: str = "va_nce"
    """Name in usvs_dist.losses.TERMS."""
    weight: float = 1.0
    """Its weight in the sum."""


@dataclass(kw_only=True)
class ObjectiveConfig(Section):
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
    same_scan_negatives: Literal["keep", "mask", "window"] = "window"
    """Which clips of an anchor's own scan the gathered losses (InfoNCE, triplet, self-paced,
    anatomy) use as negatives: keep (all, as the papers do), mask (none: every other clip of the
    scan is left out), window (all but the clips whose start time is at most same_scan_window_s
    from the anchor's, which are near-duplicates of it). The positive is never left out
    (docs/methods.md, "Same-scan negatives": why window is the default)."""
    same_scan_window_s: float = 6.0
    """window: same-scan clips starting within this many seconds of the anchor's start (either
    side, inclusive) are not its negatives; the scan's farther clips are."""
    weights: dict[str, float] = field(default_factory=dict)
    """Weights of the recipe's named parts, e.g. {mmcl_a: 1.0, mmsl_va: 0.5}; parts not named weigh 1."""
    terms: list[TermConfig] = field(default_factory=list)
    """The custom recipe's weighted terms (names from usvs_dist.losses.TERMS)."""
    self_paced: SelfPacedConfig = field(default_factory=SelfPacedConfig)
    pretext: PretextConfig = field(default_factory=PretextConfig)
    anatomy: AnatomyConfig = field(default_factory=AnatomyConfig)

    def check(self) -> None:
        """Temperature, pi, margin, the same-scan window, weights, and terms only for the custom recipe."""
        self.require(0.0 < self.temperature <= 1.0, "temperature", "a float in (0, 1]")
        self.require(0.0 <= self.pi <= 1.0, "pi", "in [0, 1]")
        self.require(0.0 <= self.margin <= 2.0, "margin", "in [0, 2] (cosines span 2)")
        self.require(self.same_scan_window_s > 0, "same_scan_window_s", "> 0 seconds")
        for name, weight in self.weights.items():
            _check(weight >= 0, self.key(f"weights.{name}"), weight, ">= 0")
        _check(
            (self.recipe == "custom") == bool(self.terms),
            self.key("terms"),
            [t.term for t in self.terms],
            f"a non-empty list when {self.key('recipe')}=custom, and empty otherwise",
        )
        for k, term in enumerate(self.terms):
            _check(term.weight >= 0, self.key(f"terms[{k}].weight"), term.weight, ">= 0")


@dataclass(kw_only=True)
class OptimConfig(Section):
    """Optimizer; DeepSpeed wraps a torch optimizer built from this."""

    name: Literal["adamw", "adam", "sgd"] = "adamw"
    """adamw, adam or sgd (torch optimizers: FusedAdam needs CUDA)."""
    lr: float = 1e-3
    """Peak learning rate."""
    weight_decay: float = 1e-4
    """Decoupled (adamw) or L2 (adam, sgd) weight decay."""
    grad_clip: float = 1.0
    """Gradient-norm clip; 0 turns it off (DeepSpeed clips at 1.0 unless told)."""
    schedule: Literal["cosine", "constant"] = "cosine"
    """LR after warmup: cosine (decays to min_lr_ratio x lr at train.steps) or constant."""
    warmup_steps: int = 4
    """Optimizer steps of linear warmup from 0 to lr."""
    min_lr_ratio: float = 0.1
    """Final LR of the cosine schedule as a fraction of lr."""

    def check(self) -> None:
        """Learning rate, decay, clipping and schedule settings."""
        self.require(self.lr > 0, "lr", "> 0")
        self.require(self.weight_decay >= 0, "weight_decay", ">= 0")
        self.require(self.grad_clip >= 0, "grad_clip", ">= 0")
        self.require(self.warmup_steps >= 0, "warmup_steps", ">= 0")
        self.require(0.0 <= self.min_lr_ratio <= 1.0, "min_lr_ratio", "in [0, 1]")


@dataclass(kw_only=True)
class TrainConfig(Section):
    """Ray Train scaling, DeepSpeed ZeRO and checkpoints."""

    num_workers: int = 2
    """Ray Train workers (ranks)."""
    use_gpu: bool = False
    """One GPU per worker; NCCL and bf16 on GPU, gloo and fp32 on CPU."""
    cpus_per_worker: int = 1
    """CPUs Ray reserves per worker."""
    worker_resources: dict[str, float] = field(default_factory=dict)
    """Custom Ray resources each worker needs (e.g. {h100_node: 1}), besides CPU and GPU."""
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
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
    zero_stage: Literal[0, 1, 2, 3] = 2
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
    """Log metrics every this many steps (to MLflow, and to the console when train.console)."""
    console: bool = True
    """Rank 0 prints a plain progress line (step, loss, clips/s, lr, elapsed, ETA) every
    train.log_every steps into the job's output; `python -m usvs_dist.train --quiet` sets false."""
    seed: int = 0
    """Seed of model init (the rank is mixed in for augmentation)."""

    def check(self) -> None:
        """Worker counts and resources, steps, checkpoints and logging cadence."""
        self.require(self.num_workers >= 1, "num_workers", "an integer >= 1")
        self.require(self.cpus_per_worker >= 1, "cpus_per_worker", ">= 1")
        for name, amount in self.worker_resources.items():
            _check(
                amount > 0 and name not in ("CPU", "GPU"),
                self.key(f"worker_resources.{name}"),
                amount,
                f"> 0, and not CPU or GPU ({self.key('cpus_per_worker')} and {self.key('use_gpu')} "
                "set those)",
            )
        self.require(self.steps >= 1, "steps", "an integer >= 1")
        self.require(self.grad_accum_steps >= 1, "grad_accum_steps", ">= 1")
        self.require(self.global_batch >= 0, "global_batch", ">= 0")
        self.require(self.max_failures >= 0, "max_failures", ">= 0")
        self.require(self.checkpoint_every >= 1, "checkpoint_every", ">= 1")
        self.require(self.keep_checkpoints >= 1, "keep_checkpoints", ">= 1")
        self.require(self.log_every >= 1, "log_every", ">= 1")
        self.require(bool(self.storage_path), "storage_path", "a path or URI")


@dataclass(kw_only=True)
class TrackingConfig(Section):
    """MLflow tracking (rank 0 only)."""

    uri: str = "sqlite:///mlruns.db"
    """Tracking URI; MLFLOW_TRACKING_URI in the environment wins when set."""
    experiment: str = "usvs_dist"
    """Experiment name; created once by the driver."""
    system_metrics: bool = True
    """Log CPU/memory (and GPU with nvidia-ml-py) from rank 0's node into the run."""
    system_metrics_interval: float = 10.0
    """Seconds between system-metric samples."""
    register_as: str = ""
    """Registered-model name: the end of training registers the logged encoder model (the video
    encoder, else the first one trained) as a new version of it; empty: logged, not registered."""

    def check(self) -> None:
        """Tracking URI, experiment and the system-metric interval."""
        self.require(bool(self.uri), "uri", "an MLflow tracking URI")
        self.require(bool(self.experiment), "experiment", "a name")
        self.require(self.system_metrics_interval >= 1.0, "system_metrics_interval", ">= 1 second")


@dataclass(kw_only=True)
class EvalConfig(Section):
    """Downstream evaluation (`python -m usvs_dist.evaluate`) and its periodic form in training."""

    every: int = 0
    """Evaluate retrieval and a linear probe on a fixed subset every this many steps; 0: never."""
    subset: int = 64
    """Clips of each periodic evaluation set (fixed for the run: a scan-stratified sample, as
    eval.max_clips draws)."""
    plane_splits: list[Split] = field(default_factory=lambda: ["test"])
    """Splits whose labelled clips form the cross-validation set of plane detection and saliency
    (default: the held-out test patients, never trained on; `evaluate --shards` can point at a
    separate labelled shard set instead)."""
    periodic_plane_splits: list[Split] = field(default_factory=lambda: ["train"])
    """Splits of the plane probe during training (eval.every): the training split by default, so
    the held-out scans of eval.plane_splits stay unseen until the final evaluation."""
    retrieval_split: Split = "val"
    """Split of the cross-modal retrieval metric."""
    max_clips: int = 2000
    """Clips per evaluation set at most (decoded clips are held in memory). A set with more is
    sampled: seeded by eval.seed, spread evenly over its scans and over each scan's length."""
    folds: int = 5
    """k of the k-fold cross-validation by scan (the papers: 5); the evaluated clips must come
    from k scans at least."""
    probe_l2: float = 1e-3
    """L2 penalty of the linear probe (multinomial logistic regression, full-batch L-BFGS)."""
    probe_iters: int = 200
    """L-BFGS iterations of the linear probe."""
    finetune_steps: int = 200
    """Optimizer steps of full fine-tuning per fold (batches of eval.batch_size), for plane
    detection and saliency alike; 0: skip the finetune protocol."""
    finetune_lr: float = 1e-4
    """Adam learning rate of the encoder when fine-tuning (plane detection and saliency)."""
    finetune_head_lr: float = 1e-2
    """Adam learning rate of the new linear head when fine-tuning for plane detection."""
    saliency_encoder: Literal["video", "image"] = "video"
    """Encoder under the saliency decoder: video (the clip's gaze) or image (its frame's gaze)."""
    saliency_epochs: int = 30
    """Epochs of the saliency decoder per fold under the linear protocol (encoder frozen)."""
    saliency_lr: float = 1e-3
    """Adam learning rate of the saliency decoder, under both protocols."""
    saliency_sigma: float = 1 / 16
    """Gaussian blur of fixations as a fraction of the map width (project default 1/16)."""
    batch_size: int = 16
    """Clips per forward pass in evaluation."""
    seed: int = 0
    """Seed of the clip sample, folds, probes and the random-encoder baseline."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where evaluation runs (bf16 autocast on CUDA). auto: for `python -m usvs_dist.evaluate`,
    CUDA when torch sees it, else the CPU; during training, the training process's device.
    `evaluate --device` overrides it; cuda without a CUDA device stops evaluation."""

    def check(self) -> None:
        """Cadence, subset and set sizes, folds and the protocols' settings."""
        self.require(self.every >= 0, "every", ">= 0 (0: off)")
        self.require(self.subset >= 4, "subset", ">= 4")
        self.require(self.max_clips >= 4, "max_clips", ">= 4")
        self.require(self.folds >= 2, "folds", ">= 2")
        self.require(len(self.plane_splits) >= 1, "plane_splits", "one split at least")
        self.require(len(self.periodic_plane_splits) >= 1, "periodic_plane_splits", "one split at least")
        self.require(self.probe_l2 >= 0, "probe_l2", ">= 0")
        self.require(self.probe_iters >= 1, "probe_iters", ">= 1")
        self.require(self.finetune_steps >= 0, "finetune_steps", ">= 0 (0: skip fine-tuning)")
        self.require(self.finetune_lr > 0, "finetune_lr", "> 0")
        self.require(self.finetune_head_lr > 0, "finetune_head_lr", "> 0")
        self.require(self.saliency_epochs >= 1, "saliency_epochs", ">= 1")
        self.require(self.saliency_lr > 0, "saliency_lr", "> 0")
        self.require(0 < self.saliency_sigma <= 0.5, "saliency_sigma", "in (0, 0.5]")
        self.require(self.batch_size >= 1, "batch_size", ">= 1")


@dataclass(kw_only=True)
class RootConfig(Section):
    """A whole pretraining run."""

    data: DataConfig = field(default_factory=DataConfig)
    phantom: PhantomConfig = field(default_factory=PhantomConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def check(self) -> None:
        """train.global_batch, when set, against the batch product it must equal; model.sync_bn
        only on GPU runs."""
        data, train = self.data, self.train
        # torch.nn.SyncBatchNorm.forward (torch/nn/modules/batchnorm.py) raises "SyncBatchNorm
        # expected input tensor to be on GPU ..." for a CPU input whenever a process group is up,
        # even at world size 1: refuse here, before any worker starts.
        self.model.require(
            not (self.model.sync_bn and not train.use_gpu),
            "sync_bn",
            f"false when {train.key('use_gpu')} is false (torch.nn.SyncBatchNorm needs CUDA tensors)",
        )
        per_step = data.batch_size * train.num_workers * train.grad_accum_steps
        train.require(
            train.global_batch in (0, per_step),
            "global_batch",
            f"0 or {data.key('batch_size')} ({data.batch_size}) x {train.key('num_workers')} "
            f"({train.num_workers}) x {train.key('grad_accum_steps')} ({train.grad_accum_steps})"
            f" = {per_step}",
        )

    @property
    def global_batch(self) -> int:
        """Clips per optimizer step over all ranks."""
        return self.data.batch_size * self.train.num_workers * self.train.grad_accum_steps


name_sections(RootConfig)
