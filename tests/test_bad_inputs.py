"""The bad-input corpus (tests/data/bad/cases.yaml) through the real CLI (issue 21, "Reliability").

Each case is the good baseline (the tiny real slice of data/sample) with one thing wrong. It either
succeeds with a warning that counts what was skipped, or stops with exit code 2 and one `error:` line
naming the file, the column and the first bad rows. Never a traceback, never a partial output. Cases
marked `subprocess` run again as a real `recsys` process. docs/reliability.md ("Bad input") lists them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import yaml
from typer.testing import CliRunner

from recsys.cli import app
from recsys.paths import repo_root
from tiny_settings import cli_overrides

BAD = Path(__file__).resolve().parent / "data" / "bad"
CASES: list[dict] = yaml.safe_load((BAD / "cases.yaml").read_text())
DOC = repo_root() / "docs" / "reliability.md"
N_ITEMS = 120  # tiny_data's catalog

FAST = cli_overrides(tracking__enabled=False)
DEFAULT_FORMAT = {"catalog": "parquet", "interactions": "csv", "users": "csv", "candidates": "csv"}
INPUTS = tuple(DEFAULT_FORMAT)
FILLER = "A long plot summary that goes on and on about the film and its characters. "

runner = CliRunner()


def _case_id(case: dict) -> str:
    return case["id"]


# --- building one case's files ---------------------------------------------------------------------

def _set(df: pl.DataFrame, column: str, rows: list[int], value) -> pl.DataFrame:
    if isinstance(value, dict):  # {chars: N}: an N-character text
        value = (FILLER * (value["chars"] // len(FILLER) + 1))[: value["chars"]]
    dtype = df.schema[column]
    if isinstance(value, str) and dtype != pl.String:  # a CSV column with one word in it is text
        df = df.with_columns(pl.col(column).cast(pl.String))
    elif isinstance(value, float) and not dtype.is_float():
        df = df.with_columns(pl.col(column).cast(pl.Float64))
    hit = pl.int_range(pl.len()).is_in(rows)
    return df.with_columns(
        pl.when(hit).then(pl.lit(value, dtype=df.schema[column])).otherwise(pl.col(column)).alias(column)
    )


def _one_interaction(df: pl.DataFrame, n_users: int) -> pl.DataFrame:
    """The first `n_users` users keep only their earliest interaction."""
    users = df["user_id"].unique().sort().head(n_users).implode()
    first = pl.col("__i") == pl.col("__i").sort_by(["timestamp", "__i"]).first().over("user_id")
    return df.with_row_index("__i").filter(~pl.col("user_id").is_in(users) | first).drop("__i")


def _image(df: pl.DataFrame, row: int, make: str, folder: Path) -> pl.DataFrame:
    if make == "missing":
        value = "does-not-exist.jpg"
    elif make == "directory":
        (folder / "a-folder").mkdir()
        value = "a-folder"
    elif make == "truncated":
        poster = Path(df["image"][row]).read_bytes()
        (folder / "truncated.jpg").write_bytes(poster[: len(poster) // 2])
        value = "truncated.jpg"
    else:
        raise ValueError(f"unknown image change {make!r}")
    return _set(df, "image", [row], value)


def _apply(df: pl.DataFrame, spec: dict, folder: Path) -> pl.DataFrame:
    if "drop" in spec:
        df = df.drop(spec["drop"])
    if "rename" in spec:
        df = df.rename(spec["rename"])
    for column, copy in spec.get("copy", {}).items():
        df = df.with_columns(pl.col(column).alias(copy))
    for column, dtype in spec.get("cast", {}).items():
        df = df.with_columns(pl.col(column).cast(getattr(pl, dtype)))
    if "set" in spec:
        df = _set(df, spec["set"]["column"], spec["set"]["rows"], spec["set"]["value"])
    if "duplicate" in spec:
        dup = spec["duplicate"]
        df = _set(df, dup["column"], [dup["row"]], df[dup["column"]][dup["of"]])
    if "head" in spec:
        df = df.head(spec["head"])
    if "scale" in spec:
        df = df.with_columns(pl.col(spec["scale"]["column"]) * spec["scale"]["by"])
    if "one_interaction" in spec:
        df = _one_interaction(df, spec["one_interaction"])
    if "image" in spec:
        df = _image(df, spec["image"]["row"], spec["image"]["make"], folder)
    return df


def _csv_text(df: pl.DataFrame) -> str:
    lists = [c for c, t in df.schema.items() if isinstance(t, pl.List)]
    return df.with_columns(pl.col(c).list.join("|") for c in lists).write_csv()


def write_input(name: str, frame: pl.DataFrame, spec: dict | None, folder: Path) -> Path:
    """`frame` (a baseline input) changed as `spec` says, written as the file the CLI reads."""
    spec = spec or {}
    if "file" in spec:
        source = BAD / "files" / spec["file"]
        path = folder / f"{name}{source.suffix}"
        shutil.copyfile(source, path)
        return path
    fmt = spec.get("format", DEFAULT_FORMAT[name])
    df = _apply(frame, spec, folder)
    path = folder / f"{name}.{fmt}"
    if fmt == "csv":
        path.write_bytes(_csv_text(df).encode(spec.get("encoding", "utf-8")))
    else:
        df.write_parquet(path)
    if spec.get("bytes") == "truncate":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    return path


# --- read-only folders -----------------------------------------------------------------------------

def _chmod_binds(folder: Path) -> bool:
    """Whether a 0o555 folder really refuses this process (it does not for root)."""
    probe = folder / ".probe"
    try:
        probe.write_text("x")
    except OSError:
        return True
    probe.unlink()
    return False


def _can_mount_readonly() -> bool:
    """`unshare -rm` gives a private mount namespace where a read-only bind mount needs no privilege."""
    if shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode == 0


READONLY_SH = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" "$0" && exec "$@"'


# --- running ---------------------------------------------------------------------------------------

class Run:
    def __init__(self, code: int, stdout: str, stderr: str, logs: str = "") -> None:
        self.code, self.stdout, self.stderr, self.logs = code, stdout, stderr, logs

    @property
    def everything(self) -> str:
        return self.stdout + self.stderr + self.logs


def _recsys_command() -> list[str]:
    script = Path(sys.executable).with_name("recsys")
    return [str(script)] if script.exists() else [sys.executable, "-m", "recsys.cli"]


def run_subprocess(args: list[str], readonly: Path | None = None) -> Run:
    """`recsys ARGS` as a user runs it; this checkout's code first on the path (the shared virtualenv's
    editable install may point at another one). With `readonly`, that folder is a read-only mount."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(repo_root()), os.environ.get("PYTHONPATH")]))}
    command = _recsys_command() + args
    if readonly is not None:
        command = ["unshare", "-rm", "sh", "-c", READONLY_SH, str(readonly), *command]
    proc = subprocess.run(command, capture_output=True, text=True, env=env, cwd=repo_root(), timeout=600)
    return Run(proc.returncode, proc.stdout, proc.stderr)


