"""MLflow recording of a study: one writer, each operation spooled on disk first, idempotent."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import numbers
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import uuid
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

try:
    import fcntl
except ImportError:  # not POSIX: the spool's append lock is filelock's
    fcntl = None  # type: ignore[assignment]

from autotune.envvars import scoped_env
from autotune.errors import TrackingError

_log = logging.getLogger(__name__)

EXPERIMENT_PREFIX = "autotune/"
_TERMINAL = {"finished": "FINISHED", "stopped": "FINISHED",
             "failed": "FAILED", "diverged": "FAILED"}
_PARAMS_PER_BATCH, _ENTITIES_PER_BATCH = 100, 1000  # mlflow.utils.validation limits
_PARAM_LEN, _TAG_LEN, _KEY_LEN = 6000, 8000, 250
_CALL_BUDGET_S = 2.0  # how long an ordinary call may spend sending backlog: the study comes first
_MAX_BACKOFF_S = 30.0
_USERINFO = re.compile(r"(?<=://)[^/?#@\s]+@")
_SECRET_QUERY = re.compile(
    r"([?&][^=&#\s]*(?:token|secret|passw|pwd|key|sig|auth|credential|session)[^=&#\s]*=)"
    r"[^&#\s]+", re.I)


def resolve_tracking_uri(explicit: str | None, home: Path) -> str:
    """--tracking-uri, then MLFLOW_TRACKING_URI, then the embedded SQLite store in `home`."""
    if explicit:
        return explicit
    if env := os.environ.get("MLFLOW_TRACKING_URI", "").strip():
        return env
    return f"sqlite:///{Path(home).expanduser().resolve() / 'mlflow.db'}"


def redact_uri(uri: str) -> str:
    """The URI (or any text quoting one) without credentials: user:password@ and token-like
    query values become ***."""
    return _SECRET_QUERY.sub(r"\1***", _USERINFO.sub("***@", uri))


_redact_text = redact_uri  # MLflow's error messages quote request URLs, credentials included


def _key(name: str) -> str:
    # MLflow refuses keys outside [/\w.\- ]; a refused key would poison the whole batch.
    return re.sub(r"[^/\w.\- ]", "_", str(name)).strip("/ ")[:_KEY_LEN] or "_"


def _sqlite_file(uri: str) -> Path | None:
    """The database file of a `sqlite:///` store; None for a server or an in-memory store."""
    if uri.startswith("sqlite:///") and ":memory:" not in uri:
        return Path(uri[len("sqlite:///"):].split("?")[0])
    return None


def _artifact_root(uri: str) -> Path | None:
    """<db folder>/mlartifacts for a SQLite store, so a stale ./mlruns never receives anything."""
    db = _sqlite_file(uri)
    return db.parent / "mlartifacts" if db is not None else None


@dataclass(frozen=True)
class TrialRecord:
    trial_number: int  # Optuna trial number: the idempotency key
    status: str  # "finished" | "stopped" (early-stopped) | "failed" | "diverged"
    params: dict[str, Any]
    metrics: dict[str, float]
    curves: list[dict[str, float]]  # one dict per epoch, each with "epoch" (int >= 1)
    stopped_at_epoch: int | None = None
    error: str | None = None
    ray_trial_id: str | None = None
    started_at: float | None = None
    ended_at: float | None = None
    node: str | None = None  # Ray node id the trial ran on
    host: str | None = None  # that node's hostname


class _Permanent(Exception):
    """An operation MLflow will never accept as it is (bad request): set aside, not retried."""


def _bounded_http(timeout_s: int) -> AbstractContextManager[None]:
    # MLflow reads these at every request (environment_variables.py, rest_utils.http_request);
    # its default of 7 retries with backoff would block the study for minutes during an outage.
    # The spool is our retry, so one attempt with a short timeout, for our calls only. And
    # set_terminated on a server prints "View run ... at: <url>" to stdout (plus a get_run).
    return scoped_env({"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": str(timeout_s),
                       "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"})


def _client(uri: str) -> Any:
    from filelock import FileLock
    from mlflow.tracking import MlflowClient

    # mlflow sets its logger to INFO when imported and then announces table creation on a new
    # store; that is MLflow's business, not the user's, so only warnings get through.
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    db = _sqlite_file(uri)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
    try:
        if db is None:
            return MlflowClient(tracking_uri=uri)
        # Opening a SQLite store creates or migrates its tables; two studies starting at once in
        # one home would race there (alembic: "expected to match one row"): one at a time.
        with FileLock(str(db.parent / ".mlflow.db.lock")):
            if not db.exists():
                _create_sqlite_store(db)
            client = MlflowClient(tracking_uri=uri)
            _sqlite_wal(client)
            return client
    except Exception as e:
        raise TrackingError(f"Cannot open the MLflow store {redact_uri(uri)}: "
                            f"{_redact_text(str(e))}",
                            fix="check --tracking-uri / MLFLOW_TRACKING_URI.") from e


def _create_sqlite_store(db: Path) -> None:
    """Create a new SQLite store's tables in a file beside it, then rename it into place.

    MLflow builds a new store with a long run of migrations, not one transaction: a process
    killed in between (a study's driver is, by users and by tests/test_reliability.py) left a
    half-made database that no later run could open ("table ... already exists"). A rename is
    atomic; a killed creation leaves only a `.new-<pid>` file, removed by the next one. The
    tables come from a copy of `_schema_template()` when there is one: the migrations cost ~2 s
    of CPU per new store, which a first study (and every test) paid beside Ray's start-up.
    """
    from mlflow.tracking import MlflowClient

    for stale in db.parent.glob(db.name + ".new-*"):
        stale.unlink(missing_ok=True)
    tmp = db.with_name(f"{db.name}.new-{os.getpid()}")
    template = _schema_template()
    if template is not None:
        shutil.copyfile(template, tmp)
    try:
        made = MlflowClient(tracking_uri=f"sqlite:///{tmp}")  # adds the Default experiment
    except Exception:
        if template is None:
            raise
        _log.warning("MLflow schema template %s unusable; building the store's tables", template)
        template.unlink(missing_ok=True)
        tmp.unlink(missing_ok=True)
        tmp = tmp.with_name(tmp.name + "-built")  # MLflow keeps its engine for the first name
        made = MlflowClient(tracking_uri=f"sqlite:///{tmp}")
    made._tracking_client.store.engine.dispose()  # rollback journal, no WAL: one file to move
    os.replace(tmp, db)


def _schema_template() -> Path | None:
    """An empty SQLite database holding this MLflow version's migrated tables (no experiments:
    each store adds its own Default experiment, with its own artifact root), made once per
    machine in the user's cache; None where it cannot be made (read-only home)."""
    import mlflow

    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "autotune"
    path = cache / f"mlflow-{mlflow.__version__}-schema.db"
    if path.is_file():
        return path
    tmp = path.with_name(f"{path.name}.new-{os.getpid()}")
    try:
        import sqlalchemy
        from mlflow.store.db.utils import _initialize_tables  # what SqlAlchemyStore runs

        cache.mkdir(parents=True, exist_ok=True)
        engine = sqlalchemy.create_engine(f"sqlite:///{tmp}")
        try:
            _initialize_tables(engine)
        finally:
            engine.dispose()
        os.replace(tmp, path)
        return path
    except Exception as e:
        _log.debug("no MLflow schema template (%s); new stores are built from migrations", e)
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        return None


