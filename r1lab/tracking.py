"""Experiment trackers: what a run writes to ``metrics.jsonl``, also in TensorBoard, Weights & Biases, trackio or
MLflow (``--report-to``), through each project's own library (``pip install 'r1lab[tracking]'``).

One tracker run per r1lab run: the run's settings are its parameters, every ``metrics.jsonl`` row is logged at its
own step under the trackers' names (``reward`` -> ``train/reward``, ``eval_accuracy`` -> ``eval/accuracy``: see
:func:`tracker_key`), and at the end the plots, the report, the summary and ``config.yaml`` are its artifacts. What
identifies each tracker's run is kept in the run's ``trackers.json``, so a resumed run goes on logging into the same
one. Every tracker also runs with no network: ``WANDB_MODE=offline``, a local MLflow store (``./mlruns``, or
``MLFLOW_TRACKING_URI``), trackio's local database (``TRACKIO_DIR``), and TensorBoard's event files in the run folder
(``tensorboard --logdir runs``). Where they go: ``WANDB_PROJECT``, ``MLFLOW_EXPERIMENT_NAME``, ``TRACKIO_PROJECT``
(default ``r1lab``), else the trackers' own settings.

A tracker that cannot start (not installed, not logged in, its server out of reach) is one error before anything
trains (:func:`check`, then :func:`start`); one that fails mid-run is one warning, and the run goes on without it
(``metrics.jsonl`` has every step). Only the process that writes the run's files logs (rank 0 under torchrun).
"""

from __future__ import annotations

import atexit
import dataclasses
import importlib.util
import json
import math
import os
import re
import secrets
import shutil
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from r1lab.console import log
from r1lab.files import to_json, write_atomic, write_json


class TrackerError(ValueError):
    """A tracker that cannot start, said in one line that names it and what to do."""


TRACKERS = ("tensorboard", "wandb", "trackio", "mlflow")  # the names --report-to takes (r1lab.config checks them)
#: the file in a run's folder that names its runs in each tracker (for resume)
STATE_FILE = "trackers.json"
#: what each tracker imports (a missing one is refused before anything runs)
PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "trackio": "trackio", "mlflow": "mlflow"}
#: a run's files kept as artifacts at its end, where the tracker has artifacts
ARTIFACTS = ("report.md", "report.html", "summary.json", "config.yaml", "plots/*.png")
DEFAULT_PROJECT = "r1lab"


def tracker_key(name: str, section: str = "train") -> str:
    """The tracker's name of a ``metrics.jsonl`` field: held-out values (``eval_*``) under ``eval/``, the rest
    under ``section/``.

    >>> tracker_key("reward"), tracker_key("reward/accuracy"), tracker_key("eval_accuracy")
    ('train/reward', 'train/reward/accuracy', 'eval/accuracy')
    >>> tracker_key("gsm8k/pass@1", "eval")
    'eval/gsm8k/pass@1'
    """
    return f"eval/{name[5:]}" if name.startswith("eval_") else f"{section}/{name}"


def scalars(record: dict, section: str = "train") -> dict[str, float]:
    """The numbers of a ``metrics.jsonl`` row under their tracker names; ``step`` is the step, not a value, and a
    value that is not a finite number (a list, a mean over nothing) is left out.

    >>> scalars({"step": 3, "reward": 0.5, "kl": float("nan"), "memory/peak_mb_by_rank": [1.0, 2.0], "ok": True})
    {'train/reward': 0.5, 'train/ok': 1.0}
    """
    return {tracker_key(k, section): float(v) for k, v in record.items()
            if k != "step" and isinstance(v, (int, float)) and math.isfinite(v)}


def parameters(cfg) -> dict:
    """A command's settings as plain YAML values (what ``config.yaml`` holds)."""
    return yaml.safe_load(yaml.safe_dump(dataclasses.asdict(cfg)))


