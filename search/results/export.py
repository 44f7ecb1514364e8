"""Export a trial's weights as a self-contained folder, rebuild the model from it, and predict.

An export folder holds ``best.pt`` (a plain ``state_dict``; ``torch.load(..., weights_only=True)``),
``config.json`` (everything needed to rebuild the net and its input: widths, padding, dropout,
input shape, colour mode, classes, normalisation mean/std; plus the trial's params and its full
study config, dotted searched fields applied) and a short model card ``README.md``.
:func:`load_export` turns such a folder back into an eval-mode ``ConvNet`` plus its input
transform; :func:`predict_files` runs it on image files (PIL load, colour conversion, resize).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from search.config import ModelConfig, StudyConfig, build, to_dict, trial_config
from search.engine.augment import BatchTransform
from search.engine.data import DataError, printable_name, read_image
from search.engine.model import ConvNet, build_convnet, count_parameters
from search.errors import InputError
from search.store.artifacts import (
    WEIGHTS_ATTR,
    UnreadableFile,
    WeightStore,
    load_tensors,
    tensor_bytes,
)
from search.store.storage import DATA_ATTR, best_trial
from search.study.space import params_of

log = logging.getLogger(__name__)

EXPORT_FORMAT = 1
WEIGHTS_FILE = "best.pt"
CONFIG_FILE = "config.json"
CARD_FILE = "README.md"
WIDTHS = ("c1", "c2", "l1")  # config.json model entries that are trial params, not ModelConfig


class ExportError(InputError):
    """A trial or export folder that cannot be used: says which one and what to do."""


def pick_trial(study: optuna.Study, number: int | None) -> FrozenTrial:
    """Trial ``number`` (it must be COMPLETE), or the study's best trial when ``number`` is None."""
    if number is None:
        best = best_trial(study)
        if best is None:
            raise ExportError(
                f"study {study.study_name!r} has no completed trial. Fix: run more trials first"
            )
        return best
    done = {t.number: t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))}
    if number not in done:
        raise ExportError(
            f"trial {number} of study {study.study_name!r} is not a completed trial "
            f"(completed: {', '.join(map(str, sorted(done))) or 'none'}). Fix: pick one of those with --trial"
        )
    return done[number]


def trials_with_weights(study: optuna.Study, store: WeightStore) -> list[int]:
    """Numbers of the trials whose weights file is still in the artifact store."""
    return sorted(
        t.number
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if WEIGHTS_ATTR in t.user_attrs and store.exists(t.user_attrs[WEIGHTS_ATTR])
    )


def trial_weights(study: optuna.Study, trial: FrozenTrial, cfg: StudyConfig) -> dict[str, torch.Tensor]:
    """The trial's best-epoch state_dict from the artifact store (ExportError when it is gone)."""
    store = WeightStore(cfg.artifacts_dir)
    artifact_id = trial.user_attrs.get(WEIGHTS_ATTR)
    if artifact_id is None or not store.exists(artifact_id):
        kept = trials_with_weights(study, store)
        why = (
            "never ranked in the top-k, so its weights were not saved"
            if artifact_id is None
            else f"was beaten out of the top-{cfg.search.keep_top_k} and its weights were deleted"
        )
        raise ExportError(
            f"trial {trial.number} of study {study.study_name!r} has no weights: it {why} "
            f"(artifact dir {cfg.artifacts_dir}). Trials that still have weights: "
            f"{', '.join(map(str, kept)) or 'none'}. Fix: pick one of those with --trial"
        )
    try:
        return store.load(artifact_id)
    except UnreadableFile as exc:
        raise ExportError(
            f"the weights of trial {trial.number} of study {study.study_name!r} cannot be used: {exc}. "
            f"Fix: export another trial with --trial (trials with weights: "
            f"{', '.join(map(str, trials_with_weights(study, store))) or 'none'}), or re-run it"
        ) from exc


