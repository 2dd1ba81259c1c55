"""Run the real API under uvicorn with the FakeRecommender: `python serve_fake.py PORT`.

Used by test_serving_process.py (and handy for poking at the API by hand).
"""

from __future__ import annotations

import sys
from pathlib import Path

import uvicorn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fake_recommender import make_loader  # noqa: E402

from recsys.serving import ServingSettings, create_app  # noqa: E402
from recsys.serving.auth import read_admin_token  # noqa: E402

if __name__ == "__main__":
    loader, _ = make_loader()
    settings = ServingSettings(bundle=Path("/bundles/v1"), max_body_bytes=4096, admin_token=read_admin_token())
    app = create_app(settings, loader)
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), workers=1, log_level="warning")
