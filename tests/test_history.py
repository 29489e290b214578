"""The external record history: the CSV kept as data, its loader and its table."""

from __future__ import annotations


import pytest
from rich.console import Console

from speedrun.errors import SpeedrunError
from speedrun.cli.leaderboard import history_table
from speedrun.ledger.history import (default_history_path, default_history_paths, format_seconds,
                                     load_history)

HEADER = "track,number,record_time_seconds,description,date_iso,contributors\n"


def render(table, width: int = 200) -> str:
    console = Console(record=True, width=width)
    console.print(table)
    return console.export_text()


def test_shipped_history_has_every_row_mapped_to_our_tracks():
    rows = load_history()
    assert len(rows) == 155
    assert sum(r.track == "gpt2-small" for r in rows) == 91
    assert sum(r.track == "gpt2-medium" for r in rows) == 18
    assert sum(r.track == "optimization" for r in rows) == 46
    first = rows[0]
    assert (first.track, first.number, first.seconds, first.description, first.date, first.contributors) == \
        ("gpt2-small", 1, 2700.0, "llm.c baseline", "2024-05-28", ("@karpathy", "llm.c contributors"))
    assert first.source_track == "track_1_short" and first.self_reported
    assert (first.value, first.unit, first.steps, first.margin_score) == (2700.0, "s", None, None)
    for track in ("gpt2-small", "gpt2-medium", "optimization"):
        numbers = [r.number for r in rows if r.track == track]
        assert numbers == sorted(numbers) and set(numbers) == set(range(1, max(numbers) + 1))
    retimed = [r.seconds for r in rows if r.track == "gpt2-small" and r.number == 21]
    assert retimed == [175.98, 179.82, 180.84]  # record #21 re-timed twice under later rules


def test_optimization_rows_carry_steps_and_evidence():
    rows = {r.number: r for r in load_history() if r.track == "optimization"}
    assert all(r.seconds is None and r.unit == "steps" and r.source_track == "track_3_optimization"
               for r in rows.values())
    r5 = rows[5]
    assert (r5.steps, r5.value, r5.n, r5.judged_step, r5.figures_from, r5.world_record) == \
        (3325, 3325.0, 10, 3325, "logs", True)
    assert r5.mean_loss == 3.27821 and r5.readme_mean_loss == 3.2782
    # the published validity is the margin rule on the row's own figures, for every row
    for r in rows.values():
        assert r.valid == (r.margin_score >= 0.004 - 1e-12), r.number
    assert [n for n, r in rows.items() if not r.valid] == [1, 2, 3]
    # where README and logs disagree the logs win, and the row says so
    assert (rows[6].mean_loss, rows[6].readme_mean_loss) == (3.278929, 3.2788) and "3.2788" in rows[6].note
    assert rows[8].mean_loss == 3.277977 and "3.2778" in rows[8].note
    for r in rows.values():
        if r.figures_from == "logs" and round(r.mean_loss, 4) != r.readme_mean_loss:
            assert r.note, r.number
    world_records = [r.steps for r in rows.values() if r.world_record]
    assert world_records == sorted(world_records, reverse=True) and world_records[-1] == 2690
    assert rows[46].note.startswith("judged on val_ema_loss at step 2690")


def test_undated_row_and_missing_contributors():
    undated = [r for r in load_history() if not r.date]
    assert [(r.track, r.number, r.seconds) for r in undated] == [("gpt2-medium", 11, 1407.0)]
    assert undated[0].contributors == () and undated[0].day is None


def test_history_dir_is_marked_external_and_self_reported():
    readme = (default_history_path().parent / "README.md").read_text()
    assert "self-reported" in readme.lower() and "external" in readme.lower()
    assert "modded-nanogpt" in readme