def _sqlite_wal(client: Any) -> None:
    """The SQLite MLflow store in WAL mode (`sqlite.use_wal`), as autotune's Optuna storage:
    MLflow commits several times a call, and the rollback journal's fsyncs were three quarters
    of the driver's recording time in a profile of 200 trials (scripts/bench_overhead.py)."""
    from autotune.sqlite import use_wal

    if (engine := _store_engine(client)) is not None:
        use_wal(engine)


def _store_engine(client: Any) -> Any:
    """The SQLAlchemy engine behind an MlflowClient's SQL store (MLflow's private attributes);
    None for other stores."""
    return getattr(getattr(getattr(client, "_tracking_client", None), "store", None), "engine", None)


def _append(path: Path, record: dict[str, Any]) -> None:
    line = (json.dumps(record) + "\n").encode("utf-8")  # NaN/inf survive as JSON extensions
    with open(path, "ab+") as f:  # positioned at the end
        if f.tell():
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                line = b"\n" + line  # after a write torn by a crash: this record on a line of its own
        f.write(line)
        f.flush()
        os.fsync(f.fileno())  # durable before the call returns: a crash right after loses nothing


class _AppendLock:
    """The spool's append lock: flock on a descriptor kept open, plus a thread lock (one open file
    is one lock for flock, whichever thread takes it). Taken once per record on Ray Tune's loop,
    where filelock's FileLock (open, lstat and fork checks per acquire) cost ~0.2 ms a record."""

    def __init__(self, path: Path) -> None:
        self._path, self._fd, self._thread_lock = path, -1, threading.Lock()

    def __enter__(self) -> None:
        self._thread_lock.acquire()
        try:
            if self._fd < 0:
                self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        except BaseException:
            self._thread_lock.release()
            raise

    def __exit__(self, *exc: object) -> None:
        try:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._thread_lock.release()

    def __del__(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)


def _all_runs(client: Any, exp_id: str, filter_string: str) -> list[Any]:
    runs, token = [], None
    while True:
        page = client.search_runs([exp_id], filter_string, max_results=1000, page_token=token)
        runs.extend(page)
        if not (token := page.token):
            return runs


