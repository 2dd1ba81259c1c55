"""End to end over real HTTP: uvicorn in a subprocess serving create_app with the fake loader."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from fake_recommender import ADMIN_HEADERS, ADMIN_TOKEN

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def base_url():
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true",
           "RECSYS_ADMIN_TOKEN": ADMIN_TOKEN}
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("serve_fake.py")), str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
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
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_real_server_round_trip(base_url: str) -> None:
    with httpx.Client(base_url=base_url, timeout=5) as http:
        r = http.get("/v1/users/100/recommendations", params={"k": 3})
        assert r.status_code == 200 and len(r.json()["items"]) == 3 and r.json()["model_version"] == "v1"
        assert http.post("/v1/recommendations", json={"history": [1, 999], "k": 2}).json()["unknown_items"] == [999]
        assert http.get("/v1/items/31337/similar").status_code == 404
        assert http.get("/v1/users/1/recommendations?k=0").status_code == 422
        # declared oversize and streamed (chunked) oversize bodies
        assert http.post("/v1/search", json={"query": "y" * 8000}).status_code == 413
        chunked = http.post(
            "/v1/recommendations",
            content=iter([b'{"history": ['] + [b"1, 2, 3, 4, 5, "] * 400 + [b"1]}"]),
            headers={"content-type": "application/json"},
        )
        assert chunked.status_code == 413
        assert http.post("/admin/reload", json={"bundle": "/bundles/v2"}).status_code == 401  # no token
        reloaded = http.post("/admin/reload", json={"bundle": "/bundles/v2"}, headers=ADMIN_HEADERS)
        assert reloaded.json()["model_version"] == "v2"
        assert 'recsys_http_requests_total{endpoint="/v1/search"' in http.get("/metrics").text
