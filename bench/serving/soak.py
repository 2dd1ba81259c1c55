"""Soak test of the retrieval API: steady load for minutes, the server's memory sampled all along.

Starts the real server (`python -m recsys.cli serve --bundle DIR`, 127.0.0.1, a free port, a scratch
live log), drives it at a steady paced rate from a few client threads with a mix of
  50% GET /v1/users/{id}/recommendations (5% unknown users), 25% POST /v1/recommendations
  (a 5-20 item history), 15% GET /v1/items/{id}/similar, 10% POST /v1/search,
hot-reloads the same bundle every --reload-every seconds (a reload that kept the old model alive would
show up as memory growth), samples the server's RSS (/proc/<pid>/status VmRSS) every --sample-every
seconds, and at the end stops the server with SIGTERM (its exit status is recorded).

The bundle: --bundle DIR, else the tiny real bundle of the serving tests (tests/serving/real_bundle.py:
150 ml-100k items with real MiniLM text features, 120 users, 1 training epoch), built once into
bench/.cache/soak/ (~30-60 s on 2 cores).

Figures: latency is measured from each request's send (pacing: a client that falls behind sends at
once, so this is not an open-loop latency benchmark; bench/serving/loadtest.py is). RSS start = the
first sample after the warm-up, slope = least-squares line through the post-warm-up samples (MB/min).

Run:  python bench/serving/soak.py            # 3 minutes -> bench/results/soak.json
      python bench/serving/soak.py --minutes 10 --rate 80 --bundle artifacts/demo/bundle
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / "bench" / ".cache" / "soak"
ENV_SHOWN = ("MALLOC_ARENA_MAX", "OMP_NUM_THREADS", "RECSYS_THREADS")  # what the server inherits that moves RSS
QUERIES = ["space adventure", "a comedy about friends", "war drama", "crime thriller in the city", "animated family film",
           "romance", "horror night", "a detective story", "western", "robots"]


# ---------------------------------------------------------------- server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rss_mb(pid: int) -> float | None:
    """Resident set size of `pid` in MB (VmRSS of /proc/<pid>/status); None once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def tiny_bundle() -> Path:
    """The serving tests' tiny real bundle (seed 1), built once into bench/.cache/soak/."""
    bundle = CACHE / "bundle1"
    if (bundle / "bundle.json").exists():
        return bundle
    sys.path.insert(0, str(ROOT / "tests" / "serving"))
    from real_bundle import build_tiny_bundle

    CACHE.mkdir(parents=True, exist_ok=True)
    print(f"building the tiny real bundle into {CACHE} ...", flush=True)
    return build_tiny_bundle(CACHE, seed=1)


class Server:
    def __init__(self, bundle: Path, work: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.token = secrets.token_urlsafe(16)  # the soak is the operator: it reloads
        token_file = work / "admin_token"
        token_file.write_text(self.token)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true", "OMP_NUM_THREADS": "1",
               "PYTHONPATH": str(ROOT), "RECSYS_HOME": str(work / "home")}
        env.pop("RECSYS_ADMIN_TOKEN", None)
        self.log_path = work / "server.log"
        self.log = open(self.log_path, "wb")
        command = [sys.executable, "-m", "recsys.cli", "serve", "--bundle", str(bundle), "--port", str(self.port),
                   "--live-log", str(work / "live_catalog.jsonl"), "--admin-token-file", str(token_file)]
        self.proc = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        import httpx

        start = time.monotonic()
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}; see {self.log_path}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() - start > 180:
                self.proc.kill()
                raise RuntimeError(f"server not ready after 180 s; see {self.log_path}")
            time.sleep(0.25)
        self.startup_s = time.monotonic() - start

    def stop(self) -> dict:
        """SIGTERM; how it went."""
        start = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self.log.close()
        return {"signal": "SIGTERM", "exit_code": code, "seconds": round(time.monotonic() - start, 2)}


# ---------------------------------------------------------------- load


