"""bench/ablation.py: sweep files are checked before any training, and the generated docs table
replaces only its own marked section."""

from __future__ import annotations

import sys

import pytest

from recsys.config import load_config, parse_override
from recsys.paths import repo_root

if str(repo_root()) not in sys.path:
    sys.path.insert(0, str(repo_root()))

from bench.ablation import load_sweep, render, summarise_seeds, update_doc  # noqa: E402


@pytest.mark.parametrize("sweep_file", sorted((repo_root() / "bench" / "configs").glob("ablation_*.yaml")))
def test_shipped_sweeps_load_and_every_variant_is_a_valid_config(sweep_file):
    sweep = load_sweep(sweep_file)
    assert sweep["variants"] and sweep["variants"][0]["name"] == "base"
    for variant in sweep["variants"]:
        cfg = load_config(repo_root() / sweep["base_config"], variant.get("overrides", []))
        for override in variant.get("overrides", []):
            key, value = parse_override(override)
            node = cfg
            for part in key.split("."):
                node = getattr(node, part)
            assert node == value, (variant["name"], override)


@pytest.mark.parametrize(
    "body, message",
    [
        ("dataset: x\nvariants: []\n", "missing top-level key 'base_config'"),
        ("dataset: x\nbase_config: c\nvariants:\n  - {name: a, change: x}\n  - {name: a, change: y}\n", "duplicate name 'a'"),
        ("dataset: x\nbase_config: c\nvariants:\n  - {name: a}\n", "variants[0] needs 'name' and 'change'"),
        ("dataset: x\nbase_config: c\nvariants:\n  - {name: a, change: x, overrides: [nokeyvalue]}\n", "nokeyvalue"),
    ],
)
def test_bad_sweep_files_fail_before_training_naming_the_problem(tmp_path, body, message):
    path = tmp_path / "sweep.yaml"
    path.write_text(body)
    with pytest.raises((SystemExit, ValueError)) as err:
        load_sweep(path)
    assert message in str(err.value)


def _results():
    row = {"best_valid": 0.1, "ndcg@10": 0.2, "best_epoch": 3}
    return {
        "sweep": "bench/configs/ablation_x.yaml", "base_config": "c.yaml", "split_seed": 1, "model_seed": 2,
        "variants": {
            "extra": {"change": "not in the sweep any more", "protocols": {"loo": row}},
            "base": {"change": "the config", "protocols": {"loo": row, "cold": {**row, "ndcg@10": 0.3}}},
        },
    }


def test_render_orders_variants_as_the_sweep_and_marks_missing_protocols():
    text = render("x", _results(), ["base"])
    rows = [line for line in text.splitlines() if line.startswith("| ") and "variant" not in line]
    assert rows[0].startswith("| base | the config | 0.1000 | 0.2000 | 3 | 0.1000 | 0.3000 | 3 |")
    assert rows[1].startswith("| extra |") and rows[1].endswith("| – | – | – |")


def test_update_doc_replaces_only_its_section(tmp_path):
    doc = tmp_path / "results.md"
    doc.write_text("# Results\n\nkept above\n\n<!-- ablation:x:begin -->\nold\n<!-- ablation:x:end -->\n\nkept below\n")
    update_doc(doc, "x", render("x", _results(), ["base"]))
    text = doc.read_text()
    assert "\nold\n" not in text and "kept above" in text and "kept below" in text
    assert text.count("<!-- ablation:x:begin -->") == 1 and "| base |" in text
    update_doc(doc, "y", "<!-- ablation:y:begin -->\nnew\n<!-- ablation:y:end -->")
    assert doc.read_text().rstrip().endswith("<!-- ablation:y:end -->")


def test_several_seeds_give_mean_and_standard_error_and_render_them():
    runs = [
        {"seed": 42, "ndcg@10": 0.10, "best_valid": 0.20, "best_epoch": 3, "recall@10": 0.3},
        {"seed": 43, "ndcg@10": 0.20, "best_valid": 0.22, "best_epoch": 5, "recall@10": 0.5},
    ]
    row = summarise_seeds(runs)
    assert row["ndcg@10"] == pytest.approx(0.15) and row["recall@10"] == pytest.approx(0.4)
    assert row["ndcg@10_se"] == pytest.approx(0.05)  # sample std 0.0707 / sqrt(2)
    assert row["best_valid_se"] == pytest.approx(0.01)
    assert row["seeds"] == 2 and [r["seed"] for r in row["per_seed"]] == [42, 43]
    assert summarise_seeds(runs[:1]) == {k: v for k, v in runs[0].items() if k != "seed"}
    results = {**_results(), "variants": {"base": {"change": "the config", "protocols": {"cold": row}}}}
    line = next(x for x in render("x", results, ["base"]).splitlines() if x.startswith("| base"))
    assert line == "| base | the config | 0.2100 ± 0.0100 | 0.1500 ± 0.0500 | 3/5 |"
