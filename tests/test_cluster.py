"""Issue 8, multi-node: `autotune search --address` against a real two-node Ray cluster on this
machine (a head and a worker started with `ray start`, as on real machines), the driver a separate
process started from another folder. Checks: trials ran on both nodes (each trial records its Ray
node id), the model's folder (model.py + a sibling module + a data file) was shipped to the
workers and run from there, results and MLflow records were collected by the driver, and a worker
node killed (SIGKILL) mid-study was survived: its running trial ran again on the head node and the
study ended with exactly N finished trials.

The nodes are ended by killing the process sessions this test started, never with
`ray stop --force`, which would end every Ray process on the machine (other tests' too).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from autotune.study import Study

pytestmark = pytest.mark.integration
FIXTURE = Path(__file__).resolve().parent / "fixtures" / "cluster_model"
RAY = str(Path(sys.executable).with_name("ray"))
TRIALS = 6


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def copy_model(dest: Path) -> Path:
    """The fixture model's folder, with its data file, at `dest`: returns dest/model.py."""
    shutil.copytree(FIXTURE, dest, ignore=shutil.ignore_patterns("__pycache__", "data.csv"))
    sys.path.insert(0, str(dest))
    try:
        from cluster_helper import write_csv
    finally:
        sys.path.remove(str(dest))
        sys.modules.pop("cluster_helper", None)
    write_csv(dest / "data.csv")
    return dest / "model.py"