def request_mix(bundle: Path, seed: int):
    """A function rng -> (endpoint label, method, path, json body or None) over the bundle's ids."""
    import polars as pl

    users = pl.read_parquet(bundle / "users.parquet", columns=["user_id"])["user_id"].to_list()
    items = pl.read_parquet(bundle / "catalog.parquet", columns=["item_id"])["item_id"].to_list()

    def next_request(rng: random.Random):
        roll = rng.random()
        if roll < 0.50:
            user = rng.choice(users) if rng.random() >= 0.05 else 10_000_000 + rng.randrange(1000)
            return "GET /v1/users/{user_id}/recommendations", "GET", f"/v1/users/{user}/recommendations?k=10", None
        if roll < 0.75:
            history = rng.sample(items, min(len(items), rng.randint(5, 20)))
            return "POST /v1/recommendations", "POST", "/v1/recommendations", {"history": history, "k": 10}
        if roll < 0.90:
            return "GET /v1/items/{item_id}/similar", "GET", f"/v1/items/{rng.choice(items)}/similar?k=10", None
        return "POST /v1/search", "POST", "/v1/search", {"query": rng.choice(QUERIES), "k": 10}

    return next_request


def drive(url: str, next_request, rate: float, clients: int, duration_s: float, t0: float, seed: int) -> list[tuple]:
    """`clients` threads, each paced at rate/clients req/s until t0 + duration_s; returns
    (t since t0 at send, endpoint, status or error name, latency ms) per request."""
    import httpx

    records: list[tuple] = []
    lock = threading.Lock()
    interval = clients / rate

    def client(number: int) -> None:
        rng = random.Random(seed * 1000 + number)
        mine = []
        with httpx.Client(base_url=url, timeout=30) as http:
            due = t0 + number * interval / clients  # clients staggered across one interval
            while due < t0 + duration_s:
                pause = due - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
                label, method, path, body = next_request(rng)
                sent = time.monotonic()
                try:
                    status = http.request(method, path, json=body).status_code
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                mine.append((sent - t0, label, status, (time.monotonic() - sent) * 1000))
                due += interval
        with lock:
            records.extend(mine)

    threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return records


def sample_rss(pid: int, every_s: float, t0: float, stop: threading.Event, out: list) -> None:
    while not stop.is_set():
        value = rss_mb(pid)
        if value is not None:
            out.append((round(time.monotonic() - t0, 2), round(value, 2)))
        stop.wait(every_s)


def reload_every(url: str, token: str, every_s: float, t0: float, duration_s: float, stop: threading.Event, out: list) -> None:
    import httpx

    due = t0 + every_s
    with httpx.Client(base_url=url, timeout=120, headers={"Authorization": f"Bearer {token}"}) as http:
        while due < t0 + duration_s - 1 and not stop.wait(max(0.0, due - time.monotonic())):
            start = time.monotonic()
            try:
                r = http.post("/admin/reload", json={})
                status, server_ms = r.status_code, r.json().get("duration_ms")
            except httpx.HTTPError as exc:
                status, server_ms = type(exc).__name__, None
            out.append({"t_s": round(start - t0, 1), "status": status, "wall_ms": round((time.monotonic() - start) * 1000, 1),
                        "server_ms": server_ms})
            due += every_s


# ---------------------------------------------------------------- summary


def summarise(records: list[tuple], rss: list[tuple[float, float]], duration_s: float, warmup_s: float) -> dict:
    """Request counts and latency after the warm-up, errors over the whole run, and the RSS trend."""
    errors = Counter(str(status) for _, _, status, _ in records if status != 200)
    steady = [r for r in records if r[0] >= warmup_s]
    ms = np.asarray([r[3] for r in steady if r[2] == 200], dtype=np.float64)
    per_endpoint = {}
    for label in sorted({r[1] for r in records}):
        mine = np.asarray([r[3] for r in steady if r[1] == label and r[2] == 200], dtype=np.float64)
        per_endpoint[label] = {
            "requests": sum(1 for r in records if r[1] == label),
            "errors": sum(1 for r in records if r[1] == label and r[2] != 200),
            "p50_ms": _pct(mine, 50), "p99_ms": _pct(mine, 99),
        }
    after = [(t, mb) for t, mb in rss if t >= warmup_s]
    slope = None
    if len(after) >= 2:
        minutes = np.asarray([t for t, _ in after]) / 60
        slope = round(float(np.polyfit(minutes, np.asarray([mb for _, mb in after]), 1)[0]), 3)
    return {
        "requests": len(records),
        "errors": sum(errors.values()),
        "error_kinds": dict(errors),
        "steady_requests": len(steady),
        "req_per_s": round(len(steady) / max(duration_s - warmup_s, 1e-9), 1),
        "latency_ms": {"p50": _pct(ms, 50), "p99": _pct(ms, 99), "max": round(float(ms.max()), 2) if len(ms) else None},
        "per_endpoint": per_endpoint,
        "rss_mb": {
            "start": after[0][1] if after else None,
            "end": after[-1][1] if after else None,
            "max": max(mb for _, mb in after) if after else None,
            "max_during_warmup": max((mb for t, mb in rss if t < warmup_s), default=None),
            "slope_mb_per_min": slope,
            "samples_after_warmup": len(after),
        },
    }