def chosen(names) -> list[str]:
    """The trackers ``--report-to`` names, once each; ``none`` means none.

    >>> chosen(["wandb", "none", "wandb", "mlflow"])
    ['wandb', 'mlflow']
    """
    return list(dict.fromkeys(n for n in names or () if n != "none"))


def check(names: list[str] | tuple = ()) -> None:
    """Refuse, before anything is written, trackers that are not known or whose library is not installed, and a
    W&B that would ask for a login it cannot get. ``none`` (or nothing) means no tracker."""
    names = chosen(names)
    for name in names:
        if name not in TRACKERS:
            raise TrackerError(f"--report-to {name}: not a tracker r1lab knows; use {', '.join(TRACKERS)} or none")
        if importlib.util.find_spec(PACKAGES[name]) is None:
            raise ImportError(f"--report-to {name}: the {PACKAGES[name]} package is not installed; pip install "
                              f"'r1lab[tracking]' (or pip install {_pip_name(name)}), or drop --report-to {name}")
    for name, ready in (("wandb", _check_wandb_login), ("mlflow", _check_mlflow_store),
                        ("trackio", _check_trackio_remote)):
        if name not in names:
            continue
        try:
            ready()
        except (TrackerError, ImportError):
            raise
        except Exception as e:  # the library's own refusal (a setting it cannot take): one line that names it
            raise TrackerError(f"--report-to {name}: {name} refuses its settings ({type(e).__name__}: "
                               f"{_first_line(e)}); check its environment variables, or drop --report-to {name}") \
                from e


class Trackers:
    """The trackers of one run, all logged to at once; one that fails is dropped with a warning."""

    def __init__(self, runs: dict, folder: Path):
        self.runs = runs  # name -> an open tracker run (the classes below)
        self.folder = folder
        self.finished = False
        if runs:
            _OPEN.append(self)

    def log(self, record: dict, step: int, section: str = "train") -> None:
        """A ``metrics.jsonl`` row (or any record of numbers) at ``step``."""
        values = scalars(record, section)
        if values:
            self._each("log", values, step)

    def finish(self, ok: bool = True) -> None:
        """Upload the run's plots, report, summary and settings where the tracker keeps files, and close its run
        (``ok=False``: marked as failed)."""
        if self.finished:
            return
        self.finished = True
        if ok:
            files = sorted({p for pattern in ARTIFACTS for p in self.folder.glob(pattern) if p.is_file()})
            self._each("files", files, self.folder)
        self._each("finish", ok)
        if self in _OPEN:
            _OPEN.remove(self)

    def _each(self, method: str, *args) -> None:
        for name, tracker in list(self.runs.items()):
            try:
                getattr(tracker, method)(*args)
            except Exception as e:  # a tracker must never stop training: warn once, go on without it
                log(f"r1lab: warning: {name} stopped logging ({type(e).__name__}: {_first_line(e)}); the run goes "
                    f"on without it (metrics.jsonl has every step)")
                del self.runs[name]
                if method != "finish":
                    _quietly(tracker.finish, False)  # its run marked failed where it still can be


NONE = Trackers({}, Path("."))  #: no tracker (also what every process but rank 0 holds)
_OPEN: list[Trackers] = []