class Recorder:
    """The study's one MLflow writer: spool first (fsync'ed JSONL), then apply, then forget."""

    def __init__(self, tracking_uri: str, study_name: str, spool_dir: Path,
                 http_timeout_s: int = 3, background: bool = False) -> None:
        if not re.fullmatch(r"[\w.\- ]+", study_name):
            raise TrackingError(f"Study name {study_name!r} cannot name an MLflow experiment.",
                                fix="use letters, digits, '_', '-', '.' and spaces.")
        self.uri, self.study = tracking_uri, study_name
        self.spool_dir = Path(spool_dir)
        (self.spool_dir / "blobs").mkdir(parents=True, exist_ok=True)
        self._ops, self._dead = self.spool_dir / "pending.jsonl", self.spool_dir / "failed.jsonl"
        self._sent = self.spool_dir / "pending.sent"
        self._sent_at = 0  # pending.sent as this process last read or wrote it
        self._may_compact = True  # not in the sender while it runs at idle priority (_compact)
        self._http_timeout = http_timeout_s
        from filelock import FileLock

        # A drain holds _lock and the spool's lock while it talks to MLflow (the sender process
        # and the study's own flush take turns); an append takes only the append lock, which
        # only _compact takes too: a study never waits on MLflow.
        self._lock = threading.RLock()
        self._flock = FileLock(str(self.spool_dir / ".lock"))
        append_lock = self.spool_dir / ".append.lock"
        self._append_lock = _AppendLock(append_lock) if fcntl else FileLock(str(append_lock))
        self._client: Any = None
        self._exp: dict[str, str] = {}
        self._parents: dict[str, str] = {}
        self._children: dict[tuple[str, int], str] = {}
        self._listed: set[str] = set()  # studies whose child runs are all in _children
        self._front_tags: dict[tuple[str, int], dict[str, str]] = {}  # a child's pareto tags
        self._retry_at, self._delay, self._outage = 0.0, 1.0, False
        self._sender: subprocess.Popen[bytes] | None = None
        self._adopted = False  # the sender is the standby started before the study (start_standby_sender)
        self._background, self._ready = background, False
        self._open_error: TrackingError | None = None
        if not background:
            self._client, self._ready = _client(tracking_uri), True
            self._drain(time.monotonic() + _CALL_BUDGET_S)  # whatever a previous process left
            return
        # The sender process opens the store (a new SQLite store's tables cost ~2 s of CPU, beside
        # Ray's start-up instead of on the driver), sends what a previous process left, and says
        # whether the store opened: ready() reads it before the first trial. This process opens
        # its own client only for the final flush.
        self._sender = self._start_sender()

    def ready(self) -> None:
        """Wait until the store is open; a TrackingError (bad URI, unusable store) if it is not."""
        if self._ready:
            return
        if self._open_error is not None:
            raise self._open_error
        assert self._sender is not None and self._sender.stdout is not None
        line = _first_line(self._sender)
        if not line and self._adopted:  # the standby died (it logs nowhere): a sender that logs
            _end_process(self._sender)
            self._sender, self._adopted = self._spawn_sender(), False
            line = _first_line(self._sender)
        if line == "ok":
            self._ready = True
            return
        self.close()
        try:
            err = json.loads(line.partition(" ")[2])
        except ValueError:
            log = (self.spool_dir / "sender.log").read_text(errors="replace")[-2000:]
            err = {"message": f"autotune's MLflow sender process ended before opening the store "
                              f"{redact_uri(self.uri)}: {log.strip() or 'no output'}",
                   "fix": "see the sender's log in " + str(self.spool_dir / "sender.log")}
        self._open_error = TrackingError(err["message"], fix=err.get("fix"))
        raise self._open_error

    # ---- public API: each call spools one operation, then tries to send the backlog ----

    def start_study(self, params: dict[str, Any], tags: dict[str, str]) -> None:
        self._submit("start", params=_params(params), tags={_key(k): str(v)[:_TAG_LEN]
                                                           for k, v in tags.items()})

    def log_trial(self, rec: TrialRecord) -> None:
        if rec.status not in _TERMINAL:
            raise TrackingError(f"Trial status must be one of {sorted(_TERMINAL)}, got "
                                f"{rec.status!r}.", fix="this is an autotune bug; report it.")
        self._submit("trial", n=int(rec.trial_number), status=rec.status,
                     params=_params(rec.params), metrics=_metrics(rec.metrics),
                     curves=[{"epoch": int(c["epoch"]), **_metrics(c)} for c in rec.curves],
                     stopped=rec.stopped_at_epoch, error=rec.error, ray=rec.ray_trial_id,
                     start=rec.started_at, end=rec.ended_at, node=rec.node, host=rec.host)

    def set_front(self, ranks: dict[int, int], full: bool = True) -> None:
        """Tag the study's children with the front: `autotune.pareto` (true for rank 0) and
        `autotune.pareto_rank`. With full=False only trials that join or leave the front get their
        rank tag: a live update during the study, where each new trial shifts the ranks of many
        dominated ones (re-tagging them was a third of the sender's work); the study's last
        update is full."""
        self._submit("front", ranks=[[int(n), int(r)] for n, r in ranks.items()], full=full)

    def log_study_summary(self, metrics: dict[str, float], artifacts: dict[str, Path],
                          step: int | None = None, timestamp_ms: int | None = None,
                          series: list[tuple[str, float, int, int]] | None = None,
                          drawn: dict[str, dict[str, str]] | None = None) -> None:
        """Parent-run metrics at `step`, a metric history (`series` of name, value, timestamp ms,
        step; one request for all of it) and files. A fixed `timestamp_ms` makes a replay (the same
        summary logged again by a later run of the study) write identical rows, which MLflow
        deduplicates instead of doubling the history. `drawn` names pictures the sender draws
        from one of the files before logging them: {"pareto.png": {"data": "pareto.csv",
        "also_to": path, **draw_front_png's x, y, title}}."""
        op_id = uuid.uuid4().hex
        blobs: dict[str, str] = {}
        for name, src in artifacts.items():
            if not Path(src).is_file():
                _log.warning("artefact %s not found; not recorded", src)
                continue
            dst = self.spool_dir / "blobs" / op_id / name  # copied: the caller may rewrite it
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
            with open(dst, "rb") as f:
                os.fsync(f.fileno())
            blobs[name] = str(dst.relative_to(self.spool_dir))
        self._submit("summary", op_id=op_id, metrics=_metrics(metrics), step=step, blobs=blobs,
                     mts=None if timestamp_ms is None else int(timestamp_ms),
                     series=[[_key(k), float(v), int(ts), int(st)] for k, v, ts, st in series or ()],
                     drawn=drawn or {})  # one whose data is not spooled is left out when sent

    def end_study(self, status: str = "FINISHED") -> None:
        if status not in ("FINISHED", "FAILED", "KILLED"):
            raise TrackingError(f"Study status must be FINISHED, FAILED or KILLED, got "
                                f"{status!r}.", fix="this is an autotune bug; report it.")
        self._submit("end", status=status)

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Send what is pending, ignoring the outage back-off; True if nothing is left."""
        self.ready()
        if self._client is None:
            self._client = _client(self.uri)  # the sender has created the store's tables
        deadline = time.monotonic() + timeout_s
        while True:
            if self._drain(deadline) == 0:
                return True
            if time.monotonic() + 0.5 > deadline:
                return False
            time.sleep(0.5)  # e.g. a pooled connection to a restarted server failed once

    def send_all(self, window_s: float = 10.0) -> int:
        """Send everything spooled, patient while records go out (a backlog after an outage can
        take longer than one window on a busy server) and giving up after `window_s` without
        progress; returns how many records are left. The sender process sends them, its client
        already open, then exits; without one (it died, or none was started) this process does."""
        self.ready()
        sender, left = self._sender, self.pending()
        if sender is not None and sender.poll() is None:
            self._sender = None
            with contextlib.suppress(OSError):
                sender.stdin.write(b"drain\n")  # type: ignore[union-attr]
                sender.stdin.close()  # type: ignore[union-attr]
            while True:
                try:
                    sender.wait(timeout=window_s)
                    return self.pending()
                except subprocess.TimeoutExpired:
                    now = self.pending()
                    if now >= left:
                        sender.kill()  # an op it was applying stays spooled: sent again later
                        sender.wait()
                        return now
                    left = now
        while not self.flush(timeout_s=window_s):
            now = self.pending()
            if now >= left:
                return now
            left = now
        return 0

    def close(self) -> None:
        """Stop the sender process (what it has not sent stays spooled for the next flush)."""
        sender, self._sender = self._sender, None
        if sender is None:
            return
        with contextlib.suppress(OSError):
            sender.stdin.close()  # type: ignore[union-attr]  # its cue to stop
        try:
            sender.wait(timeout=_CALL_BUDGET_S + self._http_timeout + 5)
        except subprocess.TimeoutExpired:
            sender.kill()  # mid-call: the op stays spooled and is applied again, idempotently
            sender.wait()

    def close_store(self) -> None:
        """Close the store's connections (a SQLite store folds its WAL back into the file)."""
        if (engine := _store_engine(self._client)) is not None:
            engine.dispose()

    def _start_sender(self) -> subprocess.Popen[bytes]:
        """MLflow's client costs ~10 ms of CPU a trial on SQLite, more on a server. From a thread
        of the driver it slowed Ray Tune's controller far more than that (it waits for the GIL
        after every result: MLflow on vs off 1.6x, scripts/bench_overhead.py); a process of its
        own works beside it. The spool is the hand-over: a record is on disk before the study's
        call returns, the sender applies and removes it, and whatever it leaves (it died, the
        server is down) the study's final flush or the next run sends. The standby sender
        (start_standby_sender) is taken when there is one: it has MLflow imported."""
        proc = _take_standby()
        if proc is not None and proc.poll() is None:
            try:
                proc.stdin.write(json.dumps(self._sender_args()).encode() + b"\n")  # type: ignore[union-attr]
                proc.stdin.flush()  # type: ignore[union-attr]
                self._adopted = True
                return proc
            except OSError:
                pass
        _end_process(proc)
        return self._spawn_sender()

    def _sender_args(self) -> list[str]:
        return [self.uri, self.study, str(self.spool_dir), str(self._http_timeout)]

    def _spawn_sender(self) -> subprocess.Popen[bytes]:
        with open(self.spool_dir / "sender.log", "ab") as log:
            return subprocess.Popen([sys.executable, "-m", "autotune.tracking", *self._sender_args()],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log)

    # ---- the spool ----
    # pending.jsonl is only ever appended to while a study runs; pending.sent holds the byte
    # offset up to which it has been applied. A drain never rewrites the file the study appends
    # to, so an append never waits on the sender: the sender runs at idle priority, and a study
    # blocked on a lock it held while descheduled would wait for idle CPU. The file is emptied
    # once everything in it is sent, by a process that is not at idle priority (_compact).

    def _submit(self, kind: str, op_id: str | None = None, **data: Any) -> None:
        op = {"id": op_id or uuid.uuid4().hex, "kind": kind, "study": self.study,
              "ts": int(time.time() * 1000), **data}
        with self._append_lock:
            _append(self._ops, op)
        if not self._background and time.monotonic() >= self._retry_at:
            self._drain(time.monotonic() + _CALL_BUDGET_S)

    def _sent_offset(self) -> int:
        """Where the unsent operations start; 0 (all of them, sent again idempotently) when the
        offset does not fall on a line's start: the spool was emptied or replaced by hand."""
        try:
            offset = int(self._sent.read_text(encoding="utf-8").strip() or 0)
            with open(self._ops, "rb") as f:
                if offset > 0:
                    f.seek(offset - 1)
                    if f.read(1) != b"\n":
                        return 0
        except (OSError, ValueError):
            return 0
        return offset

    def _write_sent(self, offset: int, durable: bool = False) -> None:
        """Record how far the spool is applied. Only a reset before the spool is emptied must
        survive a power cut (durable): a progress mark lost to one (an older offset, or none) only
        makes the next drain apply some operations again, idempotently, and the fsyncs of every
        drain were disk flushes beside the study's own (scripts/bench_overhead.py)."""
        tmp = self._sent.with_suffix(".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(str(offset))
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, self._sent)
        if durable:
            fd = os.open(self.spool_dir, os.O_RDONLY)
            try:
                os.fsync(fd)  # the rename itself must survive a crash
            finally:
                os.close(fd)
        self._sent_at = offset

    def _unsent(self, offset: int) -> tuple[list[tuple[int, dict[str, Any]]], bytes]:
        """The operations after `offset`, each with the offset just past its line (a line that
        does not parse, a write torn by a crash, as {"kind": "_bad"}), and the bytes after the
        last newline: an append in progress, or (seen under the append lock) a torn write."""
        try:
            with open(self._ops, "rb") as f:
                f.seek(offset)
                data = f.read()
        except FileNotFoundError:
            return [], b""
        *lines, tail = data.split(b"\n")
        out, pos = [], offset
        for raw in lines:
            pos += len(raw) + 1
            if not raw.strip():
                continue
            try:
                out.append((pos, json.loads(raw)))
            except ValueError:
                out.append((pos, {"kind": "_bad", "raw": raw.decode("utf-8", "replace")}))
        return out, tail

    def has_unsent(self) -> bool:
        """Cheap check for the sender's polling: has the spool grown past what was sent?"""
        try:
            return self._ops.stat().st_size > self._sent_at
        except OSError:
            return False

    def pending(self) -> int:
        return len(self._unsent(self._sent_offset())[0])

    def _set_aside(self, op: dict[str, Any], why: str) -> None:
        _log.error("MLflow operation %s set aside in %s: %s", op.get("kind", "?"), self._dead, why)
        _append(self._dead, {**op, "error": why})

    def _drain(self, deadline: float) -> int:
        """Apply spooled operations in order until one fails transiently or time is up; returns
        how many are left."""
        with self._lock, self._flock:
            offset = self._sent_at = self._sent_offset()
            ops, _ = self._unsent(offset)
            superseded = _superseded_fronts([op for _, op in ops])
            done_to, done, sent = offset, 0, []
            try:
                for i, (end, op) in enumerate(ops):
                    if time.monotonic() > deadline:
                        break
                    try:
                        if op.get("kind") == "_bad":
                            self._set_aside({"raw": op["raw"]}, "unreadable spool line")
                        elif i not in superseded:
                            self._apply_once_more_on_refusal(op)
                        sent.append(op.get("id"))
                    except _Permanent as e:
                        self._set_aside(op, _redact_text(str(e.__cause__ or e))[:_TAG_LEN])
                    except Exception as e:
                        self._on_outage(e, len(ops) - done)
                        break
                    done_to, done = end, done + 1
            finally:
                if done_to != offset:  # past it only now that MLflow has it (or refused it for good)
                    self._write_sent(done_to)
                for op_id in filter(None, sent):
                    shutil.rmtree(self.spool_dir / "blobs" / op_id, ignore_errors=True)
            if done == len(ops):
                if done and self._outage:
                    _log.warning("MLflow at %s reachable again; spooled operations sent",
                                 redact_uri(self.uri))
                self._outage, self._delay = False, 1.0
                if self._may_compact:
                    self._compact()
            return len(ops) - done

    def _compact(self) -> None:
        """Empty the spool once all of it is sent, under the append lock so that no append is
        lost. Nothing appends while the lock is held, so bytes after the last newline are a
        write torn by a crash: set aside, as an unreadable line would be."""
        with self._append_lock:
            ops, tail = self._unsent(self._sent_offset())
            if ops:
                return  # appended since the drain read the spool: the next drain sends it
            if tail.strip():
                self._set_aside({"raw": tail.decode("utf-8", "replace")}, "unreadable spool line")
            if self._ops.exists() and self._ops.stat().st_size:
                self._write_sent(0, durable=True)  # first: a crash before the truncation replays (idempotent)
                os.truncate(self._ops, 0)

    def _on_outage(self, e: Exception, left: int) -> None:
        if not self._outage:
            _log.warning("MLflow at %s unreachable (%s); %d operation(s) kept in %s and sent when "
                         "it returns", redact_uri(self.uri), _redact_text(str(e))[:300], left,
                         self._ops)
        self._outage = True
        self._retry_at = time.monotonic() + self._delay
        self._delay = min(self._delay * 2, _MAX_BACKOFF_S)

    def _apply_once_more_on_refusal(self, op: dict[str, Any]) -> None:
        for attempt in (0, 1):
            try:
                with _bounded_http(self._http_timeout):
                    return getattr(self, f"_do_{op['kind']}")(op)
            except Exception as e:
                if _transient(e):
                    raise
                if not _refused(e):  # a bug, or an op spooled by another version: never stall
                    _log.exception("cannot apply spooled MLflow operation %s", op.get("kind"))
                    raise _Permanent(repr(e)) from e
                if attempt:
                    raise _Permanent(str(e)) from e
                # A cached id may be stale (run or experiment deleted by hand): look up again.
                self._exp.clear()
                self._parents.clear()
                self._children.clear()
                self._listed.clear()
                self._front_tags.clear()

    # ---- applying operations (each idempotent: found by tag, deterministic timestamps) ----

    def _experiment(self, study: str) -> str:
        if study in self._exp:
            return self._exp[study]
        name = EXPERIMENT_PREFIX + study
        exp = self._client.get_experiment_by_name(name)
        if exp is None:
            root = _artifact_root(self.uri)
            loc = (root / quote(name)).as_uri() if root else None
            exp_id = self._client.create_experiment(name, artifact_location=loc)
        else:
            exp_id = exp.experiment_id
            if exp.lifecycle_stage == "deleted":  # deleted by hand: the study still owns it
                self._client.restore_experiment(exp_id)
        self._exp[study] = exp_id
        return exp_id

    def _parent(self, study: str, ts: int) -> Any:
        exp = self._experiment(study)
        found = self._client.search_runs(
            [exp], f"tags.`autotune.role` = 'study' and tags.`autotune.study` = '{study}'",
            max_results=1, order_by=["attributes.start_time ASC"])
        run = found[0] if found else self._client.create_run(
            exp, start_time=ts, run_name=study,
            tags={"autotune.study": study, "autotune.role": "study"})
        self._parents[study] = run.info.run_id
        return run

    def _parent_id(self, study: str, ts: int) -> str:
        return self._parents.get(study) or self._parent(study, ts).info.run_id

    def _do_start(self, op: dict[str, Any]) -> None:
        run = self._parent(op["study"], op["ts"])
        if run.info.status != "RUNNING":
            self._client.update_run(run.info.run_id, status="RUNNING")  # a resumed study
        self._batch(run.info.run_id, [], self._new_params(run, op["params"]), op["tags"])

    def _do_trial(self, op: dict[str, Any]) -> None:
        study, n = op["study"], op["n"]
        parent = self._parent_id(study, op["ts"])
        run = self._child(study, n, parent)
        base = int(op["start"] * 1000) if op["start"] else op["ts"]
        tags = {"autotune.status": op["status"], "autotune.stopped_at_epoch": op["stopped"],
                "autotune.error": op["error"], "autotune.ray_trial_id": op["ray"],
                "autotune.node": op.get("node"), "autotune.host": op.get("host")}
        stale = [k for k, v in tags.items() if v is None and run and k in run.data.tags]
        tags = {k: str(v)[:_TAG_LEN] for k, v in tags.items() if v is not None}
        if run is None:
            # The trial's tags go with the new run: MLflow's log_batch sets tags one upsert at
            # a time, ~40 % of a trial's recording cost on SQLite (scripts/bench_overhead.py).
            run = self._client.create_run(
                self._experiment(study), start_time=base, run_name=f"trial-{n}",
                tags={"mlflow.parentRunId": parent, "autotune.study": study,
                      "autotune.role": "trial", "autotune.trial_number": str(n),
                      # off the front until a front update says otherwise, so the recorder
                      # only has to send front updates when the front itself changes
                      "autotune.pareto": "false", **tags})
            tags = {}
        run_id = run.info.run_id
        self._children[(study, n)] = run_id
        self._front_tags[(study, n)] = _pareto_tags(run.data.tags)
        # Timestamps come from the record, so a replay writes identical rows, which MLflow
        # deduplicates instead of doubling every curve point.
        metrics = [(k, v, base + c["epoch"], c["epoch"])
                   for c in op["curves"] for k, v in c.items() if k != "epoch"]
        last = max([c["epoch"] for c in op["curves"]] + [op["stopped"] or 0])
        end = int(op["end"] * 1000) if op["end"] else op["ts"]
        # A final metric that is the curve's last point already (accuracy at the last epoch) is
        # not logged again: it showed as a second point at the same step in MLflow's charts.
        at_last = {k: v for k, v, _, step in metrics if step == last}
        metrics += [(k, v, max(end, base + last + 1), last) for k, v in op["metrics"].items()
                    if not _same(at_last.get(k), v)]
        self._batch(run_id, metrics, self._new_params(run, op["params"]), tags)
        for k in stale:
            self._client.delete_tag(run_id, k)
        self._client.set_terminated(run_id, _TERMINAL[op["status"]], end_time=end)

    def _list_children(self, study: str, parent: str) -> None:
        """The study's lock makes this process its only MLflow writer: its child runs and their
        Pareto tags are listed once (one paged query) and then kept current here, instead of a
        tag search per trial and a listing per front change, both growing with the study."""
        if study in self._listed:
            return
        for run in _all_runs(self._client, self._experiment(study),
                             f"tags.`mlflow.parentRunId` = '{parent}'"):
            if (num := run.data.tags.get("autotune.trial_number")) is not None:
                self._children[(study, int(num))] = run.info.run_id
                self._front_tags[(study, int(num))] = _pareto_tags(run.data.tags)
        self._listed.add(study)

    def _child(self, study: str, n: int, parent: str) -> Any | None:
        """Trial n's child run, if one was made."""
        self._list_children(study, parent)
        run_id = self._children.get((study, n))
        return self._client.get_run(run_id) if run_id else None

    def _do_front(self, op: dict[str, Any]) -> None:
        study, ranks = op["study"], {n: r for n, r in op["ranks"]}
        full = op.get("full", True)
        self._list_children(study, self._parent_id(study, op["ts"]))
        for (s, n), have in self._front_tags.items():
            if s != study:
                continue
            run_id = self._children[(s, n)]
            want = {"autotune.pareto": "true" if ranks.get(n) == 0 else "false"}
            if not full and have.get("autotune.pareto") == want["autotune.pareto"]:
                continue  # stays on (or off) the front: its rank tag waits for a full update
            if n in ranks:
                want["autotune.pareto_rank"] = str(ranks[n])
            if any(have.get(k) != v for k, v in want.items()):  # only what changed: one call
                self._batch(run_id, [], {}, want)
                have.update(want)
            if n not in ranks and "autotune.pareto_rank" in have:
                self._client.delete_tag(run_id, "autotune.pareto_rank")
                del have["autotune.pareto_rank"]

    def _do_summary(self, op: dict[str, Any]) -> None:
        parent = self._parent_id(op["study"], op["ts"])
        step, ts = op["step"] or 0, op.get("mts") or op["ts"]
        series = [tuple(row) for row in op.get("series", ())]
        self._batch(parent, [(k, v, ts, step) for k, v in op["metrics"].items()] + series, {}, {})
        blobs = dict(op["blobs"])
        for name, how in op.get("drawn", {}).items():
            data = blobs.get(how.get("data", ""))
            if data and (rel := self._draw(op["id"], name, how, self.spool_dir / data)):
                blobs[name] = rel
        for name, rel in blobs.items():
            if not (self.spool_dir / rel).is_file():  # sent before a crash, then cleaned up
                _log.warning("spooled artefact %s is gone; not sent again", rel)
                continue
            sub = str(Path(name).parent)
            self._client.log_artifact(parent, str(self.spool_dir / rel),
                                      None if sub == "." else sub)

    def _draw(self, op_id: str, name: str, how: dict[str, str], data: Path) -> str | None:
        """Draw a summary's picture into its spooled files (and `also_to`); None if it cannot be:
        a picture is not worth holding the study's record back."""
        from autotune.artifacts import draw_front_png

        out = self.spool_dir / "blobs" / op_id / name
        if not out.is_file():
            try:
                draw_front_png(data, out, how["x"], how["y"], how["title"])
            except Exception as e:  # noqa: BLE001 - matplotlib's errors are many
                _log.warning("could not draw %s: %s", name, e)
                return None
        if how.get("also_to"):
            with contextlib.suppress(OSError):
                shutil.copyfile(out, how["also_to"])
        return str(out.relative_to(self.spool_dir))

    def _do_end(self, op: dict[str, Any]) -> None:
        self._client.set_terminated(self._parent_id(op["study"], op["ts"]), op["status"],
                                    end_time=op["ts"])

    def _new_params(self, run: Any, params: dict[str, str]) -> dict[str, str]:
        # MLflow refuses to change a logged param; re-logging an equal one is a no-op.
        have = run.data.params
        for k in (k for k in params if k in have and have[k] != params[k]):
            _log.warning("run %s: param %s already logged as %r; keeping it", run.info.run_id, k,
                         have[k])
        return {k: v for k, v in params.items() if k not in have}

    def _batch(self, run_id: str, metrics: list[tuple[str, float, int, int]],
               params: dict[str, str], tags: dict[str, str]) -> None:
        """log_batch within MLflow's limits: 100 params+tags and 1000 entities per request."""
        from mlflow.entities import Metric, Param, RunTag

        small = [Param(k, v) for k, v in params.items()] + [RunTag(k, v) for k, v in tags.items()]
        mets = [Metric(k, v, ts, step) for k, v, ts, step in metrics]
        while small or mets:
            head, small = small[:_PARAMS_PER_BATCH], small[_PARAMS_PER_BATCH:]
            room = _ENTITIES_PER_BATCH - len(head)
            chunk, mets = mets[:room], mets[room:]
            self._client.log_batch(
                run_id, metrics=chunk, params=[p for p in head if isinstance(p, Param)],
                tags=[t for t in head if isinstance(t, RunTag)], synchronous=True)


