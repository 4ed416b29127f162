"""bench/demo_seeds.py: the demo's claim per seed, and the docs' table equals the committed result files."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "bench") not in sys.path:
    sys.path.insert(0, str(ROOT / "bench"))  # bench scripts import their siblings, as when run from there
_spec = importlib.util.spec_from_file_location("demo_seeds", ROOT / "bench" / "demo_seeds.py")
demo_seeds = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(demo_seeds)


def _top1(final: float, match: float = 0.7) -> dict[str, float]:
    return {"net1": 0.80, "net2": 0.81, "grown": 0.5, "grown_bn": 0.79, "final": final, "match": match}


@pytest.mark.parametrize(("final", "match", "holds"), [
    (0.81, 0.70, True),    # level with the better small net: holds (>=)
    (0.8099, 0.70, False),  # below the better small net
    (0.83, 0.83, False),   # not above the large net at equal FLOPs
    (0.83, 0.82, True),
])
def test_the_claim_is_both_comparisons(final, match, holds):
    c = demo_seeds.claim(_top1(final, match))
    assert c["holds"] is holds
    assert c["final_minus_better_small"] == pytest.approx(final - 0.81)


def test_the_table_reports_every_seed_and_the_count_that_hold():
    finals = (0.83, 0.82, 0.80)
    rows = [{"seed": s, "top1": _top1(f), "claim": demo_seeds.claim(_top1(f)), "commit": "abc1234",
             "stages_wall_s": 200.0 + s, "machine": "x86_64 Linux, vm"} for s, f in enumerate(finals)]
    text = demo_seeds.table(rows)
    assert "| claim holds | 2 of 3 | yes | yes | **no** |" in text
    assert "| grown + fine-tuned | 81.67 ± 1.53 | 83.00 | 82.00 | 80.00 |" in text
    assert "Commit abc1234" in text


def test_write_docs_replaces_only_the_text_between_the_markers(tmp_path):
    doc = tmp_path / "d.md"
    doc.write_text(f"before\n{demo_seeds.START}\nold\n{demo_seeds.END}\nafter\n")
    demo_seeds.write_docs("new table", (doc,))
    assert doc.read_text() == f"before\n{demo_seeds.START}\nnew table\n{demo_seeds.END}\nafter\n"
    bad = tmp_path / "bad.md"
    bad.write_text("no markers")
    with pytest.raises(SystemExit):
        demo_seeds.write_docs("x", (bad,))


def test_the_docs_quote_exactly_the_committed_demo_results():
    rows = demo_seeds.load(demo_seeds.RESULTS)
    assert sorted(r["seed"] for r in rows) == list(demo_seeds.SEEDS), "bench/results/demo_seeds/ needs seeds 0-4"
    want = demo_seeds.table(rows)
    for doc in demo_seeds.DOCS:
        body = doc.read_text()
        quoted = body.split(demo_seeds.START, 1)[1].split(demo_seeds.END, 1)[0].strip()
        assert quoted == want, f"{doc.name} is stale: run python bench/demo_seeds.py --report --write-docs"


def test_growth_defaults_quotes_the_tables_its_scripts_rebuild():
    """docs/results/growth-defaults.md's tables are the ones bench/demo_defaults.py --amendment-10 and
    bench/reproduction_sweep.py --report build from the committed result files."""
    spec = importlib.util.spec_from_file_location("demo_defaults", ROOT / "bench" / "demo_defaults.py")
    demo_defaults = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo_defaults)
    doc = (ROOT / "docs" / "results" / "growth-defaults.md").read_text()
    demo_table = demo_defaults.report(demo_defaults.RESULTS / "amendment10", demo_defaults.AMENDMENT_10)
    tables = (ROOT / "bench" / "results" / "reproduction" / "tables.md").read_text()
    start = tables.index("| Coefficient init (MixtureGrowth, protocol B)")
    secondary = tables[start:tables.index("\n\n", start)]
    for line in [*demo_table.splitlines()[2:], *secondary.splitlines()[2:]]:
        assert line in doc, f"growth-defaults.md is stale: {line}"