def start(names: list[str] | tuple, folder: Path, cfg, *, name: str = "", group: str = "",
          resume_step: int | None = None, main: bool = True) -> Trackers:
    """Open a run in each tracker of ``names`` for the run in ``folder`` (its settings: ``cfg``, a config
    dataclass), named ``name`` (default: the folder's name) and grouped under ``group``; a resumed run
    (``resume_step``: the last step it keeps) continues the tracker runs ``trackers.json`` names. Any tracker that
    cannot start is an error (ValueError) before anything trains; none is opened off the main process."""
    folder = Path(folder)
    saved = _read_state(folder) if resume_step is not None else {}
    names = chosen([*names, *saved])  # a resumed run goes on in the trackers it logged to, and any added now
    if not names or not main:
        return NONE
    check(names)
    for earlier in [t for t in _OPEN if t.folder.resolve() == folder.resolve()]:
        earlier.finish(ok=False)  # the same run, cut off earlier in this process (a resume after Ctrl-C)
    made = [p for p in (folder, *folder.parents) if not p.exists()]  # the folders this call creates
    folder.mkdir(parents=True, exist_ok=True)
    before = set(folder.iterdir())
    state_before = (folder / STATE_FILE).read_text() if (folder / STATE_FILE).is_file() else None
    name = name or folder.resolve().name
    params = parameters(cfg)
    runs = {}
    try:
        for tracker in names:
            runs[tracker] = OPENERS[tracker](folder, name, group, params, saved.get(tracker), resume_step)
            saved[tracker] = runs[tracker].state()
            write_json(folder / STATE_FILE, saved)
    except Exception as e:
        for opened in runs.values():
            _quietly(opened.finish, False)
        for new in set(folder.iterdir()) - before:  # what the trackers wrote just now, so the same command can
            shutil.rmtree(new) if new.is_dir() else new.unlink()  # start again once the problem is fixed
        if state_before is not None:
            write_atomic(folder / STATE_FILE, state_before)  # the runs a resume continues, as they were
        for empty in made:  # innermost first; a folder that holds anything is kept
            if empty.is_dir() and not any(empty.iterdir()):
                empty.rmdir()
        if isinstance(e, TrackerError) or isinstance(e, ImportError) and str(e).startswith("--report-to"):
            raise
        raise TrackerError(f"--report-to {tracker}: it could not start a run ({type(e).__name__}: "
                           f"{_first_line(e)}); fix that, or drop --report-to {tracker}") from e
    log(f"tracking: {', '.join(f'{t} ({r.where()})' for t, r in runs.items())}")
    return Trackers(runs, folder)


def is_tracker_file(path: Path) -> bool:
    """A file or folder the trackers write in a run's folder (a run that stopped before its first step may hold
    these beside its ``config.yaml`` and still be started again)."""
    name = Path(path).name
    return name in (STATE_FILE, "wandb") or name.startswith("events.out.tfevents.")


def finish_open(ok: bool = False) -> None:
    """Close every tracker run still open in this process (a command that ended in an error or Ctrl-C: marked
    failed). The command line calls it before the trackers' own exit handlers run."""
    for trackers in list(_OPEN):
        trackers.finish(ok=ok)


def _quietly(call, *args) -> None:
    try:
        call(*args)
    except Exception:
        pass


atexit.register(finish_open)  # a run that ended in an error: its tracker runs closed as failed, not left running


def _read_state(folder: Path) -> dict:
    path = folder / STATE_FILE
    if not path.is_file():
        return {}
    try:
        state = json.loads(path.read_text())
    except ValueError:
        raise ValueError(f"{path} is not JSON; restore it, or remove it to start new tracker runs") from None
    return state if isinstance(state, dict) else {}


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [""])[0][:300]


def _pip_name(name: str) -> str:
    return "mlflow-skinny" if name == "mlflow" else name


def _project(variable: str) -> str:
    return os.environ.get(variable) or DEFAULT_PROJECT


def _flat(params: dict, prefix: str = "") -> dict[str, str]:
    """Nested settings as ``a.b: value`` strings (MLflow's parameters are flat strings).

    >>> _flat({"rewards": {"accuracy": 1.0}, "stop": ["</answer>"], "lora_r": 0})
    {'rewards.accuracy': '1.0', 'stop': '["</answer>"]', 'lora_r': '0'}
    """
    out = {}
    for key, value in params.items():
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value if isinstance(value, str) else to_json(value)
    return out


