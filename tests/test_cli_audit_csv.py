"""audit's dataset CSV: read as pandas.read_csv (Open-Sora's reader) reads it, in chunks, with its values checked.

The oracle is pandas itself, called the way Open-Sora 1.2/1.3/2.0 call it (``pd.read_csv(path)``, all defaults).
"""

import io
import math
from collections import Counter
from pathlib import Path

import pandas as pd

import pytest

from opensora_timeshift_patch.cli import audit, main

FIXTURES = Path(__file__).parent / "fixtures"
STAGE1_2_0 = FIXTURES / "opensora_v2_stage1.py"
MISSING = "the field is empty, a missing-value word such as NaN, or the row is short of fields"


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def as_pandas_counts(path):
    """Clips per (height, width, num_frames) as Open-Sora's pd.read_csv(path) reads the file."""
    frame = pd.read_csv(path)
    return Counter({tuple(int(v) for v in key): int(n)
                    for key, n in frame.groupby(["height", "width", "num_frames"]).size().items()})


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of 3 rows, so every file below spans several and chunk boundaries fall everywhere."""
    monkeypatch.setattr(audit, "CHUNK_ROWS", 3)


MESSY = (
    "\ufeffpath,text,num_frames,height,width,fps\r\n"
    '/c/0.mp4,"a caption, with a comma",16,240,426,24\r\n'
    '/c/1.mp4,"two\nlines and ""quotes""",17,240,426,30\r\n'
    "\r\n"
    "/c/2.mp4,plain, 51 ,480,854,24\r\n"
    "/c/3.mp4,float,17.0,240,426,24\r\n"
    "/c/4.mp4,exponent,5.1e1,480,854,\r\n"
    "/c/5.mp4,image,1,720,1280,24\r\n"
    '"/c/6.mp4","quoted numbers","16","240","426","24"\r\n'
    "/c/7.mp4,plus,+16,240,426,24\r\n"
)


@pytest.mark.parametrize("chunk_rows", [3, 1 << 18])
def test_clip_counts_are_pandas_own(chunk_rows, tmp_path, monkeypatch):
    monkeypatch.setattr(audit, "CHUNK_ROWS", chunk_rows)
    data = tmp_path / "messy.csv"
    data.write_bytes(MESSY.encode("utf-8"))
    buckets, skipped, examples = audit.read_csv_buckets(str(data), progress=False, skip_bad_rows=False)
    expected = as_pandas_counts(data)
    assert buckets == expected and not skipped and not examples
    assert expected == Counter({(240, 426, 16): 3, (240, 426, 17): 2, (480, 854, 51): 2, (720, 1280, 1): 1})


def test_fps_is_read_as_pandas_reads_it(tmp_path, small_chunks):
    data = tmp_path / "messy.csv"
    data.write_bytes(MESSY.encode("utf-8"))
    buckets, _, _ = audit.read_csv_buckets(str(data), progress=False, skip_bad_rows=False, fps=True)
    frame = pd.read_csv(data)
    expected = Counter()
    for h, w, n, fps in frame[["height", "width", "num_frames", "fps"]].itertuples(index=False):
        expected[(int(h), int(w), int(n), None if math.isnan(fps) else float(fps))] += 1
    assert buckets == expected and expected[(480, 854, 51, None)] == 1  # the empty fps: NaN, no stride


def test_a_text_value_leaves_the_rest_of_its_chunk_read_as_numbers(tmp_path):
    # one text value turns pandas' whole chunk column into text; the other rows still count with pandas' numbers
    data = tmp_path / "mixed.csv"
    data.write_text("path,num_frames,height,width\na, 17.0 ,256,256\nb,sixteen,256,256\nc,5.1e1,256,256\n"
                    "d,16,256,256\n")
    buckets, skipped, examples = audit.read_csv_buckets(str(data), progress=False, skip_bad_rows=True)
    assert buckets == Counter({(256, 256, 17): 1, (256, 256, 51): 1, (256, 256, 16): 1})
    assert skipped == Counter({"non-numeric num_frames": 1}) and examples == [
        "row 3: non-numeric num_frames: 'sixteen'"]


