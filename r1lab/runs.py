"""Run folders: which command owns one (its ``config.yaml``, headed ``# r1lab COMMAND``), and the settings a
resumed run must keep. A setting added to a config class after a run was saved counts as its default, so older
runs stay resumable."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import yaml

from r1lab.config import RUN_CONFIGS, command_of, make_config

#: what a resumed run may change; every other setting must be the one the run was started with
#: out: the same folder, named another way (or moved); where and how precisely it computes is not what the run is
#: report_to, run_name, report_group: where the run is also logged, not what it computes
RESUME_MAY_CHANGE = ("resume", "threads", "nproc", "out", "device", "dtype", "gradient_checkpointing", "engine",
                     "engine_args", "report_to", "run_name", "report_group")


def values_for_resume(cls, values: dict, out_default: str | None = None) -> dict:
    """For ``--resume``: the run's saved settings with the given ones over them. A given setting that differs
    from the saved one (other than :data:`RESUME_MAY_CHANGE`) is refused, naming each."""
    run = Path(values.get("out", out_default or cls().out))
    check_run_folder(run, cls)
    saved_path = run / "config.yaml"
    if not saved_path.is_file():
        if run.is_dir() and any(run.iterdir()):
            raise ValueError(f"--resume: {run} has no config.yaml, so the run's settings are unknown; restore it "
                             "from a backup, or start a new run in another --out")
        raise ValueError(f"--resume: there is no run in {run} to resume; check --out, or drop --resume to start one")
    given = make_config(cls, dict(values), validate=False)  # compare only what was given; the whole is checked later
    check_same_config(given, saved_path, ignore=RESUME_MAY_CHANGE, only=values, now_word="given now")
    return {**_saved_settings(cls, saved_path), **values}


def check_same_config(cfg, path: Path, ignore: tuple = (), only=None, now_word: str = "now") -> None:
    """Refuse to continue a run saved in ``path`` with settings other than its own (``ignore`` may differ;
    ``only``, if given, names the settings to compare). A setting the saved file lacks is its default."""
    saved = _saved_settings(type(cfg), path)
    default = type(cfg)()
    names = [f.name for f in dataclasses.fields(cfg) if (only is None or f.name in only) and f.name not in ignore]
    refuse_changed(path.parent, {name: saved.get(name, _normal(getattr(default, name))) for name in names},
                   {name: _normal(getattr(cfg, name)) for name in names}, names,
                   f"To continue it, drop those flags (the run's own settings are read from {path}); for a new run "
                   "with these settings, choose another --out", now_word=now_word)


def refuse_changed(where: Path, saved: dict, now: dict, keys, hint: str, *, what: str = "a run started",
                   now_word: str = "now", as_flags: bool = False) -> None:
    """Refuse to add to what ``where`` holds when ``saved`` and ``now`` differ in any of ``keys``: one ValueError
    naming each difference, then ``hint`` (what to do instead).

    >>> refuse_changed(Path("runs/a"), {"seed": 0, "lr": 1}, {"seed": 7, "lr": 1}, ["seed", "lr"],
    ...                "Use another --out.", what="samples made")
    Traceback (most recent call last):
    ...
    ValueError: runs/a holds samples made with other settings (seed: 0 there, 7 now). Use another --out.
    """
    changed = [key for key in keys if saved.get(key) != now.get(key)]
    if changed:
        diff = "; ".join(f"{'--' + key.replace('_', '-') if as_flags else key}: {saved.get(key)!r} there, "
                         f"{now.get(key)!r} {now_word}" for key in changed)
        raise ValueError(f"{where} holds {what} with other settings ({diff}). {hint}")


def read_saved_config(path: Path) -> dict:
    """A run's ``config.yaml``; one clear error if it is not a YAML mapping of settings."""
    try:
        saved = yaml.safe_load(Path(path).read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ValueError(f"{path} cannot be read ({getattr(e, 'problem', None) or e}); restore it, or choose "
                         "another --out") from None
    if not isinstance(saved, dict) or not saved:
        raise ValueError(f"{path} does not hold a run's settings (a YAML mapping); restore it, or choose another "
                         "--out")
    return saved


def check_run_folder(out: str | Path, cls) -> None:
    """Refuse an ``--out`` that is not a folder, or that holds another command's run (each command's
    ``config.yaml`` says which command wrote it), so no command writes over what another wrote."""
    out = Path(out)
    if out.exists() and not out.is_dir() or out.is_symlink() and not out.exists():
        raise ValueError(f"--out {out} is a file (or a broken link), not a folder; choose a folder")
    if any(p.exists() and not p.is_dir() for p in out.parents):
        raise ValueError(f"--out {out}: a part of that path is a file; choose a folder")
    saved = out / "config.yaml"
    if not saved.is_file():
        return
    owner = _owner(saved)
    if owner != command_of(cls):
        raise ValueError(f"{out} holds an `r1lab {owner}` run, not an `r1lab {command_of(cls)}` one; choose "
                         "another --out (r1lab never writes into another command's run)")


def _owner(path: Path) -> str:
    first = Path(path).read_text(errors="replace").split("\n", 1)[0]
    if first.startswith("# r1lab "):
        return first.split()[2]
    keys = set(read_saved_config(path))  # written before the header existed: the class whose fields match
    best = max(RUN_CONFIGS, key=lambda c: len(keys & {f.name for f in dataclasses.fields(c)}) / len(keys | {
        f.name for f in dataclasses.fields(c)}))
    return command_of(best)


def _saved_settings(cls, path: Path) -> dict:
    saved = read_saved_config(path)
    known = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in saved.items() if k in known}


def _normal(value):
    return yaml.safe_load(yaml.safe_dump(value))
