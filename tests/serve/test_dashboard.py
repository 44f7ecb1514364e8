"""optuna-dashboard: address checks, port errors, the JSON API on a real study, and a live study
rendered in headless Chromium."""

from __future__ import annotations

import html
import http.client
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from search import cli
from search.serve.dashboard import (
    DashboardError,
    base_url,
    check_port,
    config_note,
    exposure_warning,
    missing_artifacts_as_404,
    open_dashboard,
)
from search.serve.network import is_all_interfaces, is_loopback
from search.study.study import make_storage
from tests.conftest import popen_cli, tiny_config, write_config

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
SCREENSHOT_DIR = os.environ.get("DASHBOARD_SCREENSHOT_DIR")  # keep the screenshot (CI artifact)


def needs_chromium() -> str:
    """Chromium's path; skips the test only when it is absent outside CI."""
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed, and CI must run the browser test (see .ci/run)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return CHROMIUM


# --------------------------------------------------------------------------- helpers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def port_is_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex(("127.0.0.1", port)) == 0


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as resp:
        return json.load(resp)


def wait_for(predicate: Any, timeout_s: float, what: str, interval_s: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")


def read_line_with(proc: subprocess.Popen[str], needle: str, timeout_s: float) -> str:
    """The first stdout line of ``proc`` containing ``needle``."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout_s
    seen = []
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.5)
        if ready:
            line = proc.stdout.readline()
            if not line:
                break
            seen.append(line)
            if needle in line:
                return line.strip()
        elif proc.poll() is not None:
            break
    raise AssertionError(f"no line with {needle!r} (exit {proc.poll()}); stdout so far: {seen}")


def interrupt(proc: subprocess.Popen[str], timeout_s: float = 60) -> tuple[int, str, str]:
    """Ctrl-C: SIGINT, then the exit code, stdout rest and stderr."""
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=timeout_s)
    return proc.returncode, out, err


def chromium(url: str, *flags: str, budget_ms: int = 15000) -> str:
    """Load ``url`` in headless Chromium (JavaScript on) and return its stdout."""
    cmd = [
        needs_chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        "--window-size=1400,1000",
        f"--virtual-time-budget={budget_ms}",
        *flags,
        url,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def rendered_text(url: str, screenshot: Path | None = None) -> str:
    """The visible text of the page after its JavaScript ran; optionally a PNG of it too."""
    flags = ["--dump-dom"] if screenshot is None else ["--dump-dom", f"--screenshot={screenshot}"]
    dom = chromium(url, *flags)
    if screenshot is not None:
        assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert screenshot.stat().st_size > 10_000  # a rendered page, not a blank one
        if SCREENSHOT_DIR:
            Path(SCREENSHOT_DIR).mkdir(parents=True, exist_ok=True)
            shutil.copy(screenshot, Path(SCREENSHOT_DIR) / screenshot.name)
    dom = re.sub(r"<(style|script)[^>]*>.*?</\1>", " ", dom, flags=re.S)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", dom)))


def child_cmdlines(pid: int) -> list[list[str]]:
    """Command lines of the child processes of ``pid`` (Linux /proc)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append((proc / "cmdline").read_bytes().decode().split("\0"))
        except (OSError, ValueError, IndexError):
            continue
    return found


def study_detail(base: str, name: str) -> tuple[int, dict[str, Any]]:
    root = base.removesuffix("/dashboard")
    studies = get_json(f"{root}/api/studies")["study_summaries"]
    (sid,) = [s["study_id"] for s in studies if s["study_name"] == name]
    return sid, get_json(f"{root}/api/studies/{sid}")


def attrs(items: list[dict[str, str]]) -> dict[str, str]:
    return {a["key"]: a["value"] for a in items}


# --------------------------------------------------------------------------- addresses (pure)


@pytest.mark.parametrize(
    ("host", "loopback", "everywhere"),
    [
        ("127.0.0.1", True, False),
        ("127.0.1.1", True, False),
        ("localhost", True, False),
        ("::1", True, False),
        ("0.0.0.0", False, True),
        ("::", False, True),
        ("[::]", False, True),
        ("192.168.1.20", False, False),
    ],
)
def test_address_kinds(host: str, loopback: bool, everywhere: bool) -> None:
    assert is_loopback(host) is loopback
    assert is_all_interfaces(host) is everywhere
    warning = exposure_warning(host, 8080)
    if loopback:
        assert warning is None
    else:
        assert warning is not None
        assert "no authentication" in warning
        assert "ssh -L 8080:127.0.0.1:8080" in warning
        assert ("all network interfaces" in warning) is everywhere


@pytest.mark.parametrize(
    ("host", "url"),
    [
        ("127.0.0.1", "http://127.0.0.1:8080/dashboard"),
        ("0.0.0.0", "http://127.0.0.1:8080/dashboard"),
        ("::", "http://[::1]:8080/dashboard"),
        ("localhost", "http://localhost:8080/dashboard"),
    ],
)
def test_base_url_is_reachable_from_this_machine(host: str, url: str) -> None:
    assert base_url(host, 8080) == url


def test_config_note_holds_the_whole_config() -> None:
    config = {"name": "x", "search": {"space": {"c1": {"choices": [8, 16]}}}, "long": "y" * 2000}
    note = config_note(config)
    assert note.startswith("### Study config")
    assert "```yaml\nname: x\n" in note
    assert "y" * 2000 in note  # not cut at the dashboard's 1024-character attribute limit


# --------------------------------------------------------------------------- bad input


@pytest.fixture
def storage_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path}/studies.db"
    make_storage(url)
    return url


