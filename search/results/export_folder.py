"""An export folder: what it holds, writing one, loading one back, predicting with it.

An export folder holds ``best.pt`` (a plain ``state_dict``; ``torch.load(..., weights_only=True)``),
``config.json`` (everything needed to rebuild the net and its input: widths, padding, dropout,
input shape, colour mode, classes, normalisation mean/std; plus the trial's params and its full
study config, dotted searched fields applied) and a short model card ``README.md``. ``search
export`` writes one per trial; ``search finetune`` makes its output folder one too (its
``config.json`` then has a ``finetune`` entry: where the model came from and its test figures).
:func:`load_export` turns a folder back into an eval-mode ``ConvNet`` plus its input transform
(through the trial's :class:`TrialRecipe`); :func:`predict_files` runs it on image files (PIL
load, colour conversion, resize).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from optuna.trial import FrozenTrial
from torch import nn

from search.config import ConfigError, ModelConfig, build, to_dict
from search.engine.arch import family, family_title
from search.engine.augment import BatchTransform
from search.engine.data import DataError, printable_name
from search.engine.device import autocast
from search.engine.ingest import Plan, decode
from search.engine.onnx_model import RUN_MODULES, require_onnx
from search.results.onnx_check import ONNX_FILE, onnx_card, onnx_probs
from search.store.artifacts import UnreadableFile, load_tensors, tensor_bytes
from search.store.records import (
    BEST_EPOCH_ATTR,
    EPOCHS_RUN_ATTR,
    FAMILY_ATTR,
    INIT_FROM_LOADED_ATTR,
    INIT_FROM_SKIPPED_ATTR,
)
from search.study.pareto import accuracy
from search.study.recipe import DataFacts, RecipeError, TrialRecipe, load_weights_into

EXPORT_FORMAT = 1
WEIGHTS_FILE = "best.pt"
CONFIG_FILE = "config.json"
CARD_FILE = "README.md"
WIDTHS = ("c1", "c2", "l1")  # config.json model entries that are trial params, not ModelConfig

# One class for "this trial or export folder cannot be used": the recipe raises it while
# rebuilding a trial, this module while reading or writing a folder.
ExportError = RecipeError


def export_config(study_name: str, trial: FrozenTrial, recipe: TrialRecipe) -> dict[str, Any]:
    """config.json's content: how to rebuild ``trial``'s model and preprocess its input."""
    cfg, params, data = recipe.cfg, recipe.params, recipe.data
    return {
        "format": EXPORT_FORMAT,
        "study": study_name,
        "trial": trial.number,
        "model": {**recipe.widths._asdict(), **to_dict(cfg)["model"]},
        "in_shape": list(data.in_shape),
        "color_mode": "L" if data.in_shape[0] == 1 else "RGB",
        "n_classes": data.n_classes,
        "classes": [printable_name(str(c)) for c in data.classes],
        "normalize": {"mean": list(data.mean), "std": list(data.std)},
        "train": {"lr": recipe.lr, "batch_size": recipe.batch_size},
        "precision": recipe.cfg.train.precision,  # what it trained in (rebuild pins it); predict's too
        "params": dict(params),  # every searched parameter, by its Optuna name
        "config": to_dict(cfg),  # the trial's full study config
        "val_accuracy": accuracy(trial),
        "best_epoch": trial.user_attrs.get(BEST_EPOCH_ATTR),
        "family": trial.user_attrs.get(FAMILY_ATTR, family(cfg.model)),
        "init_from": _init_from(cfg.model.init_from, trial.user_attrs),
        "epochs_run": trial.user_attrs.get(EPOCHS_RUN_ATTR),
        "dataset": {
            "name": cfg.data.dataset,
            "root": cfg.data.root,
            "image_size": cfg.data.image_size,
            "n_train": data.n_train,
            "n_val": data.n_val,
        },
        "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def architecture(m: Mapping[str, Any], in_shape: Sequence[int] = (3, 32, 32)) -> str:
    """One line describing an export's ``model`` entry (options missing in old exports: defaults)
    for images of ``in_shape`` (a torchvision arch's stem depends on their size)."""
    g = {**{f.name: f.default for f in dataclasses.fields(ModelConfig)}, **m}
    if g["arch"] != "convnet":
        return family_title(ModelConfig(arch=g["arch"]), in_shape)
    blocks = "" if g["block"] in ("plain", "residual") else f", {g['block']} blocks"
    text = (
        f"ConvNet c1={g['c1']} c2={g['c2']} l1={g['l1']}, padding {g['padding']}, {g['stages']} stages, "
        f"kernel {g['kernel_size']}, pool {g['pool']}, head {g['head']}{blocks}"
    )
    return text + "".join(f", {k}" for k in ("batchnorm", "residual") if g[k])


def recipe_of_config(config: Mapping[str, Any], where: str = CONFIG_FILE) -> TrialRecipe:
    """The recipe of the net an export's config.json describes (ExportError naming ``where`` when
    it does not). Exports from before the configurable net lack the newer model options: their
    defaults are that net."""
    try:
        m = config["model"]
        options = build(ModelConfig, {k: v for k, v in m.items() if k not in WIDTHS}, "model")
        widths = [int(m[k]) for k in WIDTHS]
        c, h, w = (int(v) for v in config["in_shape"])
        n_classes = int(config["n_classes"])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ExportError(
            f"{where} does not describe a model ({type(exc).__name__}: {exc}). Fix: export the study again"
        ) from exc
    classes = config.get("classes")
    if not isinstance(classes, list) or len(classes) != n_classes:
        classes = [str(i) for i in range(n_classes)]
    try:
        norm = config["normalize"]
        mean, std = tuple(float(v) for v in norm["mean"]), tuple(float(v) for v in norm["std"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ExportError(f"{where} has no usable normalize entry. Fix: export again") from exc
    return TrialRecipe.of_net(options, widths, DataFacts((c, h, w), tuple(map(str, classes)), mean, std))


def build_from_config(config: Mapping[str, Any]) -> nn.Module:
    """A fresh (untrained) net with the architecture recorded in an export's config."""
    recipe = recipe_of_config(config)
    try:
        return recipe.model()
    except (ValueError, RuntimeError) as exc:
        raise ExportError(
            f"{CONFIG_FILE} does not describe a model ({type(exc).__name__}: {exc}). "
            "Fix: export the study again"
        ) from exc


# --------------------------------------------------------------------------- the model card


def _rounded(values: Sequence[float]) -> str:
    """``[0.4949, 0.4936]``: a card's figures to 4 decimals (config.json keeps them exact)."""
    return "[" + ", ".join(f"{float(v):.4f}" for v in values) + "]"


PRECISION_NOTE = {
    "fp32": "float32",
    "bf16": "bf16 autocast: trained, validated and predicted in it",
}


def export_precision(config: Mapping[str, Any]) -> str:
    """What an export's model trained in and predicts in (exports from before it was recorded:
    fp32, how ``search predict`` always ran them)."""
    value = config.get("precision")
    return str(value) if value in PRECISION_NOTE else "fp32"


def model_card(config: Mapping[str, Any], n_params: int, folder: str = ".") -> str:
    """README.md of an export folder at ``folder``: the model, its data, its figures, how to load it;
    for a fine-tuned model also where it came from and its test accuracy, overall and per class."""
    m, d = config["model"], config["dataset"]
    dotted = {k: v for k, v in config.get("params", {}).items() if "." in k}
    searched = (
        "| searched config | " + ", ".join(f"{k}={v}" for k, v in dotted.items()) + " |\n" if dotted else ""
    )
    ft = config.get("finetune")
    title = f"{config['study']} — trial {config['trial']}" + (", fine-tuned" if ft else "")
    origin = (
        "ConvNet fine-tuned by convnet-search (`search finetune`), then evaluated once on the test split."
        if ft
        else "ConvNet exported by convnet-search."
    )
    norm = f"mean {_rounded(config['normalize']['mean'])}, std {_rounded(config['normalize']['std'])}"
    onnx_part = onnx_card(config.get("onnx"), config["in_shape"], config["n_classes"])
    return f"""# {title}

{origin}

| | |
| --- | --- |
| family | {_family(m)} |
{_init_row(config.get("init_from"))}| architecture | {architecture(m, config["in_shape"])} |
| dropout | {m["dropout"]} (off in eval mode) |
| parameters | {n_params:,} |
| validation accuracy | {config["val_accuracy"]:.4f} |
| epochs | best epoch {config["best_epoch"]} of {config["epochs_run"]} run{" (the trial's)" if ft else ""} |
| training | lr={config["train"]["lr"]:.3g}, batch size {config["train"]["batch_size"]} |
| precision | {export_precision(config)} ({PRECISION_NOTE[export_precision(config)]}) |
{searched}| dataset | {d["name"]} ({d["n_train"]} train / {d["n_val"]} val images) |
| input | {config["in_shape"]} (C, H, W), colour mode {config["color_mode"]} |
| classes | {", ".join(config["classes"])} |
| normalisation | {norm} (on pixels / 255; exact in config.json) |
| exported | {config["exported_at"]} |
{_finetune_section(ft) if ft else ""}{onnx_part}
Load it:

```python
from search.results.export import load_export
model, transform, config = load_export("{folder}")
probs = model(transform(images_uint8_nchw, train=False)).softmax(1)
```

Or from the command line: `search predict {folder} IMAGE...`.
The weights alone are a plain state_dict: `torch.load("{WEIGHTS_FILE}", weights_only=True)`.
"""


def _init_from(path: str | None, attrs: Mapping[str, Any]) -> dict[str, Any] | None:
    """config.json's ``init_from``: the file the trial started from and how much of it loaded."""
    if path is None:
        return None
    return {
        "path": path,
        "loaded": attrs.get(INIT_FROM_LOADED_ATTR),
        "skipped": attrs.get(INIT_FROM_SKIPPED_ATTR),
    }


def _init_row(init: Any) -> str:
    """The card's ``initialised from`` row (empty for a net trained from scratch)."""
    if not isinstance(init, Mapping):
        return ""
    return (
        f"| initialised from | {init['path']} ({init['loaded']} tensors loaded, {init['skipped']} "
        "freshly initialised) |\n"
    )


def _family(m: Mapping[str, Any]) -> str:
    """The card's family: ``convnet/<block>`` or the arch (old exports: their plain/residual net)."""
    try:
        return family(build(ModelConfig, {k: v for k, v in m.items() if k not in WIDTHS}, "model"))
    except ConfigError:
        return "?"


def _finetune_section(ft: Mapping[str, Any]) -> str:
    """The card's fine-tuning part: provenance, the run, and the one test-set evaluation."""
    test = ft["test"]
    why = "" if ft["started_from"] == f"trial {ft['trial']}" else f": {ft['started_from']}"
    lines = [
        "",
        "## Fine-tuning",
        "",
        "| | |",
        "| --- | --- |",
        f"| started from | trial {ft['trial']} of study {ft['study']}, "
        f"validation accuracy {ft['trial_value']:.4f}{why} |",
        f"| fine-tuning | lr {ft['lr']:.3g} (the trial's lr x {ft['lr_scale']:g}), up to {ft['epochs']} "
        f"epochs, patience {ft['patience']}; best epoch {ft['best_epoch']} of {ft['epochs_run']} run "
        f"({ft['stop_reason']}) |",
        f"| validation accuracy | {ft['start_val_acc']:.4f} at the start, "
        f"{ft['final_val_acc']:.4f} at the end |",
        f"| test accuracy | {test['accuracy']:.4f} on {test['n']} images, macro F1 {test['macro_f1']:.4f} "
        "(one look at the test split) |",
        f"| fine-tuned | {ft['finished_at']} on {ft['device']} |",
        "",
        "### Test split, per class",
        "",
        "| class | images | accuracy | precision | recall | F1 |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    lines += [
        f"| {printable_name(str(c['class']))} | {c['support']} | {c['accuracy']:.4f} | {c['precision']:.4f} "
        f"| {c['recall']:.4f} | {c['f1']:.4f} |"
        for c in test["per_class"]
    ]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- writing


def unwritable(folder: Path, exc: OSError) -> ExportError:
    """The error for an export folder that cannot be written (a full disk, no permission)."""
    return ExportError(
        f"cannot write the export to {folder} ({exc.strerror or exc}). Fix: free space or make "
        "it writable, or pass --out with another folder"
    )


def write_export_folder(
    folder: Path,
    state: Mapping[str, torch.Tensor],
    config: Mapping[str, Any],
    card: str,
    onnx: bytes | None = None,
) -> None:
    """``best.pt``, ``config.json`` and ``README.md`` into ``folder``, and ``model.onnx`` when
    ``onnx`` is given (else a ``model.onnx`` left by an earlier export there is removed: it would
    not be this export's).

    Everything is encoded in memory first (texts as UTF-8), then each file is written to a temp
    file and renamed into place: an error (a full disk) leaves no half-written file and no temp
    files. Raises ExportError naming the folder.
    """
    plain = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    try:
        files = {
            WEIGHTS_FILE: tensor_bytes(plain),
            CONFIG_FILE: (json.dumps(config, indent=2, ensure_ascii=False) + "\n").encode("utf-8"),
            CARD_FILE: card.encode("utf-8"),
            **({ONNX_FILE: onnx} if onnx is not None else {}),
        }
    except UnicodeEncodeError as exc:
        raise ExportError(f"trial {config['trial']}'s config cannot be written as UTF-8 ({exc})") from exc
    temps = {name: folder / f".{name}.tmp" for name in files}
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            temps[name].write_bytes(data)
        for name in files:
            temps[name].replace(folder / name)
        if onnx is None:
            (folder / ONNX_FILE).unlink(missing_ok=True)
    except OSError as exc:
        raise unwritable(folder, exc) from exc
    finally:
        for temp in temps.values():
            if not temp.is_dir():
                temp.unlink(missing_ok=True)


# --------------------------------------------------------------------------- loading and predicting


def read_export_config(folder: str | Path) -> dict[str, Any]:
    """An export folder's config.json (ExportError when the folder is not an export folder)."""
    path = Path(folder) / CONFIG_FILE
    try:
        config: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ExportError(
            f"{folder} is not an export folder (no {CONFIG_FILE}). Fix: run `search export STUDY` first"
        ) from exc
    except (OSError, json.JSONDecodeError) as exc:
        raise ExportError(f"cannot read {path} ({exc}). Fix: export the study again") from exc
    if config.get("format") != EXPORT_FORMAT:
        raise ExportError(f"{path} has format {config.get('format')!r}, expected {EXPORT_FORMAT}")
    return config


REQUIRED_KEYS = ("model", "in_shape", "n_classes", "classes", "normalize")


def check_export_config(config: Mapping[str, Any], where: str) -> None:
    """ExportError naming ``where`` and the key unless config.json has what predicting needs: the
    keys of :data:`REQUIRED_KEYS`, ``in_shape`` [C (1 or 3), H, W], ``n_classes`` >= 2 and as many
    ``classes`` (the names predict prints)."""
    fix = "Fix: export the study again (`search export STUDY`)"
    missing = [key for key in REQUIRED_KEYS if key not in config]
    if missing:
        raise ExportError(f"{where}: key {missing[0]!r} is missing. {fix}")
    shape, n, classes = config["in_shape"], config["n_classes"], config["classes"]
    if not (
        isinstance(shape, list)
        and len(shape) == 3
        and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in shape)
        and shape[0] in (1, 3)
    ):
        raise ExportError(
            f"{where}: key 'in_shape' is not [channels (1 or 3), height, width] (got {shape!r}). {fix}"
        )
    if not (isinstance(n, int) and not isinstance(n, bool) and n >= 2):
        raise ExportError(f"{where}: key 'n_classes' is not a count of 2 or more (got {n!r}). {fix}")
    if not (isinstance(classes, list) and all(isinstance(c, str) for c in classes)):
        raise ExportError(f"{where}: key 'classes' is not a list of class names. {fix}")
    if len(classes) != n:
        raise ExportError(
            f"{where}: key 'classes' names {len(classes)} classes but n_classes is {n} "
            f"(the model's outputs). {fix}"
        )


def _check_outputs(model: nn.Module, state: Any, n_classes: int, where: str, weights: Path) -> None:
    """ExportError naming config.json's ``n_classes`` when the weights' last layer has another
    number of outputs (so predict never prints a class the weights do not have)."""
    last = [name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)][-1]
    tensor = state.get(f"{last}.weight") if isinstance(state, dict) else None
    if isinstance(tensor, torch.Tensor) and tensor.ndim == 2 and tensor.shape[0] != n_classes:
        raise ExportError(
            f"{where}: key 'n_classes' is {n_classes} but the weights in {weights} give "
            f"{tensor.shape[0]} outputs. Fix: export the study again (`search export STUDY`)"
        )


def load_export(
    folder: str | Path, device: str | torch.device = "cpu"
) -> tuple[nn.Module, BatchTransform, dict[str, Any]]:
    """The exported model (eval mode, on ``device``), its input transform and its config
    (ExportError naming the file and the key when config.json lacks what predicting needs, or the
    weights do not fit it)."""
    config = read_export_config(folder)
    check_export_config(config, f"{Path(folder) / CONFIG_FILE}")
    weights = Path(folder) / WEIGHTS_FILE
    try:
        state = load_tensors(weights)
    except FileNotFoundError as exc:
        raise ExportError(f"{weights} is missing. Fix: export the study again") from exc
    except UnreadableFile as exc:
        raise ExportError(f"{exc}. Fix: export the study again (`search export STUDY`)") from exc
    where = f"{folder}/{CONFIG_FILE}"
    recipe = recipe_of_config(config, where)
    model = build_from_config(config)
    _check_outputs(model, state, config["n_classes"], where, weights)
    load_weights_into(model, state, weights)
    model.to(device).eval()
    try:
        transform = recipe.input_transform()
    except ValueError as exc:
        raise ExportError(f"{where} has no usable normalize entry. Fix: export again") from exc
    return model, transform, config


def load_images(paths: Sequence[str | Path], config: Mapping[str, Any]) -> torch.Tensor:
    """uint8 [N, C, H, W] images: each file decoded as training decoded it (colour mode, upright,
    made square by the trial's ``data.resize``)."""
    import numpy as np

    c, h, w = (int(v) for v in config["in_shape"])
    data = config.get("config", {}).get("data", {})
    plan = Plan("L" if c == 1 else "RGB", (w, h), str(data.get("resize") or "stretch"))
    arrays = []
    for path in paths:
        try:
            arrays.append(decode(Path(path), plan))
        except DataError as exc:
            raise ExportError(f"{exc} (give PNG/JPEG image files)") from exc
    return torch.from_numpy(np.stack(arrays)).contiguous()


@torch.no_grad()
def predict_tensor(
    model: nn.Module, transform: BatchTransform, images: torch.Tensor, precision: str = "fp32"
) -> torch.Tensor:
    """Class probabilities [N, n_classes] for uint8 images, computed in ``precision`` (the
    export's: :func:`export_precision`)."""
    model.eval()
    device = next(model.parameters()).device
    with autocast(device, precision):
        logits: torch.Tensor = model(transform(images.to(device), train=False))
    return logits.float().softmax(1)


def predict_files(
    folder: str | Path, paths: Sequence[str | Path], k: int = 3, *, onnx: bool = False
) -> list[list[tuple[str, float]]]:
    """Top-``k`` (class, probability) pairs for each image file, best first; with ``onnx``, from
    the folder's ``model.onnx`` under ONNX Runtime (the same images: decoded the same way)."""
    if onnx:
        require_onnx("search predict --onnx", RUN_MODULES)  # the extra first, then the folder
        config = read_export_config(folder)
        check_export_config(config, f"{Path(folder) / CONFIG_FILE}")
        probs = onnx_probs(Path(folder), load_images(paths, config))
    else:
        model, transform, config = load_export(folder)
        probs = predict_tensor(model, transform, load_images(paths, config), export_precision(config))
    k = min(k, probs.shape[1])
    top = probs.topk(k, dim=1)
    classes = config["classes"]
    return [
        [(classes[int(i)], float(p)) for p, i in zip(row_p, row_i, strict=True)]
        for row_p, row_i in zip(top.values, top.indices, strict=True)
    ]
