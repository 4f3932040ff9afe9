"""bench/results_table.py: README's results table is the one the committed logs give."""

import json

import pytest

from bench import results_table


def test_readme_table_is_generated_from_the_committed_logs():
    text = results_table.README.read_text()
    assert results_table.BEGIN in text, "README.md lost its results-table block"
    block = text.split(results_table.BEGIN, 1)[1].split(results_table.END, 1)[0].strip()
    assert block == results_table.markdown(results_table.rows()), "run python bench/results_table.py --write"


def test_rows_from_a_log_and_errors(tmp_path):
    metrics = {f"{side}_{k}": 0.5 for side in ("test", "popularity") for k in results_table.COLUMNS}
    log = [{"epoch": 1, "seconds": 60.0}, {"epoch": 2, "seconds": 120.0},
           {"best_epoch": 1, "test_RMSE": 0.91, **metrics}]
    (tmp_path / "train_x.jsonl").write_text("\n".join(json.dumps(r) for r in log))
    (tmp_path / "train_unfinished.jsonl").write_text(json.dumps(log[0]))
    got = results_table.rows([("x", "HSTU", "train_x.jsonl"), ("x", "again", "train_x.jsonl"),
                              ("y", "absent", "nope.jsonl")], tmp_path)
    assert [r[1] for r in got] == ["HSTU", "most popular", "again"]
    assert got[0][-4:] == ["0.910", "2 (1)", "3 min", "`train_x.jsonl`"]
    with pytest.raises(ValueError, match="no test record"):
        results_table.rows([("x", "HSTU", "train_unfinished.jsonl")], tmp_path)
    with pytest.raises(ValueError, match="no <!-- results-table"):
        results_table.replace_block("no block here", "table")
    assert results_table.replace_block(f"a\n{results_table.BEGIN}\nold\n{results_table.END}\nb", "new") == (
        f"a\n{results_table.BEGIN}\nnew\n{results_table.END}\nb")
