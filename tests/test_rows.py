import json
import sys
from pathlib import Path

import pytest

from longrl.data.rows import LETTERS, Row, RowError, format_options, load_rows, row_from_dict, save_rows


def _write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def _good(i: int = 0, **changes) -> dict:
    record = {
        "id": f"q{i}",
        "video": f"clips/{i}.mp4",
        "question": "What happens?",
        "options": ["red", "blue", "green", "yellow"],
        "answer": "C",
    }
    record.update(changes)
    return record


def test_letters_and_format_options():
    assert LETTERS[:4] == "ABCD" and len(LETTERS) == 26
    assert format_options(["red", "blue", "x y"]) == "A. red\nB. blue\nC. x y"


def test_jsonl_roundtrip_resolves_videos_against_file_folder(tmp_path):
    rows = [
        Row(
            id="a",
            video="videos/a.mp4",
            question="Q1?",
            options=["x", "y"],
            answer="B",
            reasoning="because",
            category="Temporal",
            extra={"events": [{"t": 1.5}]},
        ),
        Row(id="b", video=None, question="Q2?", options=["p", "q", "r"], answer="A", image="img/b.png"),
    ]
    path = save_rows(rows, tmp_path / "sub" / "data.jsonl")
    loaded = load_rows(path)
    assert [r.id for r in loaded] == ["a", "b"]
    assert loaded[0].video == str(tmp_path / "sub" / "videos" / "a.mp4")
    assert loaded[1].video is None and loaded[1].image == str(tmp_path / "sub" / "img" / "b.png")
    assert loaded[0].answer_text == "y" and loaded[0].answer_index == 1
    assert (loaded[0].reasoning, loaded[0].category, loaded[0].extra) == (
        "because",
        "Temporal",
        {"events": [{"t": 1.5}]},
    )
    assert loaded[1].options == ["p", "q", "r"] and loaded[1].extra == {}


def test_parquet_roundtrip_with_media_root(tmp_path):
    pytest.importorskip("pyarrow")
    rows = [
        Row(id="a", video="a.mp4", question="Q?", options=["x", "y"], answer="A", extra={"k": [1, 2]}),
        Row(id="b", video="/abs/b.mp4", question="Q?", options=["x", "y", "z"], answer="C"),
    ]
    path = save_rows(rows, tmp_path / "data.parquet")
    loaded = load_rows(path, media_root=tmp_path / "media")
    assert loaded[0].video == str(tmp_path / "media" / "a.mp4")
    assert loaded[1].video == "/abs/b.mp4"  # absolute paths are kept
    assert loaded[0].extra == {"k": [1, 2]} and loaded[1].options == ["x", "y", "z"] and loaded[1].answer == "C"


def test_normalisation_of_answers_options_ids_and_unknown_keys():
    base = dict(id=7, question="Q?", options=["A. red", "B. blue", "C. green"])
    assert row_from_dict({**base, "answer": "(B)"}).answer == "B"
    assert row_from_dict({**base, "answer": "C."}).answer == "C"
    row = row_from_dict({**base, "answer": "blue", "duration": 12.5, "source": "x"})
    assert row.options == ["red", "blue", "green"]  # own-letter prefixes stripped
    assert row.answer == "B" and row.id == "7" and row.video is None
    assert row.extra == {"duration": 12.5, "source": "x"}
    # A prefix that is not the option's own letter is content, not a label.
    assert row_from_dict({**base, "options": ["B. x", "A. y"], "answer": "A"}).options == ["B. x", "A. y"]
    assert row_from_dict(_good(video="https://host/v.mp4"), media_root="/data").video == "https://host/v.mp4"


@pytest.mark.parametrize(
    "bad, problem",
    [
        ({"question": None}, "missing field(s) question"),
        ({"options": "red, blue"}, "options must be a list of 2 to 26 strings, got str"),
        ({"options": ["only"]}, "got 1 item(s)"),
        ({"options": [f"o{i}" for i in range(27)]}, "got 27 item(s)"),
        ({"options": ["red", 3]}, "option B is 3"),
        ({"answer": "E"}, "answer 'E' is out of range for 4 options (A-D)"),
        ({"answer": "purple"}, "answer 'purple' is neither a letter A-D nor the text of exactly one option"),
        ({"answer": 2}, "answer 2 is neither"),
        ({"video": 5}, "video must be a path string or null"),
    ],
)
def test_row_errors_name_file_line_and_id(tmp_path, bad, problem):
    path = _write_jsonl(tmp_path / "d.jsonl", [_good(0), "", _good(1, **bad)])  # blank line 2 is skipped
    with pytest.raises(RowError) as info:
        load_rows(path)
    message = str(info.value)
    assert f"{path} line 3 (id='q1')" in message
    assert problem in message
    assert "Fix:" in message


def test_missing_id_and_bad_json_are_reported_with_line(tmp_path):
    path = _write_jsonl(tmp_path / "d.jsonl", [_good(0), {k: v for k, v in _good(1).items() if k != "id"}])
    with pytest.raises(RowError, match=r"d\.jsonl line 2 \(id=None\): missing field\(s\) id"):
        load_rows(path)
    path = _write_jsonl(tmp_path / "e.jsonl", [_good(0), '{"id": "q1", '])
    with pytest.raises(RowError, match=r"e\.jsonl line 2: not valid JSON"):
        load_rows(path)


def test_parquet_errors_name_row_index(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    records = [_good(0), _good(1, answer="Z")]
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.Table.from_pylist(records), path)
    with pytest.raises(RowError, match=r"bad\.parquet row 1 \(id='q1'\): answer 'Z' is out of range"):
        load_rows(path)


def test_missing_file_unknown_suffix_and_pyarrow_hint(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_rows(tmp_path / "nope.jsonl")
    (tmp_path / "d.csv").write_text("id\n")
    with pytest.raises(RowError, match="use a .jsonl or .parquet file"):
        load_rows(tmp_path / "d.csv")
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow -> ImportError
    with pytest.raises(ImportError, match=r"pip install 'longrl\[parquet\]'"):
        save_rows([Row(id="a", video=None, question="Q", options=["x", "y"], answer="A")], tmp_path / "d.parquet")


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_free_text_rows_roundtrip(tmp_path, suffix):
    if suffix == ".parquet":
        pytest.importorskip("pyarrow")
    rows = [
        row_from_dict({"id": "f", "question": "2 + 4?", "answer": 6}),
        row_from_dict({"id": "g", "question": "Name it.", "options": None, "answer": " a red cube "}),
        row_from_dict({**_good(1), "answer": "yellow"}),
    ]
    assert [(r.options, r.answer, r.answer_text) for r in rows[:2]] == [
        ([], "6", "6"),
        ([], "a red cube", "a red cube"),
    ]
    with pytest.raises(ValueError, match="row f has no options"):
        _ = rows[0].answer_index
    loaded = load_rows(save_rows(rows, tmp_path / f"d{suffix}"))
    assert [(r.options, r.answer) for r in loaded] == [
        ([], "6"),
        ([], "a red cube"),
        (["red", "blue", "green", "yellow"], "D"),
    ]