def run_in_process(args: list[str], caplog) -> Run:
    caplog.clear()
    result = runner.invoke(app, args, catch_exceptions=False, env={"COLUMNS": "200"}, terminal_width=200)
    return Run(result.exit_code, result.stdout, result.stderr, caplog.text)


@pytest.fixture(scope="module")
def baseline(tiny_data) -> dict[str, pl.DataFrame]:
    """The good inputs every case changes in one way."""
    catalog, interactions = tiny_data
    users = interactions["user_id"].unique().sort().head(10)
    return {
        "catalog": catalog,
        "interactions": interactions.select("user_id", "item_id", "timestamp", "rating"),
        "users": pl.DataFrame({"user_id": users}),
        "candidates": catalog.select("item_id").head(60),
    }


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> Path:
    """The embedding cache every case shares (the baseline's items are embedded once)."""
    return tmp_path_factory.mktemp("bad-shared")


def _data_args(command: str, paths: dict[str, Path], out: Path, shared: Path, work: Path) -> list[str]:
    common = ["--catalog", str(paths["catalog"]), "--interactions", str(paths["interactions"]), "-q",
              "-s", f"encoders.cache_dir={shared / 'cache'}", *FAST]
    if command == "train":
        return ["train", *common, "--out", str(out), "--no-register", "-s", f"output_dir={work}"]
    return ["embed", *common, "-s", f"output_dir={out}"]


