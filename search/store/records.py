"""The names of every attribute the tool records on a study or a trial, in one place.

Optuna keeps two free-form dictionaries per study and per trial, ``user_attrs`` (ours, shown by
optuna-dashboard) and ``system_attrs`` (Optuna's own). Every key the tool writes with
``set_user_attr`` or reads back from ``user_attrs`` is named here, so a writer and its readers
(report, export, status, the dashboard) cannot drift apart. The values are plain JSON; what each
holds is said beside it. Imports nothing.
"""

from __future__ import annotations

# --------------------------------------------------------------------------- study user attrs

CONFIG_ATTR = "config"  # the study config it was created with (``search run``), as a dict
DATA_ATTR = "data"  # the data facts: in_shape, classes, mean, std, n_train, n_val (+ INIT_FROM_SHA256_KEY)
INIT_FROM_SHA256_KEY = "init_from_sha256"  # in DATA_ATTR: the content hash of model.init_from's file
CHECKPOINT_KEY_ATTR = "checkpoint_key"  # folder name of the study's checkpoints (not its name)
CONFIRM_ATTR = "confirm"  # the summary of the last complete ``search confirm`` (winner, verdict)
CONFIRM_RUN_PREFIX = "confirm_run:"  # + "<trial>:seed<i>" / "<trial>:fold<i>of<F>": one re-training
FINETUNE_ATTR = "finetune"  # the summary of the last ``search finetune`` (start, final, test figures)

# --------------------------------------------------------------------------- trial user attrs

# where and what it trains (``search status``)
N_PARAMS_ATTR = "n_params"  # the model's trainable parameters
DEVICE_ATTR = "device"  # e.g. "cpu", "cuda:0 (GPU 2)"
PRECISION_ATTR = "precision"  # what it trained in: "fp32" or "bf16" (train.precision resolved)
HOST_ATTR = "host"
PID_ATTR = "pid"
FAMILY_ATTR = "family"  # the net's family: "convnet/<model.block>" or the torchvision arch ("resnet18")
UNUSED_PARAMS_ATTR = "unused_params"  # searched params the trial's arch ignores, e.g. ["c1", "c2", "l1"]
INIT_FROM_LOADED_ATTR = "init_from_loaded"  # model.init_from: tensors loaded from the file
INIT_FROM_SKIPPED_ATTR = "init_from_skipped"  # tensors left freshly initialised (no name/shape match)
# budgets (search.constraints)
LATENCY_ATTR = "latency_ms"  # median batch-1 forward pass (with max_latency_ms or the latency_ms objective)
CONSTRAINT_ATTR = "constraint"  # of an over-budget trial: which budget, by how much
# two-objective studies (search.objectives: [val_accuracy, COST])
FLOPS_ATTR = "flops"  # forward FLOPs of one image (torch's FlopCounterMode), with the flops objective
# val accuracy after each epoch (index e-1: epoch e), rewritten every epoch: Optuna refuses
# trial.report in multi-objective studies, so the two-objective pruning rule reads the curves here
VAL_CURVE_ATTR = "val_accuracy_curve"
# how the fit went
BEST_EPOCH_ATTR = "best_epoch"
EPOCHS_RUN_ATTR = "epochs_run"
STOP_REASON_ATTR = "stop_reason"  # e.g. "completed", "early_stopping at epoch 7"
PRUNED_AT_EPOCH_ATTR = "pruned_at_epoch"
TRAIN_SECONDS_ATTR = "train_seconds"
IMAGES_PER_S_ATTR = "images_per_s"  # training images per second, steady state
COMPILE_SECONDS_ATTR = "compile_seconds"  # only with train.compile
FAIL_REASON_ATTR = "fail_reason"  # of a FAIL trial: "oom (batch_size=512)", "stale", ...
WEIGHTS_ATTR = "weights_artifact_id"  # its best-epoch weights in the artifact store (top-k only)
# where it came from
RESUMED_FROM_TRIAL_ATTR = "resumed_from_trial"  # a retry that continued an attempt's checkpoint
RESUMED_FROM_EPOCH_ATTR = "resumed_from_epoch"
ENQUEUED_ATTR = "enqueued"  # "default": search.enqueue_default's log-midpoint trial
WARM_START_ATTR = "warm_start_from"  # "<study>#<trial>": enqueued by --warm-start

# --------------------------------------------------------------------------- Optuna's system attrs (read)

RETRY_HISTORY_SYSTEM_ATTR = "retry_history"  # numbers of the attempts a retried trial repeats

# --------------------------------------------------------------------------- our study system attrs

TRIAL_CACHE_SYSTEM_ATTR = "search_trial_cache"  # a random token: the study's folder of shared trials