def _superseded_fronts(ops: list[dict[str, Any]]) -> set[int]:
    """Indexes of front ops that a later one of the same study makes redundant. A front op is a
    whole snapshot of the ranks, so the last one gives the tags all of them would have in turn
    (a sender behind the study spent most of its time re-tagging children for fronts already
    superseded); only a full update is not replaced by a later partial one."""
    out: set[int] = set()
    later: dict[str, bool] = {}  # study -> a later front op exists (True: a full one)
    for i in range(len(ops) - 1, -1, -1):
        op = ops[i]
        if op.get("kind") != "front":
            continue
        study, full = op.get("study"), op.get("full", True)
        if study in later and (later[study] or not full):
            out.add(i)
        later[study] = later.get(study, False) or full
    return out


def _same(a: float | None, b: float) -> bool:
    return a is not None and (a == b or (math.isnan(a) and math.isnan(b)))


def _pareto_tags(tags: dict[str, str]) -> dict[str, str]:
    return {k: tags[k] for k in ("autotune.pareto", "autotune.pareto_rank") if k in tags}


def _params(params: dict[str, Any]) -> dict[str, str]:
    return {_key(k): str(v)[:_PARAM_LEN] for k, v in params.items()}


def _metrics(metrics: dict[str, Any]) -> dict[str, float]:
    # NaN/inf stay as they are (a diverged trial); MLflow stores them. Non-numbers are skipped.
    return {_key(k): float(v) for k, v in metrics.items()
            if k != "epoch" and isinstance(v, numbers.Real) and not isinstance(v, bool)}


