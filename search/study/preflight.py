"""A study config checked against its data before anything runs, without decoding an image.

``preflight(cfg)`` counts every class and the train/val/test images it will give (the split
``load_splits`` makes), refuses what ``run`` would refuse (an imagefolder that is not a folder, has
one class, or an empty class: :class:`~search.engine.counts.DataError`), and words a warning
for each way the data is too small for the config:

- a batch size the space can sample leaves fewer than :data:`MIN_STEPS` optimizer steps an epoch
  on the train split (and the last partial batch, dropped each epoch, is never seen in it);
- the validation split holds fewer than :data:`MIN_VAL` images, so one image moves the
  accuracy the search compares trials by in steps of ``100 / n`` points;
- a class gets no validation image, or fewer train+val images than ``confirm.folds`` needs.

``search validate`` prints :meth:`Preflight.listing` and both ``validate`` and ``run`` log the
warnings (``run`` once, before its workers start). Imports neither torch nor optuna.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from search.config import ConfigError, ParamSpec, StudyConfig, space_corners, trial_config
from search.engine.cache_key import folders_written
from search.engine.counts import (
    ClassCount,
    DataCounts,
    class_split,
    data_counts,
    input_hw,
    steps_per_epoch,
)
from search.engine.geometry import check_input_size
from search.store.folders import check_writable
from search.study.space import space_warnings

log = logging.getLogger(__name__)

MIN_STEPS = 4  # fewer optimizer steps an epoch than this: the epoch budget barely trains a net
MIN_VAL = 100  # fewer validation images than this: one image moves the accuracy by over a point
NAMES_SHOWN = 5  # classes named in one warning line before "and N more"


@dataclass(frozen=True)
class Preflight:
    """The data's counts and the warnings about them, for one study config."""

    cfg: StudyConfig
    counts: DataCounts
    warnings: tuple[str, ...]

    def listing(self) -> list[str]:
        """The counts as ``search validate`` prints them: a summary line, then (for an
        imagefolder) one line per class."""
        c, data = self.counts, self.cfg.data
        where = f" {data.labels_csv or data.root}" if c.dataset == "imagefolder" else ""
        official = " official" if c.official_test else ""
        lines = [
            f"data: {c.dataset}{where}, {len(c.classes)} classes, {c.images} images "
            f"(train {c.train}, val {c.val}, test {c.test}{official})"
        ]
        if c.dataset != "imagefolder":
            return lines
        name_width = max(len(k.name) for k in c.classes)
        count_width = len(str(max(k.images for k in c.classes)))
        for k in c.classes:
            lines.append(
                f"  {k.name:<{name_width}}  {k.images:>{count_width}}  "
                f"(train {k.train}, val {k.val}, test {k.test})"
            )
        return lines

    def log_warnings(self) -> None:
        """Each warning as one WARNING log line."""
        for warning in self.warnings:
            log.warning("%s", warning)


def preflight(cfg: StudyConfig) -> Preflight:
    """The counts of ``cfg``'s data and the warnings about them (see the module docstring).

    Raises:
        DataError: an imagefolder that ``run`` would refuse; the message names the folder.
    """
    counts = data_counts(cfg.data)
    hw = input_hw(cfg.data)
    if hw is not None:  # the check `run` makes on the decoded images, here from the sizes alone
        check_space_fits(cfg, (1, *hw))  # the channels do not change the geometry
    warnings = [_batch_warning(cfg, counts.train), _val_warning(cfg, counts.val)]
    warnings += [_no_val_warning(cfg, counts), _folds_warning(cfg, counts)]
    warnings += space_warnings(cfg)  # not data, but validate and run log them with these
    return Preflight(cfg, counts, tuple(w for w in warnings if w))


# the model options that decide the smallest input the net accepts
_GEOMETRY = ("model.stages", "model.pool", "model.padding", "model.kernel_size")


def check_space_fits(cfg: StudyConfig, in_shape: Sequence[int]) -> None:
    """ConfigError unless every net the space can sample accepts ``in_shape`` (C, H, W).

    Checks every mix of the searched model options that change the net's geometry (finite
    choices; a ``model.stages`` range by its two ends: more stages never need smaller images), so
    ``model.stages: {choices: [2, 3, 4]}`` too deep for 8x8 digits is refused before any study
    exists instead of failing its trials one by one. With none of them searched, the study's own
    model settings are checked.
    """
    searched = [k for k in _GEOMETRY if k in cfg.search.space]
    if not searched:
        check_input_size(cfg.model, in_shape)
        return
    for mix in space_corners(cfg, _GEOMETRY):
        try:
            check_input_size(trial_config(cfg, mix).model, in_shape)
        except ConfigError as exc:
            raise ConfigError(
                f"search.space.{searched[0]}",
                ", ".join(f"{k}={mix[k]}" for k in searched),
                f"a net this space can sample does not fit: {exc.problem}",
                f"narrow {', '.join(searched)} in search.space to nets that fit, or use larger images",
            ) from None