def test_port_in_use_is_a_dashboard_error(storage_url: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(DashboardError, match=rf"--port {port}: port already in use.*--port {port + 1}"):
            open_dashboard(storage_url, port=port)
        with pytest.raises(DashboardError, match=r"--dashboard-port \d+: port already in use"):
            check_port("127.0.0.1", port, "--dashboard-port")


def test_cli_port_in_use_exits_2(storage_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = cli.main(["dashboard", "--storage", storage_url, "--port", str(port)])
    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""
    assert err.strip().splitlines() == [
        f"error: --port {port}: port already in use on 127.0.0.1 (another dashboard?). "
        f"Fix: stop that process or pick another port, e.g. --port {port + 1}"
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--port", "70000"], r"error: --port 70000: not a TCP port"),
        (["--host", "203.0.113.7"], r"error: --host '203.0.113.7': not an address of this machine"),
    ],
)
def test_cli_bad_address_exits_2(
    storage_url: str, args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main(["dashboard", "--storage", storage_url, *args])
    assert code == 2
    assert re.match(message, capsys.readouterr().err)


def test_cli_missing_storage_exits_2_and_creates_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "nope" / "studies.db"
    code = cli.main(["dashboard", "--storage", f"sqlite:///{db}", "--port", str(free_port())])
    assert code == 2
    assert "error: --storage: no study storage at" in capsys.readouterr().err
    assert not db.parent.exists()


def test_run_with_dashboard_port_in_use_exits_2_before_creating_anything(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = write_config(workdir / "tiny.yaml", tiny_config())
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = cli.main(["-q", "run", str(cfg), "--device", "cpu", "--dashboard-port", str(port)])
    assert code == 2
    assert capsys.readouterr().err.startswith(f"error: --dashboard-port {port}: port already in use")
    assert not (workdir / "storage").exists()


# --------------------------------------------------------------------------- a finished study


@pytest.fixture(scope="module")
def finished_study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real 4-trial digits study (3 epochs; pruning likely after the first trial), run in-process."""
    root = tmp_path_factory.mktemp("finished")
    cfg = tiny_config(
        name="dash-done",
        train={"epochs": 3, "patience": 3},
        search={
            **tiny_config()["search"],
            "n_trials": 4,
            "pruner": {"name": "percentile", "percentile": 90, "n_startup_trials": 1, "n_warmup_steps": 0},
        },
    )
    config = write_config(root / "done.yaml", cfg)
    cwd = Path.cwd()
    os.chdir(root)
    try:
        assert cli.main(["-q", "run", str(config), "--device", "cpu"]) == 0
    finally:
        os.chdir(cwd)
    return root


@pytest.fixture
def served(finished_study: Path) -> Iterator[str]:
    """optuna-dashboard in a thread of this process on the finished study; yields its base URL."""
    dash = open_dashboard(
        f"sqlite:///{finished_study}/storage/studies.db",
        port=free_port(),
        artifact_dir=finished_study / "storage" / "artifacts",
    )
    thread = threading.Thread(target=dash.serve, daemon=True)
    thread.start()
    try:
        yield dash.url
    finally:
        dash.server.shutdown()
        thread.join(timeout=30)
    assert not thread.is_alive()
    assert not port_is_open(dash.port)


def test_api_shows_what_each_trial_recorded(served: str, finished_study: Path) -> None:
    sid, detail = study_detail(served, "dash-done")
    assert detail["name"] == "dash-done"
    study_attrs = attrs(detail["user_attrs"])
    assert json.loads(study_attrs["data"])["in_shape"] == [1, 8, 8]
    assert study_attrs["config"].startswith('{"name": "dash-done"')
    assert "### Study config" in detail["note"]["body"]
    assert "name: dash-done" in detail["note"]["body"]
    assert "finetune:" in detail["note"]["body"]  # the part the 1024-character attr cuts off

    trials = detail["trials"]
    assert len(trials) == 4
    assert trials[0]["state"] == "Complete"
    epochs = 3
    for trial in trials:
        user = attrs(trial["user_attrs"])
        steps = [v["step"] for v in trial["intermediate_values"]]
        assert steps == list(range(1, len(steps) + 1))  # a learning curve, one point per epoch
        assert {p["name"] for p in trial["params"]} == {"c1", "c2", "l1", "lr", "batch_size"}
        if trial["state"] == "Complete":
            assert {"best_epoch", "epochs_run", "images_per_s"} <= user.keys()
            assert len(steps) == int(user["epochs_run"]) == epochs
            assert float(user["images_per_s"]) > 0
        elif trial["state"] == "Pruned":  # its curve ends where it was pruned
            assert len(steps) == int(user["pruned_at_epoch"]) <= epochs

    assert detail["objective_names"] == ["val_accuracy"]  # not "Objective 0" in plots and cards
    best = detail["best_trials"][0]
    (artifact,) = best["artifacts"]
    assert artifact["filename"].endswith(".pt")
    assert artifact["artifact_id"] == attrs(best["user_attrs"])["weights_artifact_id"]
    root = served.removesuffix("/dashboard")
    url = f"{root}/artifacts/{sid}/{best['trial_id']}/{artifact['artifact_id']}"
    out = finished_study / "downloaded.pt"
    with urllib.request.urlopen(url, timeout=30) as resp:
        out.write_bytes(resp.read())
    state = torch.load(out, weights_only=True)
    assert any(name.endswith("weight") for name in state)


def test_removed_weights_answer_404_with_a_reason(served: str) -> None:
    sid, detail = study_detail(served, "dash-done")
    trial_id = detail["trials"][0]["trial_id"]
    root = served.removesuffix("/dashboard")
    gone = "00000000-0000-0000-0000-000000000000"
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"{root}/artifacts/{sid}/{trial_id}/{gone}", timeout=30)
    assert err.value.code == 404
    assert b"weights file was removed" in err.value.read()


def test_missing_artifacts_middleware_passes_present_files_through(tmp_path: Path) -> None:
    (tmp_path / "abc-1").write_bytes(b"w")
    calls: list[str] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        calls.append(environ["PATH_INFO"])
        start_response("200 OK", [])
        return [b"ok"]

    wrapped = missing_artifacts_as_404(app, tmp_path)
    statuses: list[str] = []
    for path in ("/artifacts/1/2/abc-1", "/artifacts/1/abc-1", "/artifacts/1/2/abc-2", "/api/studies"):
        wrapped({"PATH_INFO": path}, lambda status, headers: statuses.append(status))
    assert statuses == ["200 OK", "200 OK", "404 Not Found", "200 OK"]
    assert calls == ["/artifacts/1/2/abc-1", "/artifacts/1/abc-1", "/api/studies"]


def test_browser_shows_trials_attrs_and_weights(served: str, tmp_path: Path) -> None:
    sid, detail = study_detail(served, "dash-done")
    text = rendered_text(f"{served}/studies/{sid}/trials")
    assert "dash-done" in text
    assert "4 Trials" in text
    for number in range(4):
        assert f"Trial {number}" in text
    first = detail["trials"][0]
    assert "Intermediate Values" in text
    for key in ("best_epoch", "epochs_run", "images_per_s", "weights_artifact_id"):
        assert key in text
    assert first["artifacts"][0]["filename"] in text


# --------------------------------------------------------------------------- command lifecycle


def test_dashboard_command_prints_url_warns_on_all_interfaces_and_stops_on_ctrl_c(
    finished_study: Path,
) -> None:
    port = free_port()
    proc = popen_cli(
        "dashboard",
        "--storage",
        f"sqlite:///{finished_study}/storage/studies.db",
        "--artifact-dir",
        str(finished_study / "storage" / "artifacts"),
        "--host",
        "0.0.0.0",
        "--port",
        str(port),
        cwd=finished_study,
    )
    try:
        url = read_line_with(proc, "http", timeout_s=120)
        assert url == f"http://127.0.0.1:{port}/dashboard"
        names = [
            s["study_name"] for s in get_json(url.replace("/dashboard", "/api/studies"))["study_summaries"]
        ]
        assert names == ["dash-done"]
    finally:
        code, out, err = interrupt(proc)
    assert code == 0, err
    assert out == ""
    assert "WARNING search.serve.dashboard: optuna-dashboard is bound to all network interfaces" in err
    assert f"ssh -L {port}:127.0.0.1:{port}" in err
    assert "Traceback" not in err
    assert not port_is_open(port)


# --------------------------------------------------------------------------- live, in a browser


def test_live_study_in_headless_chromium(workdir: Path) -> None:
    """`search run --dashboard` on a running study: the API and the rendered page show its trials.

    Without Chromium (outside CI) the API part runs and the test ends as skipped.
    """
    browser = CHROMIUM is not None or bool(os.environ.get("CI"))
    cfg = tiny_config(
        name="dash-live",
        train={"epochs": 60, "patience": 60},
        search={**tiny_config()["search"], "n_trials": 50},
    )
    port = free_port()
    run = popen_cli(
        "run", str(write_config(workdir / "live.yaml", cfg)), "--dashboard-port", str(port), cwd=workdir
    )
    try:
        line = read_line_with(run, "dashboard: ", timeout_s=240)
        page = line.removeprefix("dashboard: ")
        assert re.fullmatch(rf"http://127\.0\.0\.1:{port}/dashboard/studies/\d+", page)
        base = page.split("/studies/")[0]
        (child,) = [c for c in child_cmdlines(run.pid) if "dashboard" in c]
        assert "--exit-with-parent" in child
        assert not any("sqlite" in arg for arg in child)  # the storage URL travels in the environment

        def trial_with_curve() -> dict[str, Any] | None:
            _, detail = study_detail(base, "dash-live")
            curves = [t for t in detail["trials"] if len(t["intermediate_values"]) >= 2]
            return detail if curves else None

        detail = wait_for(trial_with_curve, 240, "a trial with two epochs reported")
        assert any(t["state"] == "Running" for t in detail["trials"])  # it is live
        assert attrs(detail["user_attrs"])["config"].startswith('{"name": "dash-live"')

        if browser:
            text = rendered_text(f"{page}/trials", screenshot=workdir / "dashboard-live.png")
            assert "dash-live" in text
            assert "Trial 0" in text
            assert "Running" in text
            assert "Intermediate Values" in text
        assert run.poll() is None  # the study kept running while the dashboard read it
    finally:
        code, _, err = interrupt(run)
    assert code == 130, err
    assert "interrupted" in err
    assert "database is locked" not in err
    assert not port_is_open(port)  # the dashboard stopped with the run
    if not browser:
        needs_chromium()  # skips: the browser part did not run


def test_dashboard_exits_promptly_on_sigterm_with_a_keep_alive_client(finished_study: Path) -> None:
    port = free_port()
    proc = popen_cli(
        "dashboard",
        "--storage",
        f"sqlite:///{finished_study}/storage/studies.db",
        "--port",
        str(port),
        cwd=finished_study,
    )
    url = read_line_with(proc, "http", timeout_s=120)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/api/studies", headers={"Connection": "keep-alive"})
    assert conn.getresponse().read()
    idle = socket.create_connection(("127.0.0.1", port))  # a browser's open, idle connection
    try:
        proc.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        code = proc.wait(timeout=30)
        waited = time.monotonic() - sent
    finally:
        conn.close()
        idle.close()
    _, err = proc.communicate(timeout=30)
    assert code == 0, err
    assert waited <= 2.0, f"took {waited:.1f}s to exit on SIGTERM"  # the limit (was 3-8 s)
    assert "dashboard stopped" in err and "Traceback" not in err
    assert url.endswith("/dashboard") and not port_is_open(port)