def test_row_numbers_count_across_chunks(tmp_path, small_chunks, capsys):
    rows = [f"c{i},16,256,256\n" for i in range(10)]
    rows[8] = "c8,0,256,256\n"  # row 10: the header is row 1
    data = tmp_path / "d.csv"
    data.write_text("path,num_frames,height,width\n" + "".join(rows))
    code, _, err = run(capsys, "audit", "--csv", data, "--no-progress")
    assert code == 2 and f"{data}, row 10: invalid num_frames: 0 is not a whole number from 1 to 2147483647" in err


def test_skipped_rows_are_counted_per_reason_across_chunks(tmp_path, small_chunks, capsys):
    bad = ["x,nan,256,256", "x,16,NA,256", "x,16,256,", "x,True,256,256", "x,16.5,256,256", "x,16,256,256,surplus",
           "x,1e400,256,256", "x,2147483648,256,256", "x,-16,256,256"]
    good = [f"g,{n},256,256" for n in (16, 17, 2147483647)]
    data = tmp_path / "d.csv"
    data.write_text("path,num_frames,height,width\n" + "\n".join(good[:1] + bad + good[1:]) + "\n")
    buckets, skipped, examples = audit.read_csv_buckets(str(data), progress=False, skip_bad_rows=True)
    assert buckets == Counter({(256, 256, 16): 1, (256, 256, 17): 1, (256, 256, 2147483647): 1})
    # "1e400" is what pandas makes of it: inf since pandas 3 (invalid), the text itself before (non-numeric).
    huge = "invalid" if _pandas_reads_as_number("1e400") else "non-numeric"
    expected = Counter({"missing num_frames": 1, "missing height": 1, "missing width": 1,
                        "non-numeric num_frames": 1, "invalid num_frames": 3, "extra fields": 1})
    expected[f"{huge} num_frames"] += 1
    assert skipped == expected
    assert examples == [
        f"row 3: missing num_frames: {MISSING}", f"row 4: missing height: {MISSING}", f"row 5: missing width: {MISSING}",
        "row 6: non-numeric num_frames: 'True'",
        "row 7: invalid num_frames: 16.5 is not a whole number from 1 to 2147483647"]


def test_a_surplus_field_is_a_malformed_row_as_pandas_refuses_the_file(tmp_path, capsys):
    data = tmp_path / "d.csv"
    data.write_text("path,num_frames,height,width\na,16,256,256\nb,17,256,256,surplus\nc,51,256,256\n")
    with pytest.raises(pd.errors.ParserError):  # the premise: Open-Sora's read fails on such a file
        pd.read_csv(data)
    code, _, err = run(capsys, "audit", "--csv", data, "--no-progress")
    assert code == 2 and "row 3: extra fields" in err and "refuses the whole file" in err


def test_a_first_row_longer_than_the_header_is_refused(tmp_path, capsys):
    data = tmp_path / "d.csv"
    data.write_text("num_frames,height,width\n16,256,256,\n17,256,256\n")
    shifted = pd.read_csv(data)  # the premise: pandas makes the surplus the index and shifts every column
    assert list(shifted.index) == [16, 17] and shifted["num_frames"].tolist() == [256, 256]
    code, out, err = run(capsys, "audit", "--csv", data, "--no-progress", "--skip-bad-rows")
    assert code == 2 and len(err.splitlines()) == 1 and "row 2 has 1 more field(s) than the header's 3" in err
    assert "OK" not in out


def test_bytes_that_are_not_utf8_in_a_column_audit_does_not_need(tmp_path, capsys):
    data = tmp_path / "d.csv"
    data.write_bytes(b"path,text,num_frames,height,width\na,ok,16,256,256\nb,caf\xe9,17,256,256\n")
    with pytest.raises(UnicodeDecodeError):  # the premise: Open-Sora's read decodes every column
        pd.read_csv(data)
    code, _, err = run(capsys, "audit", "--csv", data, "--no-progress")
    assert code == 2 and "is not UTF-8 text (invalid continuation byte at line 3)" in err


