"""Run the real API under uvicorn with the FakeRecommender: `python serve_fake.py PORT [options]`.

Used by test_serving_process.py and test_serving_faults.py (and handy for poking at the API by hand).
It goes through `recsys.serving.app.run_server`, the same uvicorn start and SIGTERM handling as
`recsys serve`.

Test-only knobs:
  --bundles DIR      serve DIR/v1 and load bundles from files: a bundle is a folder with bundle.json
                     ({"model_version": ...}), read and parsed at load, so a missing, corrupt or
                     half-written bundle.json fails the load like a real broken bundle would.
                     Without it, the reference's last path part is the version ('broken*' fails).
  --load-delay S     each load takes S seconds more (in the loader thread), so a reload overlaps traffic.
  --slow-user ID     GET /v1/users/ID/recommendations sleeps --slow-delay seconds (default 2) before
                     answering, after creating the file --slow-mark (if given): a request held in flight.
  --graceful-timeout S
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fake_recommender import FakeRecommender  # noqa: E402

from recsys.serving import ServingSettings, create_app  # noqa: E402
from recsys.serving.app import run_server  # noqa: E402
from recsys.serving.auth import read_admin_token  # noqa: E402


class SlowUserRecommender(FakeRecommender):
    """Holds one user's recommendations in flight for a while."""

    slow_user: int | None = None
    delay_s: float = 2.0
    mark: Path | None = None

    def recommend_user(self, user_id, k, **kwargs):
        if user_id == self.slow_user:
            if self.mark is not None:
                self.mark.touch()
            time.sleep(self.delay_s)
        return super().recommend_user(user_id, k, **kwargs)


def name_loader(reference: str) -> FakeRecommender:
    """As fake_recommender.make_loader: the reference's last path part is the version; 'broken*' fails."""
    name = Path(reference).name
    if name.startswith("broken"):
        raise FileNotFoundError(f"no bundle at {reference}")
    return SlowUserRecommender(model_version=name)


def file_loader(reference: str) -> FakeRecommender:
    """A fake bundle on disk: REFERENCE/bundle.json names the version; anything unreadable raises."""
    meta = json.loads((Path(reference) / "bundle.json").read_text())
    return SlowUserRecommender(model_version=str(meta["model_version"]))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("--bundles", type=Path)
    parser.add_argument("--load-delay", type=float, default=0.0)
    parser.add_argument("--slow-user", type=int)
    parser.add_argument("--slow-delay", type=float, default=2.0)
    parser.add_argument("--slow-mark", type=Path)
    parser.add_argument("--graceful-timeout", type=float, default=30.0)
    args = parser.parse_args(argv)

    SlowUserRecommender.slow_user = args.slow_user
    SlowUserRecommender.delay_s = args.slow_delay
    SlowUserRecommender.mark = args.slow_mark
    bundle, base = (args.bundles / "v1", file_loader) if args.bundles is not None else (Path("/bundles/v1"), name_loader)

    def loader(reference: str) -> FakeRecommender:
        time.sleep(args.load_delay)
        return base(reference)

    settings = ServingSettings(
        bundle=bundle, max_body_bytes=4096, admin_token=read_admin_token(), graceful_timeout_s=args.graceful_timeout
    )
    run_server(create_app(settings, loader), "127.0.0.1", args.port, log_level="warning",
               graceful_timeout_s=settings.graceful_timeout_s)


if __name__ == "__main__":
    main()