def _transient(e: Exception) -> bool:
    """Worth retrying later: the store is unreachable, overloaded or locked."""
    from mlflow.exceptions import MlflowException

    if isinstance(e, MlflowException):
        return not _refused(e)
    return isinstance(e, OSError) or type(e).__module__.split(".")[0] in (
        "requests", "urllib3", "sqlalchemy", "sqlite3")


def _refused(e: Exception) -> bool:
    """MLflow answered and said no (4xx): retrying the same request cannot help."""
    from mlflow.exceptions import MlflowException

    if not isinstance(e, MlflowException):
        return False
    code = e.get_http_status_code()
    return 400 <= code < 500 and code not in (401, 403, 408, 429)


def list_studies(tracking_uri: str) -> list[dict[str, Any]]:
    """Every autotune study in the store: name, trials, front size, status of its parent run."""
    client = _client(tracking_uri)
    out = []
    try:
        with _bounded_http(10):
            exps = client.search_experiments(  # 50000: MLflow's page maximum, no paging
                filter_string=f"name LIKE '{EXPERIMENT_PREFIX}%'", max_results=50_000)
            for exp in sorted(exps, key=lambda e: e.name):
                trials = _all_runs(client, exp.experiment_id, "tags.`autotune.role` = 'trial'")
                parent = client.search_runs([exp.experiment_id],
                                            "tags.`autotune.role` = 'study'", max_results=1)
                out.append({
                    "name": exp.name[len(EXPERIMENT_PREFIX):], "experiment_id": exp.experiment_id,
                    "trials": len(trials),
                    "front": sum(r.data.tags.get("autotune.pareto") == "true" for r in trials),
                    "status": parent[0].info.status if parent else None,
                    "started_at": parent[0].info.start_time / 1000 if parent else None,
                })
    except Exception as e:
        raise TrackingError(f"Cannot list studies in {redact_uri(tracking_uri)}: "
                            f"{_redact_text(str(e))[:500]}",
                            fix="check that the tracking server is running and reachable.") from e
    return out


