"""Locust load profile for the retrieval API (driven by bench/serving/loadtest.py; usable alone).

Each simulated user paces itself with `constant_throughput(PER_USER_RPS)`, so users x PER_USER_RPS
is a fixed offered rate (as long as responses come back faster than the pacing interval).
Mix: 70% GET /v1/users/{id}/recommendations (known users, plus 5% unknown -> popular fallback),
30% POST /v1/recommendations with a 5-20 item anonymous history.

Env: RECSYS_BUNDLE (bundle dir: user/item ids are read from it), RECSYS_PER_USER_RPS (default 5),
RECSYS_SAMPLES_OUT (optional: every request's (name, ms, ok) is written there as JSON at exit, so
loadtest.py computes exact percentiles instead of locust's rounded ones).
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import polars as pl
from locust import events, task
from locust.contrib.fasthttp import FastHttpUser
from locust.user.wait_time import constant_throughput

BUNDLE = Path(os.environ.get("RECSYS_BUNDLE", "artifacts/ml100k/bundle"))
PER_USER_RPS = float(os.environ.get("RECSYS_PER_USER_RPS", "5"))
SAMPLES_OUT = os.environ.get("RECSYS_SAMPLES_OUT")

USER_IDS = pl.read_parquet(BUNDLE / "users.parquet", columns=["user_id"])["user_id"].to_list()
ITEM_IDS = pl.read_parquet(BUNDLE / "catalog.parquet", columns=["item_id"])["item_id"].to_list()
USER_ROUTE = "/v1/users/{user_id}/recommendations"
HISTORY_ROUTE = "/v1/recommendations"
_samples: list[tuple[str, float, bool]] = []


@events.request.add_listener
def _record(request_type, name, response_time, response_length, exception, **_kwargs) -> None:
    _samples.append((f"{request_type} {name}", float(response_time), exception is None))


@events.quitting.add_listener
def _dump(environment, **_kwargs) -> None:
    if SAMPLES_OUT:
        Path(SAMPLES_OUT).write_text(json.dumps(_samples))


class ApiUser(FastHttpUser):
    wait_time = constant_throughput(PER_USER_RPS)

    @task(7)
    def user_recommendations(self) -> None:
        user = random.choice(USER_IDS) if random.random() > 0.05 else 10_000_000 + random.randrange(1000)
        with self.client.get(f"/v1/users/{user}/recommendations?k=10", name=USER_ROUTE, catch_response=True) as r:
            if r.status_code != 200:
                r.failure(f"status {r.status_code}")

    @task(3)
    def history_recommendations(self) -> None:
        history = random.sample(ITEM_IDS, random.randint(5, 20))
        with self.client.post(HISTORY_ROUTE, json={"history": history, "k": 10}, name=HISTORY_ROUTE, catch_response=True) as r:
            if r.status_code != 200:
                r.failure(f"status {r.status_code}")