def end_session(sid: int) -> None:
    """SIGKILL every process of a session this test started (a node's raylet, GCS, workers)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid:  # field 6 of /proc/PID/stat: the session id
            try:
                os.kill(int(entry.name), signal.SIGKILL)
            except OSError:
                pass


def wait_for(cond: Callable[[], bool], timeout: float, what: str, log: Path | None = None) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if cond():
                return
        except Exception:  # noqa: BLE001 - a file or database being written
            pass
        time.sleep(0.2)
    tail = log.read_text()[-3000:] if log and log.exists() else ""
    pytest.fail(f"timed out waiting for {what}\n{tail}")


class TwoNodeCluster:
    """`ray start --head` and `ray start --address` on 127.0.0.1, one CPU each, each `--block`ing
    in its own session so that either node can be killed alone. Token authentication (Ray's
    default for new clusters) with a token of this test's own, passed to driver and nodes."""

    def __init__(self, root: Path, marks: Path) -> None:
        self.root = root
        # Unix socket paths must stay under ~107 characters: a short folder of its own in /tmp.
        self.temp = Path(tempfile.mkdtemp(prefix="atray", dir="/tmp"))
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token",
                    "RAY_AUTH_TOKEN": secrets.token_hex(16), "AUTOTUNE_TEST_MARKS": str(marks),
                    # a dead node is declared dead after ~3 s instead of ~30 s
                    "RAY_health_check_period_ms": "1000", "RAY_health_check_timeout_ms": "1000",
                    "RAY_health_check_failure_threshold": "3"}
        self.procs: dict[str, subprocess.Popen] = {}

    def _start(self, name: str, args: list[str]) -> None:
        ports = ["--node-manager-port", "--object-manager-port", "--dashboard-agent-listen-port",
                 "--dashboard-agent-grpc-port", "--runtime-env-agent-port",
                 "--metrics-export-port"]
        cmd = [RAY, "start", *args, "--node-ip-address", "127.0.0.1", "--num-cpus", "1",
               "--object-store-memory", str(80 * 2**20), "--disable-usage-stats", "--block",
               "--resources", f'{{"{name}_node": 1}}']
        for flag in ports:  # fixed default ports would collide with other Ray instances here
            cmd += [flag, str(free_port())]
        log = open(self.root / f"{name}.log", "w")  # noqa: SIM115 - owned by the process
        self.procs[name] = subprocess.Popen(
            cmd, env={**self.env, "AUTOTUNE_TEST_NODE_NAME": name}, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(lambda: "Ray runtime started" in (self.root / f"{name}.log").read_text()
                 or self.procs[name].poll() is not None, 90, f"the {name} node",
                 self.root / f"{name}.log")
        assert self.procs[name].poll() is None, (self.root / f"{name}.log").read_text()[-3000:]

    def start(self) -> None:
        self._start("head", ["--head", "--port", str(self.port), "--include-dashboard=false",
                             "--temp-dir", str(self.temp)])
        self._start("worker", ["--address", self.address])

    def kill(self, name: str) -> None:
        proc = self.procs.pop(name, None)
        if proc is not None:
            end_session(proc.pid)
            proc.wait(timeout=30)

    def stop(self) -> None:
        for name in ("worker", "head"):
            self.kill(name)
        shutil.rmtree(self.temp, ignore_errors=True)


@pytest.fixture
def cluster(tmp_path: Path):
    marks = tmp_path / "marks"
    marks.mkdir()
    c = TwoNodeCluster(tmp_path, marks)
    try:
        c.start()
        yield c
    finally:
        c.stop()


def starts(marks: Path, name: str) -> list[str]:
    return [p.name for p in marks.iterdir() if p.name.startswith(f"{name}-")]


@pytest.mark.timeout(300)
def test_two_node_study_survives_a_worker_node_kill(tmp_path: Path,
                                                    cluster: TwoNodeCluster) -> None:
    model = copy_model(tmp_path / "project")
    elsewhere = tmp_path / "driver-cwd"  # the driver runs from another folder than the model's
    elsewhere.mkdir()
    home = tmp_path / "home"
    marks = Path(cluster.env["AUTOTUNE_TEST_MARKS"])
    log = tmp_path / "driver.log"
    driver = subprocess.Popen(
        [sys.executable, "-m", "autotune", "search", str(model), "--name", "cl",
         "--trials", str(TRIALS), "--no-early-stop", "--cpus-per-trial", "1",
         "--address", cluster.address],
        cwd=elsewhere, env={**cluster.env, "AUTOTUNE_HOME": str(home), "COLUMNS": "200"},
        stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)  # noqa: SIM115
    try:
        # The worker node's second trial has started (so its first one finished there): kill
        # the node now, in the middle of that second trial.
        wait_for(lambda: len(starts(marks, "worker")) >= 2, 150, "two trials on the worker node",
                 log)
        worker_ids = {n.split("-")[1] for n in starts(marks, "worker")}
        cluster.kill("worker")
        killed_at = time.time()
        assert driver.wait(timeout=180) == 0, log.read_text()[-4000:]
    finally:
        if driver.poll() is None:
            end_session(driver.pid)
    out = log.read_text()

    views = Study("cl", home).trial_views()
    assert len(views) == TRIALS, out[-3000:]
    assert [v.status for v in views] == ["finished"] * TRIALS, [(v.status, v.error) for v in views]
    head_ids = {n.split("-")[1] for n in starts(marks, "head")}
    nodes = {v.node for v in views}
    assert nodes <= head_ids | worker_ids and nodes & worker_ids and nodes & head_ids, (
        nodes, head_ids, worker_ids)
    # Every trial ran model.py from the folder Ray shipped, sibling module and data file included.
    assert all(v.metrics.get("shipped") == 1.0 for v in views), [v.metrics for v in views]
    # The trial killed with its node ran again: one start more than trials, the rerun on the head.
    assert len(list(marks.iterdir())) >= TRIALS + 1
    late = [n for n in starts(marks, "head") if int(n.split("-")[-1]) / 1e9 > killed_at]
    assert late, sorted(marks.iterdir())

    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    exp = client.get_experiment_by_name("autotune/cl")
    children = client.search_runs([exp.experiment_id], "tags.`autotune.role` = 'trial'")
    assert len(children) == TRIALS
    assert {r.data.tags.get("autotune.node") for r in children} == nodes
    assert all(r.info.status == "FINISHED" for r in children)
    parent = client.search_runs([exp.experiment_id], "tags.`autotune.role` = 'study'")[0]
    assert parent.info.status == "FINISHED"
