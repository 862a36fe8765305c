"""The one output module of the reading commands: each format written one way."""
import datetime as dt
import io
import json

import numpy as np
import pytest

from deepcrate.query.output import write_csv, write_json, write_m3u, write_table

pytestmark = pytest.mark.unit

ROWS = [{"song": "a\tb", "day": dt.date(2010, 6, 30), "score": np.float32(0.5), "tags": ["x", "y"], "img": b"\x00\xff",
         "missing": float("nan")},
        {"song": "c", "day": None, "score": 1.25, "tags": [], "img": b"", "missing": None}]


def test_json_is_a_list_of_row_objects_with_plain_values():
    out = io.StringIO()
    assert write_json(iter(ROWS), out) == 2
    assert json.loads(out.getvalue()) == [
        {"song": "a\tb", "day": "2010-06-30", "score": 0.5, "tags": ["x", "y"], "img": "AP8=", "missing": None},
        {"song": "c", "day": None, "score": 1.25, "tags": [], "img": "", "missing": None}]
    empty = io.StringIO()
    assert write_json(iter([]), empty) == 0 and json.loads(empty.getvalue()) == []


def test_csv_and_table_show_the_same_cells():
    columns = list(ROWS[0])
    rows = [list(row.values()) for row in ROWS]
    csv_out = io.StringIO()
    assert write_csv(columns, rows, csv_out) == 2
    assert csv_out.getvalue().splitlines() == ["song,day,score,tags,img,missing",
                                               'a\tb,2010-06-30,0.5,"[""x"", ""y""]",AP8=,', "c,,1.25,[],,"]
    table = io.StringIO()
    assert write_table(columns, rows, table, notes=[["why: one"], []]) == 2
    lines = table.getvalue().splitlines()
    assert lines[0].split() == columns and set(lines[1]) == {"-", " "}
    assert lines[2].split() == ["a\\tb", "2010-06-30", "0.5", '["x",', '"y"]', "AP8="]  # a tab cannot split a row
    assert lines[3] == "    why: one" and lines[4].split() == ["c", "1.25", "[]"] and lines[5] == "(2 rows)"


def test_a_table_cuts_long_values_unless_told_not_to():
    cut, whole = io.StringIO(), io.StringIO()
    write_table(["path"], [["x" * 80]], cut, width=20, count=False)
    write_table(["path"], [["x" * 80]], whole, width=None, count=False)
    assert cut.getvalue().splitlines()[2] == "x" * 17 + "..." and whole.getvalue().splitlines()[2] == "x" * 80


def test_m3u_is_extended_m3u():
    out = io.StringIO()
    assert write_m3u([("Artist - Title", 184.6, "/music/a.mp3")], out) == 1
    assert out.getvalue() == "#EXTM3U\n#EXTINF:185,Artist - Title\n/music/a.mp3\n"