# ------------------------------------------------------------------------------------------ the trackers
class TensorBoard:
    """Event files in the run's own folder, so ``tensorboard --logdir runs`` shows every run by its folder's name;
    a resumed run drops what was logged past its checkpoint (``purge_step``)."""

    def __init__(self, folder, name, group, params, saved, resume_step):
        from torch.utils.tensorboard import SummaryWriter

        self.folder = folder
        self.writer = SummaryWriter(log_dir=str(folder), purge_step=None if resume_step is None else resume_step + 1)
        if resume_step is None:
            self.writer.add_text("config", "```yaml\n" + yaml.safe_dump(params, sort_keys=False) + "```", 0)

    def state(self) -> dict:
        return {"logdir": "."}

    def where(self) -> str:
        return f"tensorboard --logdir {self.folder}"

    def log(self, values: dict, step: int) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def files(self, paths: list[Path], folder: Path) -> None:
        from matplotlib.image import imread

        for path in paths:
            if path.suffix == ".png":
                self.writer.add_image(str(path.relative_to(folder).with_suffix("")), imread(path)[..., :3], 0,
                                      dataformats="HWC")
            elif path.name == "report.md":
                self.writer.add_text("report", path.read_text(encoding="utf-8"), 0)

    def finish(self, ok: bool) -> None:
        self.writer.close()


def plot_images(paths: list[Path], image) -> dict:
    """The run's PNG plots as a tracker's images (``image``: its Image class), named ``plots/NAME``."""
    return {f"plots/{p.stem}": image(str(p)) for p in paths if p.suffix == ".png"}


class WandB:
    """A W&B run (offline with ``WANDB_MODE=offline``: ``wandb sync`` uploads it later), its files under the run
    folder's ``wandb/``."""

    def __init__(self, folder, name, group, params, saved, resume_step):
        import wandb

        self.id = (saved or {}).get("id") or secrets.token_hex(4)  # W&B's own ids are 8 characters too
        self.run = wandb.init(project=_project("WANDB_PROJECT"), name=name, group=group or None, config=params,
                              id=self.id, resume="allow", dir=str(folder), reinit="create_new",
                              settings=wandb.Settings(silent=True, console="off", disable_git=True,
                                                      x_disable_stats=True))  # only what metrics.jsonl has

    def state(self) -> dict:
        return {"id": self.id, "project": self.run.project}

    def where(self) -> str:
        return f"{self.run.project}/{self.id}" + (" offline" if self.run.offline else "")

    def log(self, values: dict, step: int) -> None:
        self.run.log(values, step=step)

    def files(self, paths: list[Path], folder: Path) -> None:
        import wandb

        if images := plot_images(paths, wandb.Image):
            self.run.log(images)
        for path in paths:
            if path.suffix != ".png":
                self.run.save(str(path), base_path=str(folder), policy="now")

    def finish(self, ok: bool) -> None:
        import wandb

        try:
            self.run.finish(exit_code=0 if ok else 1)
        finally:
            if getattr(wandb, "run", None) is None:  # no other W&B run in this process (a user's own)
                _quietly(wandb.teardown)  # its service process ends with the run (the next run starts another)


class Trackio:
    """A trackio run, in its local database (``TRACKIO_DIR``) unless a Space is configured."""

    def __init__(self, folder, name, group, params, saved, resume_step):
        import trackio

        self.project = (saved or {}).get("project") or _project("TRACKIO_PROJECT")
        # trackio resumes a run by its name: a new run takes a name no run of the project has yet
        self.name = (saved or {}).get("name") or _unused_name(name, _trackio_runs(self.project))
        self.run = trackio.init(project=self.project, name=self.name, group=group or None, config=params,
                                resume="allow" if saved else "never", auto_log_cpu=False, auto_log_gpu=False)

    def state(self) -> dict:
        return {"project": self.project, "name": self.name}

    def where(self) -> str:
        return f"project {self.project}, run {self.name}"

    def log(self, values: dict, step: int) -> None:
        self.run.log(values, step=step)

    def files(self, paths: list[Path], folder: Path) -> None:
        import trackio

        if images := plot_images(paths, trackio.Image):
            self.run.log(images)

    def finish(self, ok: bool) -> None:
        import trackio

        trackio.finish()


def _trackio_runs(project: str) -> set[str]:
    import trackio

    try:
        return {run.name for run in trackio.Api().runs(project)}
    except Exception:  # no such project yet
        return set()


