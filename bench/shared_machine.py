"""Benchmark: how much slower recsys's jobs get when they do not own the machine.

Why: batch jobs share nodes, and an OpenMP pool sized to the host's cores spins for cores that other
processes hold (recsys.runtime). Each workload runs as a real subprocess, as a user runs it, under three
conditions in the same run: alone; beside one single-threaded busy loop; beside a second copy of itself
(the figure is the mean of the two copies' wall times). Slowdown = wall time / wall time alone, where
"alone" is the mean of a run before and a run after the others (after an untimed warm-up run).

Workloads (`--sections`):
  train   `recsys train` on the demo config, 10 epochs (no early stop), embeddings cached, tracking off;
          also run with the code of `--before` (the commit before this change), for the same conditions
  batch   `recsys recommend` top-100 for every user of an ml-1m bundle (6,040 users), seen items excluded
  api     `recsys serve` on the demo bundle under a fixed open-loop load (bench/serving/loadtest.py's
          generator, 70% known-user GET, 30% anonymous-history POST); slowdown = p50 latency ratio
  demo    the whole demo job (`recsys run -c pipelines/configs/demo.yaml`: embed, train, index,
          recommend, evaluate, MLflow), each copy in its own scratch folder with a cold embedding cache
  recipe  idle-machine training time, before vs after, of the demo config and of ml-100k's recipe
          (`recsys train -c pipelines/configs/ml100k.yaml`); slow (about 20 min), so not in the default

Writes bench/results/shared_machine.json (sections not re-run are kept) and its section of
docs/benchmarks.md. Run: `python bench/shared_machine.py [--sections train,batch,api,demo] [--before REV]`.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench" / "serving"))

from bench.report import write_doc_section  # noqa: E402
from recsys.paths import shared_data_dir  # noqa: E402
from recsys.runtime import plan_threads  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "shared_machine.json"
DOC = ROOT / "docs" / "benchmarks.md"
BEFORE_DEFAULT = "9e645a5"  # the last commit before recsys.runtime and the training-step changes
DEMO = Path("pipelines/configs/demo.yaml")  # relative: each code tree runs its own copy of the config
ML100K = Path("pipelines/configs/ml100k.yaml")
BUSY_LOOP = "while True:\n    pass\n"
CONDITIONS = ("alone", "busy_loop", "second_copy")


def log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", flush=True)


# ---------------------------------------------------------------- running things


class CodeTree:
    """Where a workload's code comes from: this checkout, or a commit unpacked to a temporary folder
    (imported through PYTHONPATH ahead of the editable install, with the same interpreter)."""

    def __init__(self, rev: str | None, scratch: Path):
        self.rev = rev or "working tree"
        self.root = ROOT
        if rev is not None:
            self.root = scratch / f"code-{rev}"
            self.root.mkdir(parents=True)
            archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], check=True, capture_output=True).stdout
            tar_path = scratch / f"code-{rev}.tar"
            tar_path.write_bytes(archive)
            with tarfile.open(tar_path) as tar:
                tar.extractall(self.root, filter="data")

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_WAIT_POLICY", "_RECSYS_OMP_SET")}
        env.update(HF_HUB_OFFLINE="1", MLFLOW_DISABLE_TELEMETRY="true", TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(self.root))
        return env

    def recsys(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "recsys.cli", *args]

    def run(self, args: list[str], log_path: Path) -> float:
        """`recsys ARGS` from this tree's root: `python -m` puts the working directory first on the
        path, ahead of PYTHONPATH, so the root decides which code runs."""
        return run_timed(self.recsys(*args), self.env(), self.root, log_path)


def run_timed(cmd: list[str], env: dict[str, str], cwd: Path, log_path: Path) -> float:
    start = time.perf_counter()
    with open(log_path, "wb") as out:
        done = subprocess.run(cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {done.returncode}; see {log_path}")
    return seconds


def _die_with_parent() -> None:
    """Children get SIGKILL when the benchmark dies (Linux prctl PR_SET_PDEATHSIG): an orphaned busy
    loop would otherwise run on and skew every later measurement on the machine."""
    import ctypes
    import signal

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)


class BusyLoop:
    """One single-threaded process that never sleeps: the 'other job' on the machine."""

    def __enter__(self):
        self.proc = subprocess.Popen([sys.executable, "-c", BUSY_LOOP], preexec_fn=_die_with_parent)
        time.sleep(0.5)
        return self

    def __exit__(self, *exc):
        self.proc.kill()
        self.proc.wait()


def under_conditions(name: str, job: Callable[[str], float]) -> dict:
    """`job(tag)` -> seconds, alone, beside a busy loop, and as two concurrent copies."""
    out: dict = {}
    log(f"{name}: warm-up (untimed: file caches, first imports)")
    job("warmup")
    log(f"{name}: alone")
    first_alone = job("alone")
    log(f"{name}: beside a busy loop")
    with BusyLoop():
        out["busy_loop_s"] = job("busy")
    log(f"{name}: two copies at once")
    walls: list[float] = [0.0, 0.0]
    errors: list[BaseException] = []

    def copy(i: int) -> None:
        try:
            walls[i] = job(f"copy{i + 1}")
        except BaseException as err:  # noqa: BLE001 - re-raised below
            errors.append(err)

    threads = [threading.Thread(target=copy, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    log(f"{name}: alone again (the machine drifts; the mean of both is the reference)")
    out["alone_runs_s"] = [first_alone, job("alone2")]
    out["alone_s"] = sum(out["alone_runs_s"]) / 2
    out["second_copy_s"] = sum(walls) / 2
    out["second_copy_each_s"] = walls
    out["busy_loop_slowdown"] = round(out["busy_loop_s"] / out["alone_s"], 2)
    out["second_copy_slowdown"] = round(out["second_copy_s"] / out["alone_s"], 2)
    log(f"{name}: alone {out['alone_s']:.1f}s, busy loop x{out['busy_loop_slowdown']}, second copy x{out['second_copy_slowdown']}")
    return out


# ---------------------------------------------------------------- workloads


def train_args(bundle_dir: Path, features: Path, config: Path = DEMO, epochs: int | None = 10) -> list[str]:
    """`recsys train` on a config of the code tree it runs in (relative paths resolve from its root)."""
    args = ["train", "-c", str(config), "--out", str(bundle_dir), "--no-register", "-q",
            "--set", "tracking.enabled=false", "--set", f"encoders.cache_dir={features}"]
    if epochs is not None:
        args += ["--set", f"train.epochs={epochs}", "--set", "train.patience=1000"]
    return args


def warm_features(code: CodeTree, scratch: Path, config: Path = DEMO, data: list[str] | None = None) -> Path:
    """Embed once, so the timed runs measure training, not the frozen encoders."""
    features = scratch / "features"
    code.run(["embed", "-c", str(config), "-q", "--set", "tracking.enabled=false", "--set", f"encoders.cache_dir={features}",
              *(data or [])], scratch / "embed.log")
    return features


def section_train(scratch: Path, before: CodeTree, after: CodeTree) -> dict:
    features = warm_features(after, scratch)
    out = {"workload": "recsys train -c pipelines/configs/demo.yaml, 10 epochs, embeddings cached, tracking off"}
    for label, code in (("after", after), ("before", before)):
        def job(tag: str, code=code, label=label) -> float:
            work = scratch / f"train-{label}-{tag}"
            work.mkdir()
            return code.run(train_args(work / "bundle", features), work / "log.txt")

        out[label] = {"code": code.rev, **under_conditions(f"train ({label})", job)}
    return out


def demo_bundle(scratch: Path, code: CodeTree) -> Path:
    bundle = scratch / "demo-bundle"
    if not bundle.exists():
        log("training the demo bundle for the batch and API workloads")
        code.run(train_args(bundle, warm_features(code, scratch)), scratch / "bundle.log")
    return bundle


def ml1m_bundle(scratch: Path, code: CodeTree) -> Path:
    """A bundle over all 6,040 ml-1m users (1 epoch, text only: the batch job's cost does not depend
    on how well the model is trained)."""
    bundle = scratch / "ml1m-bundle"
    log("training a 1-epoch ml-1m bundle for the batch workload")
    args = train_args(bundle, scratch / "ml1m-features", epochs=1)
    args += ["--movielens", str(shared_data_dir() / "ml-1m"), "--set", "encoders.image.enabled=false"]
    code.run(args, scratch / "ml1m-bundle.log")
    return bundle


def section_batch(scratch: Path, after: CodeTree) -> dict:
    bundle = ml1m_bundle(scratch, after)

    def job(tag: str) -> float:
        return after.run(["recommend", "--bundle", str(bundle), "--k", "100", "--exclude-seen", "-q",
                          "--out", str(scratch / f"recs-{tag}.parquet")], scratch / f"recs-{tag}.log")

    return {"workload": "recsys recommend --k 100 --exclude-seen for all 6,040 users of an ml-1m bundle", **under_conditions("batch", job)}


def section_api(scratch: Path, after: CodeTree, rate: int, duration: int) -> dict:
    from loadtest import Server, run_open_loop

    bundle = demo_bundle(scratch, after)
    results: dict[str, dict] = {}

    def job(tag: str) -> float:
        server = Server(bundle, scratch / f"serve-{tag}.log")
        try:
            run_open_loop(server.url, bundle, rate, 3, seed=1)  # warm-up
            stats = run_open_loop(server.url, bundle, rate, duration, seed=0)
        finally:
            server.stop()
        results[tag] = {k: stats[k] for k in ("requests", "failures", "throughput_rps", "p50_ms", "p99_ms")}
        return stats["p50_ms"]

    out = under_conditions("api", job)
    renamed = {k.replace("_s", "_p50_ms") if k.endswith("_s") or k.endswith("_each_s") else k: v for k, v in out.items()}
    return {"workload": f"recsys serve on the demo bundle, open loop at {rate} requests/s for {duration}s",
            **renamed, "runs": results}


def section_demo(scratch: Path, after: CodeTree) -> dict:
    def job(tag: str) -> float:
        work = scratch / f"demo-{tag}"
        work.mkdir()
        return after.run(["run", "-c", str(DEMO), "-q", "--set", f"output_dir={work / 'out'}",
                          "--set", f"encoders.cache_dir={work / 'features'}",
                          "--set", f"tracking.tracking_uri=sqlite:///{work / 'mlflow.db'}"], work / "log.txt")

    return {"workload": "recsys run -c pipelines/configs/demo.yaml (the demo job: embed from a cold cache, train, "
                        "index, recommend, evaluate, MLflow)", **under_conditions("demo", job)}


def section_recipe(scratch: Path, before: CodeTree, after: CodeTree, save: Callable[[dict], None]) -> dict:
    """Idle training time, before vs after, interleaved so drift on the machine hits both alike.
    `save` receives the partial result after each config, so a stopped run keeps what it measured."""
    out: dict = {}
    for name, config, data in (("demo", DEMO, []), ("ml100k", ML100K, ["--movielens", str(shared_data_dir() / "ml-100k")])):
        features = warm_features(after, scratch, config, data)
        entry: dict = {"workload": f"recsys train -c {config} (its full recipe, early stopping on), "
                                   "embeddings cached, tracking off, machine otherwise idle"}
        for label, code in (("before", before), ("after", after)):
            work = scratch / f"recipe-{name}-{label}"
            work.mkdir()
            log(f"recipe {name}: {label}")
            seconds = code.run(train_args(work / "bundle", features, config, epochs=None) + data, work / "log.txt")
            meta = json.loads((work / "bundle" / "bundle.json").read_text())
            entry[label] = {"code": code.rev, "wall_s": round(seconds, 1), "valid": _valid_metric(meta)}
            log(f"recipe {name}: {label} {seconds:.0f}s, valid {entry[label]['valid']}")
        entry["speedup"] = round(entry["before"]["wall_s"] / entry["after"]["wall_s"], 2)
        out[name] = entry
        save(dict(out))
    return out


def _valid_metric(meta: dict) -> float | None:
    """The bundle's validation score (bundle.json `valid`: {"valid/ndcg_at_10": ...})."""
    values = list((meta.get("valid") or {}).values())
    return round(float(values[0]), 4) if values else None


