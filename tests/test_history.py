"""The external record history: the CSV kept as data, its loader and its table."""

from __future__ import annotations


import pytest
from rich.console import Console

from speedrun.errors import SpeedrunError
from speedrun.history import default_history_path, format_seconds, history_table, load_history

HEADER = "track,number,record_time_seconds,description,date_iso,contributors\n"


def render(table) -> str:
    console = Console(record=True, width=200)
    console.print(table)
    return console.export_text()


def test_shipped_history_has_every_row_mapped_to_our_tracks():
    rows = load_history()
    assert len(rows) == 109
    assert sum(r.track == "gpt2-small" for r in rows) == 91
    assert sum(r.track == "gpt2-medium" for r in rows) == 18
    first = rows[0]
    assert (first.track, first.number, first.seconds, first.description, first.date, first.contributors) == \
        ("gpt2-small", 1, 2700.0, "llm.c baseline", "2024-05-28", ("@karpathy", "llm.c contributors"))
    assert first.source_track == "track_1_short" and first.self_reported
    for track in ("gpt2-small", "gpt2-medium"):
        numbers = [r.number for r in rows if r.track == track]
        assert numbers == sorted(numbers) and set(numbers) == set(range(1, max(numbers) + 1))
    retimed = [r.seconds for r in rows if r.track == "gpt2-small" and r.number == 21]
    assert retimed == [175.98, 179.82, 180.84]  # record #21 re-timed twice under later rules


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
    text = render(medium)
    assert "5:48:00.0" in text and "Bulk transfer short track features" in text
    assert "external, self-reported" in text
    everything = history_table(rows)
    assert everything.row_count == 109 and everything.columns[0].header == "track"


def test_format_seconds():
    assert [format_seconds(s) for s in (20880, 1758, 73.8, 59.95, 12.3)] == \
        ["5:48:00.0", "29:18.0", "1:13.8", "1:00.0", "12.3 s"]