def _unused_name(name: str, taken: set[str]) -> str:
    """``name``, or ``name-2``, ``name-3``... if it is taken.

    >>> _unused_name("zero", {"zero", "zero-2"}), _unused_name("sft", set())
    ('zero-3', 'sft')
    """
    n = 2
    candidate = name
    while candidate in taken:
        candidate, n = f"{name}-{n}", n + 1
    return candidate


class MLflow:
    """An MLflow run through ``MlflowClient`` (no global active run, so a pipeline's stages cannot mix): in
    ``MLFLOW_TRACKING_URI``, else MLflow's own default (``sqlite:///mlflow.db`` in the working folder, artifacts
    in ``./mlruns``); a pipeline's stages carry its group as the tag ``r1lab.group``."""

    def __init__(self, folder, name, group, params, saved, resume_step):
        import mlflow
        from mlflow import MlflowClient

        # a server that stops answering mid-run costs at most about a minute before the run goes on without it
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
        # MLFLOW_TRACKING_URI, or MLflow's own default; kept absolute, so a resume from another folder finds it
        self.uri = (saved or {}).get("tracking_uri") or absolute_uri(mlflow.get_tracking_uri())
        self.client = MlflowClient(self.uri)
        if saved and saved.get("run_id"):
            self.run_id = saved["run_id"]
            self.client.update_run(self.run_id, status="RUNNING")
            return
        experiment = _project("MLFLOW_EXPERIMENT_NAME")
        found = self.client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found else self.client.create_experiment(experiment)
        tags = {"r1lab.group": group} if group else {}
        self.run_id = self.client.create_run(experiment_id, run_name=name, tags=tags).info.run_id
        from mlflow.entities import Param

        flat = list(_flat(params).items())
        for i in range(0, len(flat), 100):  # MLflow takes at most 100 parameters a call
            self.client.log_batch(self.run_id, params=[Param(k, v[:6000]) for k, v in flat[i:i + 100]])

    def state(self) -> dict:
        return {"tracking_uri": self.uri, "run_id": self.run_id}

    def where(self) -> str:
        return f"{self.uri}, run {self.run_id}"

    def log(self, values: dict, step: int) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(mlflow_key(k), v, now, step) for k, v in values.items()])

    def files(self, paths: list[Path], folder: Path) -> None:
        for path in paths:
            parent = path.relative_to(folder).parent
            self.client.log_artifact(self.run_id, str(path), None if str(parent) == "." else str(parent))

    def finish(self, ok: bool) -> None:
        self.client.set_terminated(self.run_id, "FINISHED" if ok else "FAILED")


def absolute_uri(uri: str) -> str:
    """A local MLflow store's address with its path made absolute (other addresses as they are).

    >>> absolute_uri("sqlite:////tmp/m.db"), absolute_uri("http://h:5000")
    ('sqlite:////tmp/m.db', 'http://h:5000')
    >>> absolute_uri("sqlite:///m.db") == "sqlite:///" + str(Path("m.db").resolve())
    True
    """
    scheme = urlsplit(uri).scheme
    if scheme == "sqlite" and uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(uri[len("sqlite:///"):]).resolve())
    if scheme == "":
        return Path(uri).resolve().as_uri()
    if scheme == "file" and not uri.startswith("file:///"):
        return Path(uri[len("file:"):]).resolve().as_uri()  # file:./mlruns
    return uri


def mlflow_key(key: str) -> str:
    """MLflow's name of a metric: letters, digits and ``_-. /:`` only (``@`` is spelled ``_at_``), and below its
    section (``train/``, ``eval/``) dots for slashes, since a file store keeps each metric in a file of that path and
    ``train/reward`` would leave no folder for ``train/reward/accuracy``.

    >>> mlflow_key("eval/gsm8k/pass@1"), mlflow_key("train/reward/accuracy"), mlflow_key("train/reward")
    ('eval/gsm8k.pass_at_1', 'train/reward.accuracy', 'train/reward')
    """
    section, _, rest = key.replace("@", "_at_").partition("/")
    return re.sub(r"[^\w\-. /:]", "_", f"{section}/{rest.replace('/', '.')}" if rest else section)