_SENDER_POLL_S = 0.1


def _lower_priority() -> None:
    """The sender below every process of the study: it only uses CPU that nothing else wants.
    Ray runs trial workers at nice 15 (its worker_niceness), so the nice 10 used before put the
    sender *above* the trials; SCHED_IDLE (Linux) ranks below any nice level, nice 19 elsewhere.
    A backlog it leaves while the cores are busy goes out at the study's end, as Ray shuts down."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        with contextlib.suppress(AttributeError, OSError):
            os.nice(19)


def _send_forever(uri: str, study: str, spool_dir: str, http_timeout_s: int) -> None:
    """The sender process: apply what the study spools until its stdin closes (the study ended,
    or died: its end of the pipe closes with it); after a "drain" line, send all that is left,
    as long as records go out, before exiting."""
    try:
        rec = Recorder(uri, study, Path(spool_dir), http_timeout_s=http_timeout_s)
    except TrackingError as e:
        print("error " + json.dumps({"message": e.message, "fix": e.fix}), flush=True)
        sys.exit(2)
    print("ok", flush=True)
    _lower_priority()  # only once the store is open: the study waits for that
    with contextlib.suppress(Exception):  # drawing would import it at the study's end instead
        from autotune.artifacts import warm_up

        warm_up()
    rec._may_compact = False
    stop, drain = threading.Event(), threading.Event()

    def watch() -> None:
        for line in sys.stdin.buffer:
            if line.strip() == b"drain":
                drain.set()
        stop.set()

    threading.Thread(target=watch, daemon=True).start()
    while not stop.wait(_SENDER_POLL_S):
        if time.monotonic() < rec._retry_at:
            continue
        if rec.has_unsent():
            with contextlib.suppress(OSError):
                rec._drain(time.monotonic() + _CALL_BUDGET_S)
    if drain.is_set():
        rec._may_compact = True  # the study appends nothing more: the spool can be emptied
        rec.send_all(window_s=10)  # this Recorder has no sender: it sends them itself
    rec.close_store()


_standby: subprocess.Popen[bytes] | None = None


def start_standby_sender() -> None:
    """Start the MLflow sender before its study is known. MLflow and its SQL store take ~1.6 s of
    CPU to import: started by the study's Recorder, beside Ray's start-up, the sender slowed that by
    0.4-1.2 s on 2 cores (scripts/bench_overhead.py); started first by run_search, it imports them on
    the core that run_search's own imports (the model, Ray Tune, Optuna) leave idle. The study's
    Recorder hands it the store and the spool; discard_standby_sender() ends it if no study does
    (an error came first), and it ends by itself when the process that started it does."""
    global _standby
    if _standby is None or _standby.poll() is not None:
        _standby = subprocess.Popen([sys.executable, "-m", "autotune.tracking", "--standby"],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.DEVNULL)


def discard_standby_sender() -> None:
    """End the standby sender if no study took it."""
    _end_process(_take_standby())


def _take_standby() -> subprocess.Popen[bytes] | None:
    """The standby sender, now the caller's to hand a study to or to end."""
    global _standby
    proc, _standby = _standby, None
    return proc


