"""Issue 26 rows 3 and 4: a key given twice is an error (never "the last wins"), and ``--set``
reaches a space entry written as a dotted key, through ``search validate``."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import run_cli

TWO_SEARCH_BLOCKS = """\
name: dup
data: {dataset: digits}
search:
  n_trials: 3
  sampler: {name: random}
search:
  n_trials: 5
"""

EPOCHS_TWICE = """\
name: dup
data: {dataset: digits}
train:
  epochs: 2
  patience: 1
  epochs: 3
"""

LR_TWICE_IN_SPACE = """\
name: dup
data: {dataset: digits}
search:
  space:
    lr: {low: 0.001, high: 0.01}
    c1: {choices: [8]}
    lr: 0.01
"""

SAME_LINE = "name: dup\ndata: {dataset: digits, dataset: mnist}\n"

DOTTED_AND_NESTED = """\
name: dup
data: {dataset: digits}
search:
  space:
    train.weight_decay: {low: 0.00001, high: 0.01, log: true}
    train:
      weight_decay: 0.1
"""


@pytest.mark.parametrize(
    ("text", "key", "lines"),
    [
        (TWO_SEARCH_BLOCKS, "search", "lines 3 and 6"),
        (EPOCHS_TWICE, "train.epochs", "lines 4 and 6"),
        (LR_TWICE_IN_SPACE, "search.space.lr", "lines 5 and 7"),
        (SAME_LINE, "data.dataset", "line 2"),
    ],
    ids=["two-search-blocks", "epochs-twice", "lr-twice-in-space", "same-line"],
)
def test_a_key_given_twice_is_refused_with_both_lines(
    tmp_path: Path, text: str, key: str, lines: str
) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text(text)
    proc = run_cli("validate", str(path), cwd=tmp_path, check=2)
    assert f"error: {key}: the key is given twice ({lines})" in proc.stderr
    assert "Fix: keep one of them" in proc.stderr
    assert not (tmp_path / "storage").exists()


def test_a_key_given_twice_in_a_set_value_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text("name: ok\ndata: {dataset: digits}\n")
    proc = run_cli("validate", str(path), "--set", "search.space={lr: 0.1, lr: 0.2}", cwd=tmp_path, check=2)
    assert "search.space.lr: the key is given twice (line 1 of the --set value)" in proc.stderr


def test_a_merge_key_may_be_overridden(tmp_path: Path) -> None:
    path = tmp_path / "merge.yaml"
    merged = "train:\n  <<: {epochs: 2, patience: 1}\n  epochs: 3\n"
    path.write_text("name: merge\ndata: {dataset: digits}\n" + merged)
    run_cli("validate", str(path), cwd=tmp_path, check=0)


def test_a_parameter_dotted_and_nested_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text(DOTTED_AND_NESTED)
    proc = run_cli("validate", str(path), cwd=tmp_path, check=2)
    assert "search.space.train.weight_decay: the parameter is given twice" in proc.stderr


def test_set_reaches_a_bound_of_a_dotted_space_entry(tmp_path: Path) -> None:
    path = tmp_path / "wd.yaml"
    path.write_text(DOTTED_AND_NESTED.rsplit("    train:\n", 1)[0])
    key = "search.space.train.weight_decay.high"
    run_cli("validate", str(path), "--set", f"{key}=0.001", cwd=tmp_path, check=0)
    # the bound lands in the file's entry (its low 1e-05 stays): a high below it is refused as such
    proc = run_cli("validate", str(path), "--set", f"{key}=0.000001", cwd=tmp_path, check=2)
    assert "search.space.train.weight_decay: low (1e-05) > high (1e-06)" in proc.stderr
    # the whole entry replaced by --set is one entry, not a second one
    run_cli("validate", str(path), "--set", "search.space.train.weight_decay=0.001", cwd=tmp_path, check=0)