def check_run_folders(cfg: StudyConfig) -> None:
    """UnwritableFolder for any folder a run writes (weights, checkpoints, data cache) that cannot
    be written; run before the first trial (and by ``search validate``), it creates nothing."""
    folders: dict[str, str] = {"checkpoints_dir": cfg.checkpoints_dir}
    if cfg.search.keep_top_k > 0:
        folders["artifacts_dir"] = cfg.artifacts_dir
    check_writable({**folders, **folders_written(cfg.data)})


def sampled_batch_sizes(spec: ParamSpec) -> list[int]:
    """The batch sizes ``spec`` can give a trial that matter here: a fixed value, every choice, or a
    range's two ends (its high end rounded down onto the step), smallest first."""
    if spec.value is not None:
        return [int(spec.value)]
    if spec.choices is not None:
        return sorted(int(c) for c in spec.choices)
    assert spec.low is not None and spec.high is not None
    low, high = int(spec.low), int(spec.high)
    if spec.step is not None:
        high = low + (high - low) // int(spec.step) * int(spec.step)
    return sorted({low, high})


def _batch_warning(cfg: StudyConfig, n_train: int) -> str:
    spec = cfg.search.space["batch_size"]
    few = [b for b in sampled_batch_sizes(spec) if steps_per_epoch(n_train, b) < MIN_STEPS]
    if not few:
        return ""
    steps = [steps_per_epoch(n_train, b) for b in few]
    # the train loop drops each epoch's last partial batch (a new one each epoch: a new order)
    dropped = [n_train - s * min(b, n_train) for b, s in zip(few, steps, strict=True)]
    one = len(few) == 1
    verb = "is" if spec.value is not None else "can be"
    if one:
        what = f"that is {steps[0]} optimizer step{'' if steps[0] == 1 else 's'} per epoch"
    else:
        what = f"they give {_series(steps)} optimizer steps per epoch"
    drop = ""
    if any(dropped):
        drop = f", and dropping the last partial batch leaves {_series(dropped)} images an epoch unseen"
    return (
        f"search.space.batch_size {verb} {_series(few)}: on {n_train} training images {what} "
        f"(fewer than {MIN_STEPS}){drop}. Fix: {_batch_fix(spec, n_train)}"
    )


def _series(values: list[int]) -> str:
    return ", ".join(str(v) for v in values)


def _batch_fix(spec: ParamSpec, n_train: int) -> str:
    """Lower the batch size to the largest power of two that gives MIN_STEPS steps."""
    best = 1
    while steps_per_epoch(n_train, best * 2) >= MIN_STEPS:
        best *= 2
    if best < 2:
        return f"add training images (a batch of 2 needs {2 * MIN_STEPS} for {MIN_STEPS} steps)"
    form = "value" if spec.value is not None else f"choices up to {best}" if spec.choices else "high"
    return f"lower search.space.batch_size ({form}: {best} gives {steps_per_epoch(n_train, best)} steps)"


def _val_warning(cfg: StudyConfig, n_val: int) -> str:
    if n_val >= MIN_VAL:
        return ""
    fix = f"Fix: add images or raise data.val_fraction (now {cfg.data.val_fraction:g})"
    if n_val == 0:
        return f"the validation split holds no image: trials have no accuracy to compare. {fix}"
    return (
        f"the validation split holds only {n_val} images: each validation image is worth "
        f"{100 / n_val:.1f} points of accuracy, so trials closer than that are a tie. {fix}"
    )


def _no_val_warning(cfg: StudyConfig, counts: DataCounts) -> str:
    empty = [k for k in counts.classes if k.val == 0]
    if not empty:
        return ""
    need = next(
        n for n in range(1, 1000) if class_split(cfg.data, "", n, 0 if counts.official_test else None).val
    )
    fractions = f"data.val_fraction {cfg.data.val_fraction:g}"
    if not counts.official_test:
        fractions = f"data.test_fraction {cfg.data.test_fraction:g} and " + fractions
    one = len(empty) == 1
    return (
        f"class{'' if one else 'es'} {_named(empty)} get{'s' if one else ''} no validation image: with "
        f"{fractions} a class needs at least {need} images. Fix: add images to "
        f"{'it' if one else 'them'} (or remove {'the class' if one else 'those classes'})"
    )


def _folds_warning(cfg: StudyConfig, counts: DataCounts) -> str:
    folds = cfg.confirm.folds
    few = [k for k in counts.classes if folds > 0 and k.train + k.val < folds]
    if not few:
        return ""
    one = len(few) == 1
    return (
        f"class{'' if one else 'es'} {_named(few, train_val=True)} hold{'s' if one else ''} fewer "
        f"train+val images than confirm.folds ({folds}): `search confirm` would validate some folds "
        f"without {'it' if one else 'them'}. Fix: add images or lower confirm.folds"
    )


def _named(classes: list[ClassCount], *, train_val: bool = False) -> str:
    """Up to NAMES_SHOWN classes as ``'cat' (2 images)``, then how many more."""

    def count(k: ClassCount) -> str:
        n = k.train + k.val if train_val else k.images
        return f"{n} {'train+val ' if train_val else ''}image{'' if n == 1 else 's'}"

    shown = ", ".join(f"{k.name!r} ({count(k)})" for k in classes[:NAMES_SHOWN])
    more = len(classes) - NAMES_SHOWN
    return shown + (f" and {more} more" if more > 0 else "")
