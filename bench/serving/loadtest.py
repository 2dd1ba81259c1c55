"""Load benchmark of the retrieval API at fixed request rates, including a hot reload mid-run.

Starts the real server (`recsys serve --bundle DIR --port FREE`, 127.0.0.1) and drives it with:
  1. locust, headless, constant-throughput pacing (bench/serving/locustfile.py), and
  2. a lean open-loop generator (asyncio + raw HTTP/1.1 keep-alive sockets): request i is sent at
     t0 + i/rate whatever earlier responses do, so a slow server cannot slow the load down
     (no coordinated omission); latency is measured from the scheduled send time.
Both mix 70% GET /v1/users/{id}/recommendations with 30% POST /v1/recommendations (anonymous
history). The "reload" phases POST /admin/reload (same bundle) halfway through.

Writes bench/results/serving.json and the results table in docs/serving.md.
Run: `python bench/serving/loadtest.py --bundle artifacts/ml100k/bundle [--duration 30 --rates 100,200]`
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import os
import platform
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
USER_ROUTE = "GET /v1/users/{user_id}/recommendations"
HISTORY_ROUTE = "POST /v1/recommendations"
DOC_BEGIN, DOC_END = "<!-- loadtest:begin -->", "<!-- loadtest:end -->"


# ---------------------------------------------------------------- server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http(method: str, url: str, body: dict | None = None, timeout: float = 60, token: str | None = None) -> tuple[int, dict]:
    data = None if body is None else json.dumps(body).encode()
    headers = {"content-type": "application/json", **({"authorization": f"Bearer {token}"} if token else {})}
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


class Server:
    def __init__(self, bundle: Path, log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.admin_token = secrets.token_urlsafe(16)  # the benchmark is the operator: it reloads mid-run
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true", "RECSYS_ADMIN_TOKEN": self.admin_token}
        self.log = open(log_path, "wb")
        self.proc = subprocess.Popen(
            [str(BIN / "recsys"), "serve", "--bundle", str(bundle), "--port", str(self.port)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
        )
        start = time.monotonic()
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}; see {log_path}")
            try:
                if http("GET", f"{self.url}/readyz", timeout=2)[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() - start > 180:
                self.stop()
                raise RuntimeError(f"server not ready after 180 s; see {log_path}")
            time.sleep(0.25)
        self.startup_s = time.monotonic() - start

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def reload_at(url: str, bundle: Path, delay_s: float, out: dict, token: str | None = None) -> threading.Thread:
    """POST /admin/reload after `delay_s`, in a thread; the outcome lands in `out`."""

    def run() -> None:
        time.sleep(delay_s)
        start = time.perf_counter()
        status, body = http("POST", f"{url}/admin/reload", {"bundle": str(bundle)}, timeout=120, token=token)
        out.update(status=status, wall_ms=round((time.perf_counter() - start) * 1000, 1), server_ms=body.get("duration_ms"))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


# ---------------------------------------------------------------- stats


def summarise(samples: dict[str, list[float]], failures: dict[str, int], wall_s: float) -> dict:
    endpoints = {}
    for name in sorted(set(samples) | set(failures)):
        ms = np.asarray(samples.get(name, []), dtype=np.float64)
        endpoints[name] = {
            "requests": int(len(ms)) + failures.get(name, 0),
            "failures": failures.get(name, 0),
            "p50_ms": round(float(np.percentile(ms, 50)), 3) if len(ms) else None,
            "p99_ms": round(float(np.percentile(ms, 99)), 3) if len(ms) else None,
            "max_ms": round(float(ms.max()), 3) if len(ms) else None,
        }
    every = np.concatenate([np.asarray(v, dtype=np.float64) for v in samples.values()]) if samples else np.zeros(0)
    total = sum(e["requests"] for e in endpoints.values())
    return {
        "requests": total,
        "failures": sum(failures.values()),
        "throughput_rps": round(total / wall_s, 1),
        "p50_ms": round(float(np.percentile(every, 50)), 3) if len(every) else None,
        "p99_ms": round(float(np.percentile(every, 99)), 3) if len(every) else None,
        "endpoints": endpoints,
    }


# ---------------------------------------------------------------- locust


def run_locust(url: str, bundle: Path, rate: int, duration: int, work: Path, tag: str) -> dict:
    per_user = 5.0
    users = max(1, round(rate / per_user))
    samples_path = work / f"{tag}_samples.json"
    env = {**os.environ, "RECSYS_BUNDLE": str(bundle), "RECSYS_PER_USER_RPS": str(per_user), "RECSYS_SAMPLES_OUT": str(samples_path)}
    command = [
        str(BIN / "locust"), "-f", str(Path(__file__).with_name("locustfile.py")), "--headless", "--only-summary",
        "--host", url, "-u", str(users), "-r", str(users), "-t", f"{duration}s", "--stop-timeout", "5",
        "--csv", str(work / tag), "--loglevel", "WARNING",
    ]  # fmt: skip
    start = time.monotonic()
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=duration + 120)
    wall = time.monotonic() - start
    if not samples_path.exists():
        raise RuntimeError(f"locust wrote no samples (rc {proc.returncode}): {proc.stderr[-2000:]}")
    samples: dict[str, list[float]] = {}
    failures: dict[str, int] = {}
    for name, ms, ok in json.loads(samples_path.read_text()):
        name = name.replace("GET /v1/users/{user_id}/recommendations", USER_ROUTE)
        if ok:
            samples.setdefault(name, []).append(ms)
        else:
            failures[name] = failures.get(name, 0) + 1
    # locust's spawn + stop overhead is outside the `duration` the load was offered for
    result = summarise(samples, failures, duration)
    result.update(generator="locust (FastHttpUser, constant_throughput)", users=users, per_user_rps=per_user, process_wall_s=round(wall, 1))
    return result


# ---------------------------------------------------------------- lean open-loop generator


class RawConnection:
    """One HTTP/1.1 keep-alive connection; minimal parsing (Content-Length bodies only)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def request(self, payload: bytes) -> int:
        self.writer.write(payload)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        match = re.search(rb"content-length:\s*(\d+)", head, re.IGNORECASE)
        await self.reader.readexactly(int(match.group(1)) if match else 0)
        return status


