"""The sections of what a trial trains on: the data (with its augmentation, normalisation and
synthetic images), the model and the training loop."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

import annotated_types
from pydantic import ValidationInfo, model_validator
from pydantic.dataclasses import dataclass

from search.config._checks import amp_contradicts_precision, block_problem, nesterov_without_momentum
from search.config._errors import ALONE, ConfigError
from search.config._fields import DATA_FIXED, SECTION, SPEED, field
from search.config._types import (
    ArchName,
    BlockName,
    Bool,
    Dataset,
    Float,
    Int,
    LrScheduleName,
    OptimizerName,
    PathStr,
    ResizeMode,
    Str,
    list_of,
)

MAX_THREADS = 4096  # search.engine.threads.MAX_THREADS: a typo beyond it, refused


@dataclass(frozen=True, config=SECTION)
class AugmentConfig:
    """Training-time augmentation, applied batched and per sample on the device."""

    hflip: Bool = field(
        default=False, doc="random horizontal flip, p=0.5 per sample", fix="write true or false"
    )
    crop_pad: Int = field(
        default=0, doc="reflect-pad by this many px, then crop back", fix="use 0 to disable", ge=0
    )
    rotate_deg: Float = field(
        default=0.0, doc="rotation uniform in [-rotate_deg, rotate_deg]", fix="use e.g. 20", ge=0, le=180
    )
    color_jitter: Float = field(
        default=0.0,
        doc="brightness/contrast/saturation factors in [1-j, 1+j]",
        fix="use e.g. 0.2",
        ge=0,
        lt=1,
    )
    hue: Float = field(
        default=0.0, doc="hue shift in [-hue, hue] turns (3-channel only)", fix="use e.g. 0.1", ge=0, le=0.5
    )

    @property
    def enabled(self) -> bool:
        """True when at least one augmentation is active."""
        return self.hflip or self.crop_pad > 0 or self.rotate_deg > 0 or self.color_jitter > 0 or self.hue > 0


@dataclass(frozen=True, config=SECTION)
class NormalizeConfig:
    """Per-channel normalisation; when absent, mean/std are computed from the training split."""

    mean: tuple[Float, ...] = field(
        doc="per-channel mean subtracted from the pixels (0..1 scale), one value per channel",
        fix="give one value per channel, e.g. [0.5, 0.5, 0.5]",
    )
    std: tuple[Annotated[float, annotated_types.Gt(0)], ...] = field(
        doc="per-channel standard deviation the pixels are divided by, one value per channel",
        fix="use e.g. [0.5, 0.5, 0.5]",
        problem="must be positive",
    )

    @model_validator(mode="after")
    def _same_length(self) -> NormalizeConfig:
        if len(self.mean) != len(self.std) or not self.mean:
            raise ConfigError(
                "",
                {"mean": list(self.mean), "std": list(self.std)},
                "mean and std need one value per channel",
                "give equally long lists",
            )
        return self


@dataclass(frozen=True, config=SECTION)
class SyntheticConfig:
    """Random, learnable images for tests: class-dependent patterns plus noise."""

    shape: Annotated[tuple[Int, Int, Int], list_of(3)] = field(
        default=(3, 32, 32), doc="[channels (1 or 3), height, width]", fix="use e.g. [3, 32, 32]"
    )
    n_classes: Int = field(
        default=10, doc="number of classes", fix="use e.g. 10", ge=2, problem="need at least 2 classes"
    )
    n_samples: Int = field(
        default=512, doc="images in all splits together", fix="use at least 10 per class", ge=1
    )

    @model_validator(mode="after")
    def _consistent(self) -> SyntheticConfig:
        if not (all(v >= 1 for v in self.shape) and self.shape[0] in (1, 3)):
            raise ConfigError(
                "shape", self.shape, "expected [channels (1 or 3), height, width]", "use e.g. [3, 32, 32]"
            )
        if self.n_samples < 10 * self.n_classes:
            raise ConfigError(
                "n_samples",
                self.n_samples,
                f"too few for {self.n_classes} classes",
                f"use at least {10 * self.n_classes}",
            )
        return self


@dataclass(frozen=True, config=SECTION)
class DataConfig:
    """Which images, where they live, and how they are split and augmented."""

    dataset: Dataset = field(
        default="digits", doc="the dataset", problem="unknown dataset", searchable=DATA_FIXED
    )
    root: PathStr = field(
        default="storage/data",
        doc="dataset folder: an imagefolder's class folders (one sub-folder of images per class), or "
        "where mnist / fashion_mnist / cifar10 are downloaded (digits and synthetic do not read it). "
        "A relative path is looked up in the working directory first, then in the folder of the "
        "config file that sets it; the first that exists is used, as an absolute path (so a bundled "
        "config runs from any directory). Found nowhere, it stays relative to the working directory "
        "(a download lands there); for an imagefolder the run stops, naming every place looked",
        fix="give a folder",
        searchable=DATA_FIXED,
    )
    cache_dir: PathStr = field(
        default="storage/data/cache", doc="decoded-tensor cache", fix="give a folder", resumable=True
    )
    val_fraction: Float = field(
        default=0.1,
        doc="validation share",
        fix="use e.g. 0.1",
        gt=0,
        lt=1,
        problem="must be between 0 and 1",
        searchable=DATA_FIXED,
    )
    test_fraction: Float = field(
        default=0.2,
        doc="test share (held out until finetune)",
        fix="use e.g. 0.2",
        gt=0,
        lt=1,
        problem="must be between 0 and 1 and leave room for training",
        searchable=DATA_FIXED,
    )
    image_size: Int | None = field(
        default=None,
        doc="resize images to this square size",
        fix="use e.g. 32, or null to keep the images' own size",
        ge=1,
        searchable=DATA_FIXED,
    )
    resize: ResizeMode = field(
        default="stretch",
        doc="how image_size makes a non-square photo square: stretch (the whole photo, squeezed), "
        "center_crop (the largest centred square) or pad (the whole photo on black borders)",
        problem="unknown resize mode",
        searchable=DATA_FIXED,
    )
    labels_csv: Str | None = field(
        default=None,
        doc="imagefolder: a CSV of path,label rows (paths relative to the CSV's folder; an optional "
        "first row path,label) used instead of one sub-folder per class; data.root is then not read. "
        "A relative path is looked up like data.root",
        fix="give a CSV file of path,label rows, or null for class folders",
        searchable=DATA_FIXED,
    )
    device_budget: Float = field(
        default=0.5,
        doc="share of the training device's free memory (CUDA; on the CPU the available RAM) the "
        "decoded training and validation images may take to stay resident there; a larger set is "
        "streamed batch by batch from the memory-mapped cache",
        fix="use e.g. 0.5",
        gt=0,
        le=1,
        problem="must be above 0 and at most 1",
        resumable=True,
    )
    augment: AugmentConfig = field(default_factory=AugmentConfig, doc="training augmentation")
    normalize: NormalizeConfig | None = field(
        default=None, doc="fixed mean/std (default: measured)", searchable=DATA_FIXED
    )
    synthetic: SyntheticConfig = field(
        default_factory=SyntheticConfig, doc="dataset: synthetic", searchable=DATA_FIXED
    )

    @model_validator(mode="after")
    def _labels_csv_is_for_imagefolder(self) -> DataConfig:
        if self.labels_csv is not None and self.dataset != "imagefolder":
            raise ConfigError(
                "labels_csv",
                self.labels_csv,
                f"only read by dataset: imagefolder (dataset is {self.dataset})",
                "set data.dataset: imagefolder, or remove data.labels_csv",
            )
        return self

    @model_validator(mode="after")
    def _room_for_training(self) -> DataConfig:
        if self.val_fraction + self.test_fraction >= 1:
            raise ConfigError(
                "test_fraction",
                self.test_fraction,
                "must be between 0 and 1 and leave room for training",
                "use e.g. 0.2",
            )
        return self


@dataclass(frozen=True, config=SECTION)
class ModelConfig:
    """The ConvNet's fixed settings (the searched widths are in search.space)."""

    padding: Literal[0, 1, 2] = field(
        default=1, doc="conv padding", fix="use 0 for the seed's net, 1 to keep sizes"
    )
    dropout: Annotated[
        tuple[
            Annotated[float, annotated_types.Ge(0), annotated_types.Lt(1)],
            Annotated[float, annotated_types.Ge(0), annotated_types.Lt(1)],
        ],
        list_of(2),
    ] = field(
        default=(0.1, 0.5),
        doc="dropout probabilities [p0, p1]: p0 after every stage but the last, p1 after the last",
        fix="use e.g. [0.1, 0.5]",
        problem="must be within [0, 1)",
    )
    stages: Int = field(
        default=2,
        doc="conv stages, each two convs then pooling and dropout (widths c1, c2, then doubling)",
        fix="use e.g. 2 (the seed's net) to 4 for 64-224 px images",
        ge=2,
        le=6,
    )
    kernel_size: Literal[1, 3, 5, 7] = field(
        default=3, doc="conv kernel size (odd)", fix="use 3 (or 1, 5, 7)"
    )
    pool: Literal["none", "max", "avg"] = field(
        default="none",
        doc="2x2 pooling at the end of each stage (halves the size)",
        fix="use none, max or avg",
    )
    head: Literal["flatten", "global_avg"] = field(
        default="flatten",
        doc="classifier input: all features flattened, or global average pooling to one value per channel",
        fix="use flatten (the seed's net) or global_avg (size-independent head)",
    )
    batchnorm: Bool = field(default=False, doc="BatchNorm2d after each conv", fix="write true or false")
    residual: Bool = field(
        default=False,
        doc="each stage a residual block: its two convs plus a 1x1 projection shortcut (the same as "
        "block: residual, which it sets)",
        fix="write true or false",
    )
    block: BlockName = field(
        default="plain",
        doc="what each stage is: plain (two convs), residual (plus a 1x1 projection shortcut), "
        "depthwise (MobileNet v1: depthwise k x k + pointwise 1x1, each with BatchNorm and ReLU; needs "
        "batchnorm: true), inception (GoogLeNet v1: 1x1; 1x1-3x3; 1x1-5x5; pool-1x1, concatenated to the "
        "stage width; needs kernel_size 3 and padding 1). c1, c2 and l1 keep their meaning",
        problem="unknown block",
    )
    arch: ArchName = field(
        default="convnet",
        doc="the net: convnet (this section's options, widths c1/c2/l1) or resnet18 (torchvision's "
        "ResNet-18 from scratch, its own widths; 3x3 stride-1 stem without max pool for images up to "
        "64 px). resnet18 ignores c1, c2, l1 and the other options here",
        problem="unknown architecture",
    )
    init_from: Str | None = field(
        default=None,
        doc="a state_dict file (plain tensors: an export's best.pt or the export folder, saved "
        "torchvision weights) every trial starts from: tensors whose names and shapes match are "
        "loaded, the rest stay freshly initialised. Its content is part of the experiment (a changed "
        "file is a config difference on resume)",
        fix="give a .pt file of tensors, or null",
        searchable="it is a file read once before the study starts",
    )

    @model_validator(mode="before")
    @classmethod
    def _residual_is_a_block(cls, raw: Any, info: ValidationInfo) -> Any:
        if info.context and info.context.get(ALONE):
            return raw
        if (
            isinstance(raw, Mapping)
            and raw.get("residual") is True
            and raw.get("block", "residual") != "residual"
        ):
            raise ConfigError(
                "block",
                raw["block"],
                "contradicts residual: true (which means block: residual)",
                "drop model.residual, or write block: residual",
            )
        return raw

    @model_validator(mode="after")
    def _block_options(self, info: ValidationInfo) -> ModelConfig:
        if self.residual and self.block == "plain":  # ModelConfig(residual=True) from code
            object.__setattr__(self, "block", "residual")
        if info.context and info.context.get(ALONE):
            return self
        problem = block_problem(self.block, self.residual, self.batchnorm, self.kernel_size, self.padding)
        if problem is not None:
            raise ConfigError(*problem)
        return self


