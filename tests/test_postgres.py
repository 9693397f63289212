"""Issue 8, team tracking server: `mlflow server` on a real PostgreSQL (backend store) with a
proxied artefact store, and `autotune search --tracking-uri` pointed at it. Skips, saying why,
where PostgreSQL's server binaries or psycopg2 are missing (`scripts/ci_services.sh` installs
them on Debian; `pip install autotune[postgres]` brings psycopg2)."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.test_cluster import copy_model, free_port
from tests.test_mlflow_server import MlflowServer

pytestmark = pytest.mark.integration
TRIALS = 3


def _pg_bin() -> Path | None:
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))  # Debian keeps them off PATH
    return Path(dirs[-1]).parent if dirs else None


def _as_postgres_user() -> list[str] | None:
    """PostgreSQL refuses to run as root: the prefix that runs a command as `postgres`."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return None
    runuser = shutil.which("runuser")
    return [runuser, "-u", "postgres", "--"] if runuser else None


class Postgres:
    """A throwaway PostgreSQL cluster in /tmp on 127.0.0.1:PORT, trust auth, user `autotune`."""

    def __init__(self, bindir: Path, prefix: list[str]) -> None:
        self.bin, self.prefix = bindir, prefix
        self.root = Path(tempfile.mkdtemp(prefix="atpg", dir="/tmp"))  # short socket path
        self.port = free_port()
        if prefix:  # the postgres user must own its folder
            user = pwd.getpwnam("postgres")
            os.chown(self.root, user.pw_uid, user.pw_gid)
        self.data = self.root / "data"
        # SQLAlchemy 2.1 maps plain postgresql:// to psycopg 3: name the driver installed here
        self.uri = f"postgresql+psycopg2://autotune@127.0.0.1:{self.port}/mlflow"

    def _run(self, *cmd: str) -> None:
        proc = subprocess.run([*self.prefix, *cmd], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, f"{cmd[0]} failed: {proc.stdout[-2000:]}{proc.stderr[-2000:]}"

    def start(self) -> None:
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", "autotune",
                  "--auth=trust", "-E", "UTF8", "--no-instructions")
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "pg.log"),
                  "-w", "-o", f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1",
                  "start")
        self._run(str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port),
                  "-U", "autotune", "mlflow")

    def stop(self) -> None:
        subprocess.run([*self.prefix, str(self.bin / "pg_ctl"), "-D", str(self.data), "-m",
                        "immediate", "-w", "stop"], capture_output=True, timeout=60)
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def postgres() -> Postgres:
    bindir = _pg_bin()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found: "
                    "apt-get install postgresql, or run scripts/ci_services.sh")
    try:
        import psycopg2  # noqa: F401 - mlflow's PostgreSQL driver
    except ImportError:
        pytest.skip("psycopg2 is not installed: pip install 'autotune[postgres]'")
    prefix = _as_postgres_user()
    if prefix is None:
        pytest.skip("running as root without a `postgres` user and runuser: PostgreSQL refuses "
                    "to run as root")
    pg = Postgres(bindir, prefix)
    try:
        pg.start()
        yield pg
    finally:
        pg.stop()


@pytest.mark.timeout(300)
def test_study_records_to_mlflow_server_on_postgres(tmp_path: Path, postgres: Postgres) -> None:
    server = MlflowServer(tmp_path, backend=postgres.uri)
    server.start()
    try:
        model = copy_model(tmp_path / "project")
        env = {**os.environ, "AUTOTUNE_HOME": str(tmp_path / "home"),
               "AUTOTUNE_TEST_STEP_SLEEP": "0", "RAY_USAGE_STATS_ENABLED": "0"}
        env.pop("MLFLOW_TRACKING_URI", None)
        proc = subprocess.run(
            [sys.executable, "-m", "autotune", "search", str(model), "--name", "team",
             "--trials", str(TRIALS), "--no-early-stop", "--tracking-uri", server.uri],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

        client = MlflowClient(server.uri)
        exp = client.get_experiment_by_name("autotune/team")
        children = client.search_runs([exp.experiment_id], "tags.`autotune.role` = 'trial'")
        assert len(children) == TRIALS
        assert all(r.info.status == "FINISHED" for r in children)
        parent = client.search_runs([exp.experiment_id], "tags.`autotune.role` = 'study'")[0]
        assert parent.info.status == "FINISHED"
        assert "pareto.csv" in {a.path for a in client.list_artifacts(parent.info.run_id)}
        # The runs are in PostgreSQL, the files in the server's artefact store.
        assert list((tmp_path / "artifacts").rglob("pareto.csv"))
        out = subprocess.run(
            [*postgres.prefix, str(postgres.bin / "psql"), "-h", "127.0.0.1", "-p",
             str(postgres.port), "-U", "autotune", "-d", "mlflow", "-tAc",
             f"select count(*) from runs where experiment_id = {exp.experiment_id}"],
            capture_output=True, text=True, timeout=60)
        assert out.stdout.strip() == str(TRIALS + 1), out.stdout + out.stderr
    finally:
        server.kill()