# ---------------------------------------------------------------- report


def markdown(results: dict) -> str:
    lines = [f"On {results['machine']}. Each section's run (they ran one after another, nothing else on the machine):", ""]
    for key, entry in results["sections"].items():
        run = entry.get("run", {"date": results["date"], "command": results["command"]})
        lines.append(f"- {key}: {run['date']}, `{run['command']}`")
    lines.append("")
    rows = []
    for key, label in (("train", "training"), ("batch", "batch job"), ("demo", "demo job"), ("api", "API p50 latency")):
        entry = results["sections"].get(key)
        if not entry:
            continue
        for variant, data in ([("after", entry["after"]), ("before", entry["before"])] if key == "train" else [("", entry)]):
            unit = "ms" if key == "api" else "s"
            alone = data.get("alone_s", data.get("alone_p50_ms"))
            name = f"{label} ({variant}: {data['code']})" if variant else label
            rows.append(f"| {name} | {alone:.1f} {unit} | {data['busy_loop_slowdown']:.2f}x | {data['second_copy_slowdown']:.2f}x |")
    if rows:
        lines += ["| workload | alone | beside a busy loop | beside a second copy |", "|---|---:|---:|---:|", *rows, ""]
        lines += ["Targets: at most 1.5x beside a busy loop, 2.5x beside a second copy (the fair share of 2 cores is 2x).", ""]
    recipe = results["sections"].get("recipe")
    if recipe:
        lines += ["Idle-machine training time, the code before this change and after it, in the same run:", "",
                  "| config | before | after | speedup | validation before | validation after |", "|---|---:|---:|---:|---:|---:|"]
        for name, entry in recipe.items():
            if name in ("run", "note"):
                continue
            b, a = entry["before"], entry["after"]
            lines.append(f"| {name} | {b['wall_s']:.0f} s | {a['wall_s']:.0f} s | {entry['speedup']:.2f}x | {b['valid']} | {a['valid']} |")
        lines.append("")
        if recipe.get("note"):
            lines += [f"Note: {recipe['note']}.", ""]
    lines.append("Workloads:")
    for key, entry in results["sections"].items():
        if key != "recipe":
            lines.append(f"- {key}: {entry['workload']}")
    return "\n".join(lines) + "\n"


