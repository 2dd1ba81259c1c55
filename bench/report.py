"""Where the performance benchmarks put what they measure: one JSON file per figure in bench/results,
and one generated section per figure in docs/benchmarks.md, so a re-run replaces its own numbers and
nobody else's.

Every figure there is a ratio to a reference measured in the same run: this machine is shared, so an
absolute number from one day is not comparable with another day's.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

from recsys.encoders.store import atomic_write_bytes

# What every benchmark runs under (the Makefile sets the same): no model download, no telemetry, quiet tokenizers.
# Set on import, so a benchmark imports this module before recsys.
for _name, _value in (("HF_HUB_OFFLINE", "1"), ("MLFLOW_DISABLE_TELEMETRY", "true"), ("TOKENIZERS_PARALLELISM", "false")):
    os.environ.setdefault(_name, _value)

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
DOC = ROOT / "docs" / "benchmarks.md"
PERFORMANCE_HEADING = "## Performance against the limit"


def machine() -> dict:
    """The facts a reader needs to judge a number: cores, date, the exact command."""
    return {
        "cores": os.cpu_count(),
        "threads": int(os.environ.get("RECSYS_THREADS", "0")) or None,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "python": platform.python_version(),
        "command": "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]]),
    }


def write_result(name: str, payload: dict) -> Path:
    """bench/results/<name>.json, written atomically (a killed run leaves the previous file)."""
    path = RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, (json.dumps(payload, indent=2) + "\n").encode())
    return path


def write_doc_section(name: str, markdown: str, doc: Path = DOC, heading: str = PERFORMANCE_HEADING) -> None:
    """Replace the text between `<!-- name:begin -->` and `<!-- name:end -->` in docs/benchmarks.md;
    append the pair under `heading` the first time."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    text = doc.read_text() if doc.exists() else "# Benchmarks\n"
    block = f"{begin}\n{markdown.rstrip()}\n{end}"
    if begin in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        if heading not in text:
            text = text.rstrip() + f"\n\n{heading}\n"
        text = text.rstrip() + "\n\n" + block + "\n"
    atomic_write_bytes(doc, text.encode())


ML1M_BUNDLE = ROOT / "artifacts" / "bench" / "ml1m-bundle"


def ml1m_bundle(path: Path = ML1M_BUNDLE, epochs: int = 3) -> Path:
    """A trained ml-1m bundle for the speed figures (batch, index at scale): the hand-written ml-1m model
    shape (bench/configs/hand_ml1m.yaml: 128-d towers, the rank-1024 item-item block) trained for a few
    epochs. Speed does not depend on how long it trained; quality is bench/quality.py's job.
    Built once (under a lock, so two benchmarks started together build it once) and reused."""
    import fcntl
    import subprocess

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / ".ml1m-bundle.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (path / "bundle.json").exists():
            env = {**os.environ, "RECSYS_HOME": str(ROOT), "HF_HUB_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}
            subprocess.run(
                [sys.executable, "-m", "recsys.cli", "train", "-c", str(ROOT / "bench/configs/hand_ml1m.yaml"),
                 "--set", f"train.epochs={epochs}", "--out", str(path), "--no-register", "-q"],
                check=True, cwd=ROOT, env=env,
            )
    return path
