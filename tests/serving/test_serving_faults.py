"""The API under faults, against a real uvicorn process (tests/serving/serve_fake.py, which starts the
server through `recsys.serving.app.run_server` like `recsys serve` does):

- hot reloads, good and broken, in the middle of steady concurrent traffic: no request fails;
- SIGTERM with a request in flight: it finishes, new connections are refused, the process exits 0;
- the graceful timeout bounds how long a stuck request can hold the shutdown.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from fake_recommender import ADMIN_HEADERS, ADMIN_TOKEN

ROOT = Path(__file__).resolve().parents[2]
SLOW_USER = 4242  # unknown to the fake: popular fallback, after the --slow-delay sleep


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def fake_server(*args: str) -> Iterator[tuple[subprocess.Popen, str]]:
    """serve_fake.py in a subprocess, ready (/readyz 200) before the block runs; killed if still alive after."""
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true",
           "RECSYS_ADMIN_TOKEN": ADMIN_TOKEN, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("serve_fake.py")), str(port), *args],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                pytest.fail(f"server exited: {proc.stdout.read().decode(errors='replace')}")
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server did not become ready"
            time.sleep(0.1)
        yield proc, url
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def _write_bundle(root: Path, name: str, content: str | None) -> None:
    (root / name).mkdir()
    if content is not None:
        (root / name / "bundle.json").write_text(content)


def _relevant(versions: list[str]) -> list[str]:
    """Consecutive duplicates dropped: the versions one client saw, in the order it saw them."""
    return [v for i, v in enumerate(versions) if i == 0 or v != versions[i - 1]]


def test_reloads_under_load_lose_no_request(tmp_path: Path) -> None:
    bundles = tmp_path / "bundles"
    bundles.mkdir()
    for version in ("v1", "v2", "v3"):
        _write_bundle(bundles, version, json.dumps({"model_version": version}))
    _write_bundle(bundles, "corrupt", "\x00\x93garbage")  # not JSON at all
    _write_bundle(bundles, "half", '{"model_version": "ha')  # half-written: cut mid-file
    _write_bundle(bundles, "empty", None)  # a folder whose bundle.json is not there (yet)
    # each load takes 0.3 s in the loader thread, so every reload overlaps the traffic below
    plan = [("v2", 200), ("corrupt", 409), ("v3", 200), ("half", 409), ("empty", 409), ("v1", 200)]

    with fake_server("--bundles", str(bundles), "--load-delay", "0.3") as (proc, url):
        stop = threading.Event()
        seen: list[list[tuple[int, str | None]]] = []

        def traffic(worker: int) -> None:
            log: list[tuple[int, str | None]] = []
            seen.append(log)
            with httpx.Client(base_url=url, timeout=10) as http:
                n = 0
                while not stop.is_set():
                    if n % 2:
                        r = http.post("/v1/recommendations", json={"history": [1, 2, 999], "k": 5})
                    else:
                        r = http.get(f"/v1/users/{100 + worker % 3}/recommendations", params={"k": 5})
                    log.append((r.status_code, r.json().get("model_version")))
                    n += 1

        threads = [threading.Thread(target=traffic, args=(w,)) for w in range(4)]
        for thread in threads:
            thread.start()
        reloads = []
        with httpx.Client(base_url=url, timeout=10, headers=ADMIN_HEADERS) as admin:
            for name, expected in plan:
                time.sleep(0.5)
                before = admin.get("/readyz").json()["model_version"]
                r = admin.post("/admin/reload", json={"bundle": str(bundles / name)})
                reloads.append((name, r.status_code, r.json()))
                assert r.status_code == expected, r.text
                if expected == 409:  # the old model keeps serving; /readyz says what failed
                    assert r.json()["error"] == "reload_failed" and r.json()["model_version"] == before
                    ready = admin.get("/readyz")
                    assert ready.status_code == 200 and ready.json()["model_version"] == before
                    assert str(bundles / name) in ready.json()["last_error"]
                else:
                    assert r.json()["model_version"] == name and r.json()["previous_version"] == before
            time.sleep(0.5)
        stop.set()
        for thread in threads:
            thread.join(15)
        assert proc.poll() is None, "the server must still be up"

    statuses = [status for log in seen for status, _ in log]
    print(f"{len(statuses)} requests from {len(seen)} clients; reloads: {[(name, status) for name, status, _ in reloads]}")
    assert len(statuses) >= 200, f"too little traffic to mean anything: {len(statuses)} requests"
    assert set(statuses) == {200}, f"failed requests: {[s for s in statuses if s != 200][:10]}"
    for log in seen:  # each client saw the good versions in reload order, never a broken one, never going back
        assert _relevant([version for _, version in log]) == ["v1", "v2", "v3", "v1"], _relevant([v for _, v in log])


def test_sigterm_finishes_the_request_in_flight_and_exits_0(tmp_path: Path) -> None:
    mark = tmp_path / "in-flight"
    with fake_server("--slow-user", str(SLOW_USER), "--slow-delay", "2", "--slow-mark", str(mark)) as (proc, url):
        result: dict = {}

        def slow_request() -> None:
            try:
                r = httpx.get(f"{url}/v1/users/{SLOW_USER}/recommendations", params={"k": 3}, timeout=15)
                result.update(status=r.status_code, body=r.json())
            except httpx.HTTPError as exc:  # pragma: no cover - the failure the test looks for
                result.update(error=repr(exc))

        worker = threading.Thread(target=slow_request)
        worker.start()
        deadline = time.monotonic() + 10
        while not mark.exists():
            assert time.monotonic() < deadline, "the slow request never reached the recommender"
            time.sleep(0.02)

        proc.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        refused = False
        while time.monotonic() - sent < 1.5:  # the listening socket closes at once
            try:
                httpx.get(f"{url}/healthz", timeout=0.5)
            except (httpx.ConnectError, httpx.RemoteProtocolError):
                # Refused, or accepted into the backlog just before the socket closed and dropped unanswered:
                # either way a new connection is not served.
                refused = True
                break
            time.sleep(0.05)
        assert refused, "new connections must be refused once SIGTERM is received"
        assert worker.is_alive(), "the refusal must come while the slow request is still in flight"

        worker.join(10)
        assert result.get("status") == 200, result
        assert result["body"]["fallback"] == "popular" and len(result["body"]["items"]) == 3
        code = proc.wait(timeout=5)
        elapsed = time.monotonic() - sent
        output = proc.stdout.read().decode(errors="replace")
        assert code == 0, output
        assert 1.0 < elapsed < 5.0, f"exited {elapsed:.1f} s after SIGTERM: it must wait for the request, then stop"


def test_graceful_timeout_bounds_a_stuck_request(tmp_path: Path) -> None:
    mark = tmp_path / "in-flight"
    args = ("--slow-user", str(SLOW_USER), "--slow-delay", "30", "--slow-mark", str(mark), "--graceful-timeout", "1")
    with fake_server(*args) as (proc, url):
        failure: dict = {}

        def stuck_request() -> None:
            try:
                r = httpx.get(f"{url}/v1/users/{SLOW_USER}/recommendations", timeout=40)
                failure.update(status=r.status_code)
            except httpx.HTTPError as exc:
                failure.update(error=type(exc).__name__)

        worker = threading.Thread(target=stuck_request, daemon=True)
        worker.start()
        deadline = time.monotonic() + 10
        while not mark.exists():
            assert time.monotonic() < deadline, "the slow request never reached the recommender"
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        code = proc.wait(timeout=10)
        elapsed = time.monotonic() - sent
        output = proc.stdout.read().decode(errors="replace")
        assert elapsed < 5, f"the 1 s graceful timeout must cut the 30 s request short; exited after {elapsed:.1f} s"
        assert code == 1, output  # EXIT_ABANDONED: not a clean stop
        assert "graceful shutdown gave up after 1.0s on 1 request(s) still running" in output
        worker.join(5)
        assert "error" in failure or failure.get("status", 200) >= 500, failure  # the client learns it was cut off