@dataclass(frozen=True, config=SECTION)
class TrainConfig:
    """One trial's training loop."""

    epochs: Int = field(
        default=10,
        doc="maximum epochs per trial",
        fix="use e.g. 10",
        ge=1,
        searchable="it is the pruners' and the report's epoch budget; search train.patience instead",
    )
    patience: Int = field(default=3, doc="early-stopping patience (epochs)", fix="use e.g. 3", ge=1)
    min_delta: Float = field(
        default=0.0, doc="smallest improvement that resets patience", fix="use 0.0", ge=0
    )
    weight_decay: Float = field(
        default=0.0, doc="weight decay (adam, sgd: L2 in the gradient; adamw: decoupled)", fix="use 0.0", ge=0
    )
    optimizer: OptimizerName = field(default="adam", doc="the optimizer", problem="unknown optimizer")
    momentum: Float = field(default=0.9, doc="SGD momentum (sgd only)", fix="use e.g. 0.9", ge=0, lt=1)
    nesterov: Bool = field(
        default=False, doc="Nesterov momentum (sgd only; needs momentum > 0)", fix="write true or false"
    )
    label_smoothing: Float = field(
        default=0.0,
        doc="label smoothing of the training loss (validation loss: plain)",
        fix="use e.g. 0.1",
        ge=0,
        lt=1,
    )
    lr_schedule: LrScheduleName = field(
        default="constant",
        doc="lr over the epochs, per step: constant, cosine (to 0 at train.epochs), onecycle",
        problem="unknown lr schedule",
    )
    warmup_epochs: Int = field(
        default=0,
        doc="linear lr warm-up from 0 (constant, cosine); onecycle: its rising phase (0: 30% of epochs)",
        fix="use e.g. 1, or 0 for no warm-up",
        ge=0,
    )
    amp: Bool = field(
        default=True,
        doc="mixed precision: false trains in float32 (as precision: fp32); true: as train.precision says",
        fix="write true or false",
        searchable=SPEED,
    )
    precision: Literal["auto", "fp32", "bf16"] = field(
        default="auto",
        doc="auto: bf16 autocast on CUDA and on CPUs with native bf16 (AMX, AVX512-BF16), else fp32",
        fix="use auto, fp32 or bf16",
        resumable=True,  # auto differs per machine anyway; each trial records what it trained in
    )
    channels_last: Bool = field(
        default=True, doc="channels-last memory format on CUDA", fix="write true or false", searchable=SPEED
    )
    compile: Bool = field(
        default=False, doc="torch.compile the model", fix="write true or false", resumable=True
    )
    eval_batch_size: Int = field(
        default=1024, doc="batch size for evaluation", fix="use e.g. 1024", ge=1, resumable=True
    )
    checkpoint_every_s: Float = field(
        default=10.0,
        doc="a running trial's resume checkpoint at most this often; 0: every epoch",
        fix="use e.g. 10 (seconds), or 0 to checkpoint after every epoch",
        ge=0,
        resumable=True,
    )
    tensorboard: Bool = field(
        default=False,
        doc="TensorBoard scalars per epoch and hparams per trial (extra [tensorboard])",
        fix="write true or false",
        resumable=True,
    )
    threads: Int | None = field(
        default=None,
        doc="torch CPU threads per process (null: free cores (usable less busy) // local workers)",
        fix="use e.g. 2, or null for free cores // local workers",
        ge=1,
        resumable=True,
    )

    @model_validator(mode="after")
    def _threads_a_machine_has(self) -> TrainConfig:
        # over the usable cores: lowered to them at run time, with a warning (search.engine.threads)
        if self.threads is not None and self.threads > MAX_THREADS:
            raise ConfigError(
                "threads",
                self.threads,
                f"must be at most {MAX_THREADS} (more than any machine's cores)",
                "use e.g. 2, or null for free cores // local workers",
            )
        return self

    @model_validator(mode="after")
    def _nesterov_needs_momentum(self) -> TrainConfig:
        if nesterov_without_momentum(self.optimizer, self.nesterov, self.momentum):
            raise ConfigError(
                "nesterov", True, "Nesterov momentum needs momentum > 0", "set train.momentum: 0.9"
            )
        return self

    @model_validator(mode="after")
    def _amp_agrees_with_precision(self) -> TrainConfig:
        if amp_contradicts_precision(self.amp, self.precision):
            raise ConfigError(
                "precision",
                self.precision,
                f"train.amp: false (float32) contradicts train.precision: {self.precision} (mixed precision)",
                "drop train.amp (or set it true) to train in bf16, or set train.precision: fp32",
            )
        return self