def model_config(study: optuna.Study, trial: FrozenTrial, cfg: StudyConfig) -> dict[str, Any]:
    """config.json's content: how to rebuild the trial's model and preprocess its input."""
    data = study.user_attrs.get(DATA_ATTR)
    if not isinstance(data, dict):
        raise ExportError(
            f"study {study.study_name!r} has no stored data facts (user_attr {DATA_ATTR!r}). "
            "Fix: create the study with `search run`"
        )
    params = params_of(trial.params, cfg.search.space)
    cfg = trial_config(cfg, params)  # the config the trial trained with (its dotted params applied)
    in_shape = [int(v) for v in data["in_shape"]]
    return {
        "format": EXPORT_FORMAT,
        "study": study.study_name,
        "trial": trial.number,
        "model": {
            "c1": int(params["c1"]),
            "c2": int(params["c2"]),
            "l1": int(params["l1"]),
            **to_dict(cfg)["model"],
        },
        "in_shape": in_shape,
        "color_mode": "L" if in_shape[0] == 1 else "RGB",
        "n_classes": len(data["classes"]),
        "classes": [printable_name(str(c)) for c in data["classes"]],
        "normalize": {"mean": list(data["mean"]), "std": list(data["std"])},
        "train": {"lr": float(params["lr"]), "batch_size": int(params["batch_size"])},
        "params": dict(params),  # every searched parameter, by its Optuna name
        "config": to_dict(cfg),  # the trial's full study config
        "val_accuracy": trial.value,
        "best_epoch": trial.user_attrs.get("best_epoch"),
        "epochs_run": trial.user_attrs.get("epochs_run"),
        "dataset": {
            "name": cfg.data.dataset,
            "root": cfg.data.root,
            "image_size": cfg.data.image_size,
            "n_train": data.get("n_train"),
            "n_val": data.get("n_val"),
        },
        "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def architecture(m: dict[str, Any]) -> str:
    """One line describing an export's ``model`` entry (options missing in old exports: defaults)."""
    d = {f.name: f.default for f in dataclasses.fields(ModelConfig)}
    g = {**d, **m}
    text = (
        f"ConvNet c1={g['c1']} c2={g['c2']} l1={g['l1']}, padding {g['padding']}, {g['stages']} stages, "
        f"kernel {g['kernel_size']}, pool {g['pool']}, head {g['head']}"
    )
    return text + "".join(f", {k}" for k in ("batchnorm", "residual") if g[k])


def build_from_config(config: dict[str, Any]) -> ConvNet:
    """A fresh (untrained) ConvNet with the architecture recorded in an export's config."""
    try:
        m = config["model"]
        # exports from before the configurable net lack the new options: their defaults are that net
        options = build(ModelConfig, {k: v for k, v in m.items() if k not in WIDTHS}, "model")
        return build_convnet(
            options, m["c1"], m["c2"], m["l1"], [int(v) for v in config["in_shape"]], int(config["n_classes"])
        )
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise ExportError(
            f"{CONFIG_FILE} does not describe a model ({type(exc).__name__}: {exc}). "
            "Fix: export the study again"
        ) from exc


def load_weights_into(model: ConvNet, state: Any, path: Path | str) -> None:
    """``model.load_state_dict(state)``; ExportError naming ``path`` when they do not fit."""
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ExportError(f"{path} is not a state_dict of tensors. Fix: export the study again")
    try:
        model.load_state_dict(state)
    except (RuntimeError, KeyError, TypeError, ValueError) as exc:
        first = str(exc).splitlines()[0][:300]
        raise ExportError(
            f"the weights in {path} do not fit the recorded model ({first}). Fix: export the study again"
        ) from exc


def _model_card(config: dict[str, Any], n_params: int) -> str:
    m, d = config["model"], config["dataset"]
    acc = config["val_accuracy"]
    dotted = {k: v for k, v in config.get("params", {}).items() if "." in k}
    searched = (
        "| searched config | " + ", ".join(f"{k}={v}" for k, v in dotted.items()) + " |\n" if dotted else ""
    )
    return f"""# {config["study"]} — trial {config["trial"]}

ConvNet exported by convnet-search.

| | |
| --- | --- |
| architecture | {architecture(m)} |
| dropout | {m["dropout"]} (off in eval mode) |
| parameters | {n_params:,} |
| validation accuracy | {acc:.4f} |
| epochs | best epoch {config["best_epoch"]} of {config["epochs_run"]} run |
| training | lr={config["train"]["lr"]:.3g}, batch size {config["train"]["batch_size"]} |
{searched}| dataset | {d["name"]} ({d["n_train"]} train / {d["n_val"]} val images) |
| input | {config["in_shape"]} (C, H, W), colour mode {config["color_mode"]} |
| classes | {", ".join(config["classes"])} |
| normalisation | mean {config["normalize"]["mean"]}, std {config["normalize"]["std"]} (on pixels / 255) |
| exported | {config["exported_at"]} |

Load it:

```python
from search.results.export import load_export
model, transform, config = load_export("{config.get("_dir", ".")}")
probs = model(transform(images_uint8_nchw, train=False)).softmax(1)
```

Or from the command line: `search predict {config.get("_dir", ".")} IMAGE...`.
The weights alone are a plain state_dict: `torch.load("best.pt", weights_only=True)`.
"""


def default_export_dir(study_name: str, trial_number: int) -> Path:
    return Path("storage") / "exports" / study_name / f"trial-{trial_number}"


@dataclass
class Export:
    out: Path
    trial: int
    config: dict[str, Any]


def export_trial(
    study: optuna.Study, cfg: StudyConfig, number: int | None = None, out: str | Path | None = None
) -> Export:
    """Write best.pt, config.json and README.md for trial ``number`` (default: the best trial).

    Everything is built and checked in memory first (weights fit the model, texts encode as
    UTF-8), then each file is written to a temp file and renamed into place: an error (bad
    weights, full disk) leaves no half-written export and no temp files.
    """
    trial = pick_trial(study, number)
    state = trial_weights(study, trial, cfg)
    config = model_config(study, trial, cfg)
    model = build_from_config(config)
    load_weights_into(model, state, WeightStore(cfg.artifacts_dir).path(trial.user_attrs[WEIGHTS_ATTR]))
    folder = Path(out) if out is not None else default_export_dir(study.study_name, trial.number)
    plain = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    card = _model_card({**config, "_dir": printable_name(str(folder))}, count_parameters(model))
    try:
        files = {
            WEIGHTS_FILE: tensor_bytes(plain),
            CONFIG_FILE: (json.dumps(config, indent=2, ensure_ascii=False) + "\n").encode("utf-8"),
            CARD_FILE: card.encode("utf-8"),
        }
    except UnicodeEncodeError as exc:
        raise ExportError(f"trial {trial.number}'s config cannot be written as UTF-8 ({exc})") from exc
    temps = {name: folder / f".{name}.tmp" for name in files}
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            temps[name].write_bytes(data)
        for name in files:
            temps[name].replace(folder / name)
    except OSError as exc:
        raise ExportError(
            f"cannot write the export to {folder} ({exc.strerror or exc}). Fix: free space or make "
            "it writable, or pass --out with another folder"
        ) from exc
    finally:
        for temp in temps.values():
            if not temp.is_dir():
                temp.unlink(missing_ok=True)
    log.info("exported trial %d of %s to %s", trial.number, study.study_name, folder)
    return Export(folder, trial.number, config)


# --------------------------------------------------------------------------- loading and predicting


def read_export_config(folder: str | Path) -> dict[str, Any]:
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


def load_export(
    folder: str | Path, device: str | torch.device = "cpu"
) -> tuple[ConvNet, BatchTransform, dict[str, Any]]:
    """The exported model (eval mode, on ``device``), its input transform and its config."""
    config = read_export_config(folder)
    weights = Path(folder) / WEIGHTS_FILE
    try:
        state = load_tensors(weights)
    except FileNotFoundError as exc:
        raise ExportError(f"{weights} is missing. Fix: export the study again") from exc
    except UnreadableFile as exc:
        raise ExportError(f"{exc}. Fix: export the study again (`search export STUDY`)") from exc
    model = build_from_config(config)
    load_weights_into(model, state, weights)
    model.to(device).eval()
    try:
        norm = config["normalize"]
        transform = BatchTransform(norm["mean"], norm["std"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ExportError(f"{folder}/{CONFIG_FILE} has no usable normalize entry. Fix: export again") from exc
    return model, transform, config


def load_images(paths: Sequence[str | Path], config: dict[str, Any]) -> torch.Tensor:
    """uint8 [N, C, H, W] images: each file converted to the model's colour mode and resized."""
    import numpy as np
    from PIL import Image

    c, h, w = (int(v) for v in config["in_shape"])
    mode = "L" if c == 1 else "RGB"
    arrays = []
    for path in paths:
        try:
            converted = read_image(Path(path)).convert(mode)
        except DataError as exc:
            raise ExportError(f"{exc} (give PNG/JPEG image files)") from exc
        if converted.size != (w, h):
            converted = converted.resize((w, h), Image.Resampling.BILINEAR)
        arr = np.asarray(converted, dtype=np.uint8)
        arrays.append(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1))
    return torch.from_numpy(np.stack(arrays)).contiguous()


@torch.no_grad()
def predict_tensor(model: ConvNet, transform: BatchTransform, images: torch.Tensor) -> torch.Tensor:
    """Class probabilities [N, n_classes] for uint8 images."""
    model.eval()
    device = next(model.parameters()).device
    logits: torch.Tensor = model(transform(images.to(device), train=False))
    return logits.float().softmax(1)


def predict_files(
    folder: str | Path, paths: Sequence[str | Path], k: int = 3
) -> list[list[tuple[str, float]]]:
    """Top-``k`` (class, probability) pairs for each image file, best first."""
    model, transform, config = load_export(folder)
    probs = predict_tensor(model, transform, load_images(paths, config))
    k = min(k, probs.shape[1])
    top = probs.topk(k, dim=1)
    classes = config["classes"]
    return [
        [(classes[int(i)], float(p)) for p, i in zip(row_p, row_i, strict=True)]
        for row_p, row_i in zip(top.values, top.indices, strict=True)
    ]