def write_doc(text: str) -> None:
    write_doc_section("shared_machine", text, DOC, heading="## Speed on a shared machine")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", default="train,batch,api,demo", help="comma-separated: train,batch,api,demo,recipe")
    parser.add_argument("--before", default=BEFORE_DEFAULT, help="git revision of the 'before' code (train, recipe)")
    parser.add_argument("--rate", type=int, default=50, help="API requests per second")
    parser.add_argument("--duration", type=int, default=20, help="API seconds per condition")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    parser.add_argument("--report-only", action="store_true", help="rewrite docs/benchmarks.md from the results JSON")
    args = parser.parse_args()
    if args.report_only:
        write_doc(markdown(json.loads(RESULTS.read_text())))
        return
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = set(sections) - {"train", "batch", "api", "demo", "recipe"}
    if unknown:
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")

    plan = plan_threads()
    scratch = Path(tempfile.mkdtemp(prefix="recsys-bench-shared-"))
    started = time.perf_counter()
    try:
        after = CodeTree(None, scratch)
        before = CodeTree(args.before, scratch) if {"train", "recipe"} & set(sections) else after
        previous = json.loads(RESULTS.read_text()) if RESULTS.exists() else {"sections": {}}
        results = {
            "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs on the host, {plan.usable_cpus} usable",
            "command": "python bench/shared_machine.py " + " ".join(sys.argv[1:]),
            "sections": previous.get("sections", {}),
        }
        run_info = {"date": results["date"], "command": results["command"]}

        def save(section: str, entry: dict) -> None:
            """Write the results after every section (and every recipe config): a long run that is
            stopped keeps what it measured."""
            results["sections"][section] = {**entry, "run": run_info}
            results["wall_s"] = round(time.perf_counter() - started, 1)
            RESULTS.parent.mkdir(parents=True, exist_ok=True)
            tmp = RESULTS.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(results, indent=2) + "\n")
            tmp.replace(RESULTS)
            write_doc(markdown(results))

        for section in sections:
            if section == "train":
                save("train", section_train(scratch, before, after))
            elif section == "batch":
                save("batch", section_batch(scratch, after))
            elif section == "api":
                save("api", section_api(scratch, after, args.rate, args.duration))
            elif section == "demo":
                save("demo", section_demo(scratch, after))
            elif section == "recipe":
                save("recipe", section_recipe(scratch, before, after, lambda partial: save("recipe", partial)))
        print(markdown(results))
    finally:
        if args.keep:
            log(f"scratch kept: {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