def _payloads(bundle: Path, n: int, seed: int) -> list[tuple[str, bytes]]:
    users = pl.read_parquet(bundle / "users.parquet", columns=["user_id"])["user_id"].to_list()
    items = pl.read_parquet(bundle / "catalog.parquet", columns=["item_id"])["item_id"].to_list()
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        if rng.random() < 0.7:
            user = rng.choice(users) if rng.random() > 0.05 else 10_000_000 + rng.randrange(1000)
            out.append((USER_ROUTE, f"GET /v1/users/{user}/recommendations?k=10 HTTP/1.1\r\nHost: x\r\n\r\n".encode()))
        else:
            body = json.dumps({"history": rng.sample(items, rng.randint(5, 20)), "k": 10}).encode()
            head = f"POST /v1/recommendations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            out.append((HISTORY_ROUTE, head.encode() + body))
    return out


async def _open_loop(port: int, payloads: list[tuple[str, bytes]], rate: int, pool_size: int) -> tuple[dict, dict, float, float]:
    pool: asyncio.Queue[RawConnection] = asyncio.Queue()
    for _ in range(pool_size):
        pool.put_nowait(RawConnection(*await asyncio.open_connection("127.0.0.1", port)))
    samples: dict[str, list[float]] = {}
    failures: dict[str, int] = {}
    max_lag = 0.0

    async def one(name: str, payload: bytes, scheduled: float) -> None:
        conn = await pool.get()
        try:
            status = await asyncio.wait_for(conn.request(payload), timeout=10)
            ok = status == 200
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError):
            ok = False
            conn = RawConnection(*await asyncio.open_connection("127.0.0.1", port))  # replace a broken one
        pool.put_nowait(conn)
        if ok:
            samples.setdefault(name, []).append((time.perf_counter() - scheduled) * 1000)
        else:
            failures[name] = failures.get(name, 0) + 1

    tasks = []
    start = time.perf_counter()
    for i, (name, payload) in enumerate(payloads):
        scheduled = start + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        max_lag = max(max_lag, time.perf_counter() - scheduled)
        tasks.append(asyncio.create_task(one(name, payload, scheduled)))
    await asyncio.gather(*tasks)
    wall = time.perf_counter() - start
    while not pool.empty():
        pool.get_nowait().writer.close()
    return samples, failures, wall, max_lag


def run_open_loop(url: str, bundle: Path, rate: int, duration: int, seed: int = 0) -> dict:
    port = int(url.rsplit(":", 1)[1])
    payloads = _payloads(bundle, rate * duration, seed)
    samples, failures, wall, max_lag = asyncio.run(_open_loop(port, payloads, rate, pool_size=32))
    result = summarise(samples, failures, duration)
    result.update(
        generator="open-loop asyncio, raw HTTP/1.1 keep-alive (latency from scheduled send time)",
        achieved_send_rps=round(len(payloads) / wall, 1),
        max_send_lag_ms=round(max_lag * 1000, 2),
    )
    return result