@pytest.fixture(scope="module")
def bundle(baseline, shared) -> Path:
    """One bundle trained on the baseline through the CLI, for every `recommend` case (and the proof
    that the baseline itself is good input)."""
    folder = shared / "baseline"
    folder.mkdir()
    paths = {name: write_input(name, baseline[name], None, folder) for name in ("catalog", "interactions")}
    out = folder / "bundle"
    result = runner.invoke(app, _data_args("train", paths, out, shared, folder / "work"), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return out


def _output(case: dict, folder: Path) -> tuple[Path, Path | None]:
    """(the output path the command gets, the folder to make read-only if any)."""
    name = {"train": "bundle", "embed": "out", "recommend": "recs.parquet"}[case["command"]]
    where = case.get("out")
    if where is None:
        return folder / name, None
    if where == "missing_dir":
        return folder / "missing" / "deeper" / name, None
    if where == "parent_is_file":
        (folder / "a-file").write_text("not a folder\n")
        return folder / "a-file" / name, None
    if where == "is_a_folder":
        (folder / name).mkdir()
        return folder / name, None
    if where == "readonly_dir":
        (folder / "readonly").mkdir()
        return folder / "readonly" / name, folder / "readonly"
    raise ValueError(f"unknown out {where!r}")


def _prepare(case: dict, folder: Path, baseline, shared: Path, bundle_path: Path | None):
    inputs = [n for n in INPUTS if n in case]
    if case["command"] == "recommend":
        needed = ["users", *(["candidates"] if "candidates" in case else [])]
    else:
        needed = ["catalog", "interactions"]
    assert set(inputs) <= set(needed), f"{case['id']}: {inputs} are not inputs of {case['command']}"
    paths = {name: write_input(name, baseline[name], case.get(name), folder) for name in needed}
    out, readonly = _output(case, folder)
    if case["command"] == "recommend":
        args = ["recommend", "--bundle", str(bundle_path), "--users", str(paths["users"]), "--out", str(out), "-q"]
        if "candidates" in paths:
            args += ["--candidates", str(paths["candidates"])]
    else:
        args = _data_args(case["command"], paths, out, shared, folder / "work")
    return args + [str(a) for a in case.get("args", [])], out, readonly


def _written(case: dict, out: Path) -> Path:
    """The file or folder the command writes (embed: the features file in its output folder)."""
    return out / "item_features.npz" if case["command"] == "embed" else out


def check_outcome(case: dict, run: Run, out: Path, existed: bool = False) -> None:
    assert "Traceback" not in run.everything, run.everything
    assert run.code == case["exit"], run.everything
    written = _written(case, out)
    if case["exit"] != 0:
        if existed:  # what was there before is left as it was
            assert written.is_dir() and not any(written.iterdir()), f"{written} changed"
        else:
            assert not written.exists(), f"partial output left at {written}"
        if written.parent.is_dir():
            leftovers = [p.name for p in written.parent.iterdir() if p.name.startswith(f".{written.name}")]
            assert not leftovers, f"temporary files left: {leftovers}"
        if case.get("usage"):
            message = " ".join(run.stderr.split())  # click may wrap its panel
        else:
            errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
            assert len(errors) == 1, run.stderr
            message = errors[0]
    else:
        message = run.everything
    for expected in case["expect"]:
        assert expected in message, f"{expected!r} not in: {message}"
    if case["exit"] == 0:
        _check_success(case, written)


def _check_success(case: dict, written: Path) -> None:
    from recsys.encoders.features import ItemFeatures

    check = case.get("check")
    if check == "features":
        features = ItemFeatures.load(written)
        assert len(features) == N_ITEMS
        assert features.text_mask[3]  # the changed item (row 3) is embedded
        if features.image_mask is not None:  # the one bad image is masked, every other item has its poster
            assert not features.image_mask[3] and features.image_mask.sum() == N_ITEMS - 1
    elif check == "bundle":
        assert (written / "bundle.json").is_file()
    elif check == "recs_at_most_catalog":
        recs = pl.read_parquet(written)
        assert recs.height > 0
        assert recs.group_by("user_id").len()["len"].max() <= N_ITEMS
    else:
        raise AssertionError(f"{case['id']}: a success needs a check")


@pytest.fixture()
def prepared(request, baseline, shared, tmp_path):
    case = request.param
    bundle_path = request.getfixturevalue("bundle") if case["command"] == "recommend" else None
    args, out, readonly = _prepare(case, tmp_path, baseline, shared, bundle_path)
    if readonly is not None:
        readonly.chmod(0o555)
    yield case, args, out, readonly
    if readonly is not None:
        readonly.chmod(0o755)


@pytest.mark.parametrize("prepared", CASES, ids=_case_id, indirect=True)
def test_bad_input(prepared, caplog):
    case, args, out, readonly = prepared
    if readonly is not None and not _chmod_binds(readonly):
        pytest.skip("this process writes through folder permissions (root); the subprocess run mounts it read-only")
    existed = out.exists()
    check_outcome(case, run_in_process(args, caplog), out, existed)


SUBPROCESS_CASES = [c for c in CASES if c.get("subprocess")]


@pytest.mark.parametrize("prepared", SUBPROCESS_CASES, ids=_case_id, indirect=True)
def test_bad_input_as_a_process(prepared):
    case, args, out, readonly = prepared
    mount = None
    if readonly is not None and not _chmod_binds(readonly):
        if not _can_mount_readonly():
            pytest.skip("root ignores folder permissions and `unshare -rm` is not available for a read-only mount")
        mount = readonly
    existed = out.exists()
    run = run_subprocess(args, readonly=mount)
    check_outcome(case, run, out, existed)
    if case["exit"] != 0 and not case.get("usage"):
        other = [line for line in run.stderr.splitlines() if line.strip() and not line.startswith("error:")]
        assert all(" WARNING " in line or " INFO " in line for line in other), run.stderr  # logs, nothing else


def test_cases_are_unique_and_documented():
    ids = [c["id"] for c in CASES]
    assert len(ids) == len(set(ids))
    doc = DOC.read_text()
    section = doc[doc.index("## Bad input"):]
    missing = [i for i in ids if f"`{i}`" not in section]
    assert not missing, f"docs/reliability.md 'Bad input' does not list {missing}"
    assert all(c["exit"] in (0, 2) and ("check" in c) == (c["exit"] == 0) for c in CASES)


def test_checked_in_files_stay_tiny():
    sizes = {p.name: p.stat().st_size for p in (BAD / "files").iterdir()}
    assert sum(sizes.values()) + (BAD / "cases.yaml").stat().st_size < 16_000, sizes