@pytest.mark.parametrize("row, problem", [
    ("track_9_long,1,100,x,2024-01-01,@a\n", "field 'track': unknown track 'track_9_long'"),
    ("track_1_short,one,100,x,2024-01-01,@a\n", "field 'number': expected an integer"),
    ("track_1_short,1,fast,x,2024-01-01,@a\n", "field 'record_time_seconds'"),
    ("track_1_short,1,-5,x,2024-01-01,@a\n", "field 'record_time_seconds': must be positive"),
    ("track_1_short,1,100,x,01/02/2024,@a\n", "field 'date_iso': expected YYYY-MM-DD"),
    ("track_1_short,1,100,x\n", "expected 6 columns"),
])
def test_bad_rows_name_file_line_and_field(tmp_path, row, problem):
    path = tmp_path / "h.csv"
    path.write_text(HEADER + "track_1_short,1,100,ok,2024-01-01,@a\n" + row)
    with pytest.raises(SpeedrunError) as err:
        load_history(path)
    assert str(err.value).startswith(f"{path}:3: ") and problem in str(err.value)


def test_missing_column_and_missing_file(tmp_path):
    path = tmp_path / "h.csv"
    path.write_text("track,number\ntrack_1_short,1\n")
    with pytest.raises(SpeedrunError, match="missing column 'record_time_seconds'"):
        load_history(path)
    with pytest.raises(SpeedrunError, match="nope.csv: cannot read"):
        load_history(tmp_path / "nope.csv")


def test_table_for_one_track_and_all():
    rows = load_history()
    medium = history_table(rows, "gpt2-medium")
    assert medium.row_count == 18 and "track" not in [c.header for c in medium.columns]
    assert "evidence" not in [c.header for c in medium.columns]
    text = render(medium)
    assert "5:48:00.0" in text and "Bulk transfer short track features" in text
    assert "external, self-reported" in text
    everything = history_table(rows)
    assert everything.row_count == 155 and everything.columns[0].header == "track"


def test_table_of_the_optimization_track():
    table = history_table(load_history(), "optimization")
    assert table.row_count == 46
    assert [c.header for c in table.columns][:4] == ["#", "record", "steps", "evidence"]
    text = render(table, width=400)
    assert "2690 steps (WR)" in text and "3.27833 (n=8) @2690, 0.00473 ok" in text
    assert "3.27765 (n=1) @3600, 0.00235 fails rule" in text and "3.2790 (n=30) (README), 0.00548 ok" in text
    assert "README gives 3.2788; the logs give 3.278929" in text


def test_optimization_rows_are_validated(tmp_path):
    path = tmp_path / "opt.csv"
    header = ",".join(["track", "number", "steps", "mean_loss", "n", "figures_from", "judged_step",
                       "readme_mean_loss", "readme_n", "valid", "world_record", "description", "date_iso",
                       "contributors", "note"]) + "\n"
    good = "track_3_optimization,1,3000,3.2770,4,readme,,3.2770,4,true,true,x,2026-01-01,@a,\n"
    path.write_text(header + good)
    (row,) = load_history(path)
    assert (row.track, row.steps, row.margin_score) == ("optimization", 3000, pytest.approx(0.006))
    for bad, problem in [
        ("track_1_short,2,3000,3.2770,4,readme,,3.2770,4,true,true,x,2026-01-01,@a,", "wallclock track"),
        ("track_3_optimization,2,-3,3.2770,4,readme,,3.2770,4,true,true,x,2026-01-01,@a,", "'steps': must be"),
        ("track_3_optimization,2,3000,3.2770,4,logs,,3.2770,4,true,true,x,2026-01-01,@a,", "'judged_step'"),
        ("track_3_optimization,2,3000,3.2770,4,readme,,3.2770,4,yes,true,x,2026-01-01,@a,", "'valid': expected"),
        ("track_3_optimization,2,3000,nan,4,readme,,3.2770,4,true,true,x,2026-01-01,@a,", "'mean_loss'"),
    ]:
        path.write_text(header + good + bad + "\n")
        with pytest.raises(SpeedrunError) as err:
            load_history(path)
        assert str(err.value).startswith(f"{path}:3: ") and problem in str(err.value)


def test_default_paths_are_both_tables():
    assert [p.name for p in default_history_paths()] == ["modded-nanogpt.csv", "modded-nanogpt-optimization.csv"]
    assert default_history_paths()[0] == default_history_path()


def test_format_seconds():
    assert [format_seconds(s) for s in (20880, 1758, 73.8, 59.95, 12.3)] == \
        ["5:48:00.0", "29:18.0", "1:13.8", "1:00.0", "12.3 s"]