def _pct(values: np.ndarray, q: float) -> float | None:
    return round(float(np.percentile(values, q)), 2) if len(values) else None


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=3.0, help="Length of the run, warm-up included.")
    parser.add_argument("--bundle", type=Path, help="Bundle to serve (default: the tiny real bundle, built once).")
    parser.add_argument("--rate", type=float, default=50.0, help="Offered requests per second, all clients together.")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--warmup", type=float, help="Seconds left out of the RSS trend and latency (default: 20, or 20%% of a short run).")
    parser.add_argument("--sample-every", type=float, default=2.0, help="RSS sampling period, seconds.")
    parser.add_argument("--reload-every", type=float, default=30.0, help="POST /admin/reload (same bundle) this often, seconds; 0: never.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "soak.json")
    args = parser.parse_args(argv)

    duration_s = args.minutes * 60
    warmup_s = args.warmup if args.warmup is not None else min(20.0, 0.2 * duration_s)
    bundle = (args.bundle or tiny_bundle()).resolve()
    meta = json.loads((bundle / "bundle.json").read_text())
    work = Path(tempfile.mkdtemp(prefix="recsys-soak-"))
    server = Server(bundle, work)
    print(f"server pid {server.proc.pid} ready on {server.url} in {server.startup_s:.1f}s; "
          f"{args.minutes:g} min at {args.rate:g} req/s (log: {server.log_path})", flush=True)
    stop = threading.Event()
    rss: list[tuple[float, float]] = []
    reloads: list[dict] = []
    t0 = time.monotonic()
    background = [threading.Thread(target=sample_rss, args=(server.proc.pid, args.sample_every, t0, stop, rss), daemon=True)]
    if args.reload_every > 0:
        background.append(threading.Thread(
            target=reload_every, args=(server.url, server.token, args.reload_every, t0, duration_s, stop, reloads), daemon=True))
    for thread in background:
        thread.start()
    try:
        records = drive(server.url, request_mix(bundle, args.seed), args.rate, args.clients, duration_s, t0, args.seed)
        rss.append((round(time.monotonic() - t0, 2), round(rss_mb(server.proc.pid) or float("nan"), 2)))
    finally:
        stop.set()
        for thread in background:
            thread.join(130)
        shutdown = server.stop()
    summary = summarise(records, rss, duration_s, warmup_s)
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M", time.gmtime()) + " UTC",
        "command": "python bench/serving/soak.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "server": "python -m recsys.cli serve --bundle BUNDLE (1 uvicorn worker, torch/faiss 1 thread)",
        "bundle": {"path": str(args.bundle) if args.bundle else "tiny real bundle (tests/serving/real_bundle.py, seed 1)",
                   "model_version": meta["model_version"], "n_items": meta.get("n_items")},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "loadavg_at_end": os.getloadavg(),
                    "note": "server, load generator and other jobs share these cores"},
        "env": {name: os.environ.get(name) for name in ENV_SHOWN},
        "minutes": args.minutes, "warmup_s": warmup_s, "offered_req_per_s": args.rate, "clients": args.clients,
        "server_startup_s": round(server.startup_s, 1),
        **summary,
        "reloads": reloads,
        "reload_failures": sum(1 for r in reloads if r["status"] != 200),
        "shutdown": shutdown,
        "rss_samples": rss,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    rss_view = summary["rss_mb"]
    print(f"{summary['requests']} requests, {summary['errors']} errors, {summary['req_per_s']} req/s, "
          f"p50 {summary['latency_ms']['p50']} ms, p99 {summary['latency_ms']['p99']} ms; RSS {rss_view['start']} -> "
          f"{rss_view['end']} MB (max {rss_view['max']}), slope {rss_view['slope_mb_per_min']} MB/min; "
          f"{len(reloads)} reloads ({result['reload_failures']} failed); SIGTERM exit {shutdown['exit_code']} "
          f"in {shutdown['seconds']} s -> {args.out}", flush=True)
    return result


if __name__ == "__main__":
    main()