# ---------------------------------------------------------------- report


def markdown(results: dict) -> str:
    lines = [
        f"Measured {results['date']} on {results['machine']['cpus']} CPU cores ({results['machine']['note']}).",
        f"Bundle `{results['bundle']}` ({results['n_items']} items, {results['n_users']} users); command: `{results['command']}`.",
        "",
        "| generator | phase | offered rps | achieved rps | failures | p50 ms (all) | p99 ms (all) | p99 ms user | p99 ms history | reload |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for run in results["runs"]:
        ep = run["endpoints"]
        reload = run.get("reload")
        reload_text = f"{reload.get('status')} in {reload.get('wall_ms')} ms" if reload else "-"
        lines.append(
            f"| {run['generator'].split(' ')[0]} | {run['phase']} | {run['rate']} | {run['throughput_rps']} | {run['failures']} "
            f"| {run['p50_ms']} | {run['p99_ms']} | {ep.get(USER_ROUTE, {}).get('p99_ms')} | {ep.get(HISTORY_ROUTE, {}).get('p99_ms')} | {reload_text} |"
        )
    return "\n".join(lines)


def write_docs(doc: Path, table: str) -> None:
    text = doc.read_text() if doc.exists() else f"# Serving\n\n{DOC_BEGIN}\n{DOC_END}\n"
    if DOC_BEGIN not in text:
        text += f"\n{DOC_BEGIN}\n{DOC_END}\n"
    head, rest = text.split(DOC_BEGIN, 1)
    _, tail = rest.split(DOC_END, 1)
    doc.write_text(f"{head}{DOC_BEGIN}\n{table}\n{DOC_END}{tail}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, default=Path("artifacts/ml100k/bundle"))
    parser.add_argument("--rates", default="100,200", help="Comma list of offered request rates (req/s).")
    parser.add_argument("--reload-rate", type=int, default=200, help="Rate of the run with a mid-run reload.")
    parser.add_argument("--duration", type=int, default=30, help="Seconds per run.")
    parser.add_argument("--generators", default="locust,open-loop")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/serving.json")
    parser.add_argument("--doc", type=Path, default=ROOT / "docs/serving.md")
    args = parser.parse_args()
    bundle = args.bundle.resolve()
    rates = [int(r) for r in args.rates.split(",") if r]
    generators = [g for g in args.generators.split(",") if g]
    work = Path(tempfile.mkdtemp(prefix="recsys-loadtest-"))
    meta = json.loads((bundle / "bundle.json").read_text())
    n_users = pl.read_parquet(bundle / "users.parquet", columns=["user_id"]).height
    server = Server(bundle, work / "server.log")
    print(f"server ready on {server.url} in {server.startup_s:.1f}s (log: {work / 'server.log'})", flush=True)
    runs = []
    try:
        for generator in generators:
            phases = [(rate, False) for rate in rates] + [(args.reload_rate, True)]
            for rate, with_reload in phases:
                tag = f"{generator}_{rate}{'_reload' if with_reload else ''}"
                reload: dict = {}
                thread = reload_at(server.url, bundle, args.duration / 2, reload, server.admin_token) if with_reload else None
                if generator == "locust":
                    result = run_locust(server.url, bundle, rate, args.duration, work, tag)
                else:
                    result = run_open_loop(server.url, bundle, rate, args.duration)
                if thread is not None:
                    thread.join(120)
                    result["reload"] = reload
                result.update(phase="reload mid-run" if with_reload else "steady", rate=rate, duration_s=args.duration)
                runs.append(result)
                print(f"{tag}: {json.dumps({k: v for k, v in result.items() if k != 'endpoints'})}", flush=True)
        metrics_text = urllib.request.urlopen(f"{server.url}/metrics", timeout=10).read().decode()
    finally:
        server.stop()
    results = {
        "date": time.strftime("%Y-%m-%d %H:%M", time.gmtime()) + " UTC",
        "command": "python bench/serving/loadtest.py " + " ".join(sys.argv[1:]),
        "bundle": str(args.bundle),
        "model_version": meta["model_version"],
        "n_items": meta["n_items"],
        "n_users": n_users,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "note": "server, load generator and other workers' jobs share these cores",
            "loadavg_at_end": os.getloadavg(),
        },
        "server_startup_s": round(server.startup_s, 1),
        "target": "p99 <= 10 ms at 200 req/s, 0 failures, including during a reload",
        "runs": runs,
        "server_reloads": re.findall(r'recsys_model_reloads_total\{outcome="(\w+)"\} (\S+)', metrics_text),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    write_docs(args.doc, markdown(results))
    print(markdown(results))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