def test_open_sora_2_fps_beyond_float64_is_a_named_malformed_row(tmp_path, capsys):
    data = tmp_path / "d.csv"
    data.write_text("path,num_frames,height,width,fps\na,33,256,256,1e400\nb,33,256,256,24\n")
    code, out, err = run(capsys, "audit", "--opensora-version", "2.0", "--config", STAGE1_2_0, "--csv", data,
                         "--no-progress")
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
    if _pandas_reads_as_number("1e400"):  # pandas 3: inf
        assert "row 2: invalid fps: inf (pandas reads a number beyond float64's range, or inf, as inf) is not a " \
               "finite number >= 0" in err
        reason = "invalid fps"
    else:  # pandas 2 keeps the text
        assert "row 2: non-numeric fps: '1e400'" in err
        reason = "non-numeric fps"
    code, out, err = run(capsys, "audit", "--opensora-version", "2.0", "--config", STAGE1_2_0, "--csv", data,
                         "--no-progress", "--skip-bad-rows")
    assert code == 0 and "1 clips in 1 buckets" in out and f"skipped 1 malformed rows: 1 {reason}" in out


def _pandas_reads_as_number(text):
    """Whether the installed pandas parses ``text`` in a numeric column as a number (as Open-Sora would read it)."""
    return pd.api.types.is_numeric_dtype(pd.read_csv(io.StringIO(f"x\n{text}\n1\n"))["x"])


@pytest.mark.parametrize("text, words", [
    ("", "is empty: no header row"),
    ("\n\n", "is empty: no header row"),
    ("path,num_frames,height,width\n", "has no clips to audit"),
    ("path,num_frames,num_frames,height,width\na,1,2,3,4\n", "column 'num_frames' appears 2 times"),
    ("path,num_frames,height,width,fps,fps\na,1,2,3,4,5\n", "column 'fps' appears 2 times"),
    ('path,num_frames,height,width\n"a,16,256,256\n', "not readable as CSV by pandas.read_csv"),
    (" num_frames,height,width\n16,256,256\n", "missing column(s) num_frames"),
])
def test_files_audit_cannot_read_are_one_line(text, words, tmp_path, capsys):
    data = tmp_path / "d.csv"
    data.write_text(text)
    code, out, err = run(capsys, "audit", "--csv", data, "--no-progress")
    assert code == 2 and len(err.splitlines()) == 1 and words in err and "OK" not in out, err


def test_a_fifo_is_not_opened(tmp_path, capsys):
    fifo = tmp_path / "d.csv"
    fifo_path = str(fifo)
    import os
    os.mkfifo(fifo_path)
    code, _, err = run(capsys, "audit", "--csv", fifo, "--no-progress")  # opening it would block
    assert code == 2 and "is not a regular file" in err


def test_the_largest_sizes_are_judged_without_a_traceback(tmp_path, capsys):
    data = tmp_path / "d.csv"
    data.write_text("num_frames,height,width\n2147483647,2147483647,2147483647\n1,2147483647,1\n")
    code, out, err = run(capsys, "audit", "--csv", data, "--no-progress")
    assert code in (0, 1) and err == "" and "2 clips in 2 buckets" in out


def test_a_byte_order_mark_before_blank_lines(tmp_path):
    data = tmp_path / "d.csv"
    data.write_bytes("\ufeff\n\npath,num_frames,height,width\na,16,256,256\n".encode("utf-8"))
    buckets, skipped, _ = audit.read_csv_buckets(str(data), progress=False, skip_bad_rows=True)
    assert buckets == as_pandas_counts(data) == Counter({(256, 256, 16): 1}) and not skipped


def test_a_column_of_booleans_is_no_frame_count(tmp_path, capsys):
    data = tmp_path / "d.csv"
    data.write_text("num_frames,height,width\nTrue,256,256\nfalse,256,256\n")
    assert pd.read_csv(data)["num_frames"].dtype == bool  # the premise: pandas reads them as booleans
    code, out, err = run(capsys, "audit", "--csv", data, "--no-progress", "--skip-bad-rows")
    assert code == 2 and "all 2 rows are malformed (row 2: non-numeric num_frames: 'True')" in err
