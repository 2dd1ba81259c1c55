"""Execute every notebook in notebooks/ on the demo data (full mode, not QUICK) and keep a rendered copy in
docs/notebooks/: the executed .ipynb (GitHub draws it) and, when nbconvert is installed, a standalone
HTML page, so a reader sees the figures without running anything. `make notebooks` runs this.

The notebooks read $RECSYS_HOME like every command (browse_recommendations uses the demo bundle when
`make demo` has written one). The sources in notebooks/ stay without outputs.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def render(path: Path, out_dir: Path, timeout: int) -> list[Path]:
    import nbclient
    import nbformat

    notebook = nbformat.read(path, as_version=4)
    started = time.perf_counter()
    nbclient.NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}}).execute()
    for cell in notebook.cells:  # execution metadata (timings, hosts) would churn the diff on every render
        cell.get("metadata", {}).pop("execution", None)
    written = [out_dir / path.name]
    nbformat.write(notebook, written[0])
    try:
        from nbconvert import HTMLExporter
    except ImportError:
        print("nbconvert not installed: the .ipynb copy only", file=sys.stderr)
    else:
        body, _ = HTMLExporter(template_name="basic").from_notebook_node(notebook)
        page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{path.stem}</title><style>{CSS}</style></head>"
                f"<body>{body}</body></html>")
        written.append(out_dir / f"{path.stem}.html")
        written[-1].write_text(page)
    print(f"{path.name}: {time.perf_counter() - started:.0f}s -> {', '.join(str(p.relative_to(ROOT)) for p in written)}")
    return written


CSS = """body{font-family:sans-serif;max-width:1100px;margin:20px auto;padding:0 12px;color:#222}
.jp-InputArea-editor,.input_area,pre{background:#f6f8fa;border-radius:4px;padding:6px;overflow-x:auto;font-size:13px}
.jp-InputPrompt,.jp-OutputPrompt,.prompt{display:none}
.jp-OutputArea-output{width:100%;overflow-x:auto}img{max-width:100%;height:auto}
table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ddd;padding:2px 6px}
.jp-RenderedText pre,.output_text pre{background:none}"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: notebooks/*.ipynb")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "notebooks")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per cell")
    args = parser.parse_args(argv)
    os.environ.pop("QUICK", None)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    args.out.mkdir(parents=True, exist_ok=True)
    for path in args.notebooks or sorted((ROOT / "notebooks").glob("*.ipynb")):
        render(path.resolve(), args.out, args.timeout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