def _first_line(proc: subprocess.Popen[bytes]) -> str:
    """The sender's report on the store: "ok", "error <json>", or "" if it ended first."""
    return proc.stdout.readline().decode("utf-8", "replace").strip()  # type: ignore[union-attr]


def _end_process(proc: subprocess.Popen[bytes] | None) -> None:
    """Kill a sender nothing will hand a study to (any op it was applying stays spooled)."""
    if proc is None:
        return
    proc.kill()
    proc.wait()
    for pipe in (proc.stdin, proc.stdout):
        with contextlib.suppress(OSError):
            pipe.close()  # type: ignore[union-attr]


def _stand_by() -> None:
    """A standby sender: import what opening a store needs, then wait for the study's Recorder to
    say which store and spool (one JSON line of _send_forever's arguments; none: exit)."""
    import mlflow.store.tracking.sqlalchemy_store  # noqa: F401 - what it is started early for
    import mlflow.tracking  # noqa: F401

    line = sys.stdin.buffer.readline()
    if not line.strip():
        return
    uri, study, spool_dir, http_timeout_s = json.loads(line)
    log = os.open(Path(spool_dir) / "sender.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, 2)  # from here on it logs where a sender the Recorder started would
    os.close(log)
    _send_forever(uri, study, spool_dir, int(http_timeout_s))


def _exit_now() -> None:
    """End the sender without tearing its interpreter down: everything it sent is committed and
    its store closed, and the study waits for it to exit. The teardown of MLflow, SQLAlchemy and
    pandas took ~0.85 s at idle priority while Ray shut down beside it (scripts/bench_overhead.py)."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(0)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    if sys.argv[1:] == ["--standby"]:
        _stand_by()
    else:
        _send_forever(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
    _exit_now()