#: the values W&B takes for WANDB_MODE (it refuses any other spelling)
WANDB_MODES = ("online", "offline", "disabled", "dryrun", "run", "shared")


def _check_wandb_login() -> None:
    """W&B online needs a login (with none it would stop to ask, or fail after starting) and its server."""
    mode = os.environ.get("WANDB_MODE")
    if mode is not None and mode not in WANDB_MODES:
        raise TrackerError(f"--report-to wandb: WANDB_MODE={mode!r} is not a mode W&B takes; use one of "
                           f"{', '.join(WANDB_MODES)} (lower case), e.g. WANDB_MODE=offline")
    if mode in ("offline", "disabled", "dryrun"):
        return
    import wandb

    if not wandb.login(prompt=False, verify=False):
        raise TrackerError("--report-to wandb: not logged in to W&B (no WANDB_API_KEY, no `wandb login`); log in, or "
                         "set WANDB_MODE=offline to keep the run on disk and `wandb sync` it later")
    base_url = os.environ.get("WANDB_BASE_URL") or wandb.Settings().base_url
    if problem := _unreachable(base_url):
        raise TrackerError(f"--report-to wandb: the W&B server {base_url} does not answer ({problem}); check the "
                         "network, or set WANDB_MODE=offline to keep the run on disk and `wandb sync` it later")


def _check_mlflow_store() -> None:
    """MLflow's store must be one it can open: a file store only where MLflow is told to allow it (MLflow 3 refuses
    it otherwise), a database with SQLAlchemy and Alembic installed, a server that answers. (A server out of reach
    would otherwise cost minutes of MLflow's retries before its error.)"""
    import mlflow

    uri = mlflow.get_tracking_uri()
    scheme = urlsplit(uri).scheme
    if scheme in ("", "file") and os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() not in ("1", "true"):
        raise TrackerError(f"--report-to mlflow: MLflow 3 refuses a file store ({uri}); use a database "
                         "(MLFLOW_TRACKING_URI=sqlite:///mlflow.db, the default) or set MLFLOW_ALLOW_FILE_STORE=true")
    if scheme.split("+")[0] in ("sqlite", "postgresql", "mysql", "mssql"):
        missing = [m for m in ("sqlalchemy", "alembic") if importlib.util.find_spec(m) is None]
        if missing:
            raise ImportError(f"--report-to mlflow: the store {uri} needs {' and '.join(missing)}; pip install "
                              "'r1lab[mlflow]'")
    if scheme in ("http", "https") and (problem := _unreachable(uri.rstrip("/") + "/health")):
        raise TrackerError(f"--report-to mlflow: the tracking server {uri} does not answer ({problem}); start it, "
                         "or point MLFLOW_TRACKING_URI at a local store (sqlite:///mlflow.db)")


def _check_trackio_remote() -> None:
    """trackio logs to a Space or a server only where one is configured; that one must answer."""
    target = os.environ.get("TRACKIO_SERVER_URL") or ("https://huggingface.co" if os.environ.get("TRACKIO_SPACE_ID")
                                                       else None)
    if target and (problem := _unreachable(target)):
        raise TrackerError(f"--report-to trackio: {target} does not answer ({problem}); unset TRACKIO_SPACE_ID / "
                         "TRACKIO_SERVER_URL to log to trackio's local database")


def _unreachable(url: str, timeout: float = 5.0) -> str | None:
    """Why ``url`` gives no HTTP answer within ``timeout`` seconds (any HTTP status is an answer); None if it does."""
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(url, timeout=timeout).close()
    except urllib.error.HTTPError:
        return None
    except Exception as e:
        return f"{type(e).__name__}: {getattr(e, 'reason', e)}"
    return None


OPENERS = {"tensorboard": TensorBoard, "wandb": WandB, "trackio": Trackio, "mlflow": MLflow}
