"""dataio.load_items, THE item reader: released shapes accepted, every bad input named by file and line/index;
grpo.py and eval_knowgen.py stop with one message on an empty items file (subprocess: exit code + message)."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import dataio  # noqa: E402

ITEMS = [{"id": 1, "prompt": "The flag of Australia", "meta": {"category": "Geography", "difficulty": "easy"},
          "gt_image": "gt/1.png"},
         {"id": "b", "prompt": "Two anime heroes", "meta": {"category": "Multi_subject Anime",
                                                           "difficulty": "multiple subject"},
          "gen_image": "/abs/b.png"}]


def _expect(tmp_path):
    return [{"id": "1", "prompt": "The flag of Australia", "meta": {"category": "geography", "difficulty": "easy"},
             "gt_image": str(tmp_path / "gt" / "1.png")},
            {"id": "b", "prompt": "Two anime heroes", "meta": {"category": "multi-subject-anime",
                                                              "difficulty": "multiple subject"},
             "gt_image": "/abs/b.png"}]


def test_json_list_and_jsonl_give_the_same_items(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps(ITEMS, indent=2))
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ITEMS) + "\n")
    assert dataio.load_items(str(tmp_path / "a.json")) == _expect(tmp_path)
    assert dataio.load_items(str(tmp_path / "a.jsonl")) == _expect(tmp_path)
    # the legacy key is gone after reading, the relative path resolved against the file's folder
    assert "gen_image" not in dataio.load_items(str(tmp_path / "a.json"))[1]


def test_top_level_category_and_raw_paths(tmp_path):
    p = tmp_path / "rl.json"
    p.write_text(json.dumps([{"id": 0, "prompt": "x", "category": "Film", "gt_image": "i/0.png"}]))
    it = dataio.load_items(str(p), resolve_paths=False)[0]
    assert it["meta"] == {"category": "film"} and it["gt_image"] == "i/0.png"


@pytest.mark.parametrize("name,body,where,what", [
    ("bad.jsonl", b'{"id": 1, "prompt": "a"}\n{"id": 2, "prompt": \n', ":2:", "not valid JSON"),
    ("bad.jsonl", b'{"id": 1, "prompt": "a"}\n\n{"id": 2, "prompt": "caf\xe9"}\n', ":3:", "not UTF-8"),
    ("bad.jsonl", b'{"id": 1, "prompt": "a"}\n[1, 2]\n', ":2:", "expected a JSON object"),
    ("bad.jsonl", b'{"id": 1, "prompt": "a"}\n{"id": 2}\n', ":2:", "has no prompt"),
    ("bad.jsonl", b'{"id": 1, "prompt": "a"}\n{"id": 2, "prompt": "  "}\n', ":2:", "has no prompt"),
    ("bad.jsonl", b'{"prompt": "a"}\n', ":1:", "without an 'id'"),
    ("bad.jsonl", b'{"id": 1, "prompt": "a"}\n{"id": "1", "prompt": "b"}\n', ":2:", "duplicate id '1'"),
    ("bad.json", b'[{"id": 1, "prompt": "a"},\n {"id": 2, "prompt": "b", "meta": 3}]', "[1]", "'meta' must be"),
    ("bad.json", b'[{"id": 1, "prompt": "a"},\n {"id": 2, "prompt": "b",}]', ":2:", "not valid JSON"),
    ("bad.json", b'[{"id": 1, "prompt": "a", "gt_image": 5}]', "[0]", "gt_image must be a path"),
])
def test_bad_input_names_file_and_line(tmp_path, name, body, where, what):
    p = tmp_path / name
    p.write_bytes(body)
    with pytest.raises(dataio.ItemsError) as e:
        dataio.load_items(str(p))
    msg = str(e.value)
    assert msg.startswith(str(p) + where) and what in msg, msg


def test_need_gt_and_missing_file(tmp_path):
    p = tmp_path / "rl.jsonl"
    p.write_text('{"id": 1, "prompt": "a", "gt_image": "x.png"}\n{"id": 2, "prompt": "b"}\n')
    with pytest.raises(dataio.ItemsError, match=r"rl\.jsonl:2: item '2' has no gt_image"):
        dataio.load_items(str(p), need_gt=True)
    with pytest.raises(dataio.ItemsError, match="no such file"):
        dataio.load_items(str(tmp_path / "nope.jsonl"))


def test_read_jsonl_blank_lines_and_line_numbers(tmp_path):
    """The one JSONL reader: blank / whitespace lines skipped, rows keep their real line numbers, a string holding
    U+2028 or \\x85 (str.splitlines would break there) stays one row, CRLF line ends are fine."""
    p = tmp_path / "x.jsonl"
    p.write_bytes(b'\n{"id": "a"}\r\n   \n\n' + json.dumps({"id": "b", "t": "x\u2028y\x85z"}, ensure_ascii=False)
                  .encode() + b'\n\n')
    assert dataio.read_jsonl(str(p)) == [(2, {"id": "a"}), (5, {"id": "b", "t": "x\u2028y\x85z"})]
    assert dataio.read_jsonl(str(tmp_path / "none.jsonl"), missing_ok=True) == []
    with pytest.raises(dataio.ItemsError, match="no such file"):
        dataio.read_jsonl(str(tmp_path / "none.jsonl"))


def test_read_jsonl_bad_line_names_file_and_line(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_text('{"id": "a"}\n\n{"id": "b"\n{"id": "c"}\n')
    with pytest.raises(dataio.ItemsError) as e:
        dataio.read_jsonl(str(p))
    assert str(e.value).startswith(f"{p}:3: not valid JSON ("), str(e.value)
    p.write_text('{"id": "a"}\n"just a string"\n')
    with pytest.raises(dataio.ItemsError, match=f"{p}:2: expected a JSON object, got str"):
        dataio.read_jsonl(str(p))


def test_read_jsonl_repair_cuts_a_torn_last_line(tmp_path, capsys):
    p = tmp_path / "stage.jsonl"
    body = '{"id": "a"}\n{"id": "b"}\n'
    p.write_text(body + '{"id": "c", "tr')
    # without repair the torn line is an error like any other bad line, and the file is left alone
    with pytest.raises(dataio.ItemsError, match=f"{p}:3: not valid JSON"):
        dataio.read_jsonl(str(p))
    assert p.read_text() == body + '{"id": "c", "tr'
    # with repair it is dropped and cut, so the next append starts on a clean line
    assert [r["id"] for _, r in dataio.read_jsonl(str(p), repair=True)] == ["a", "b"]
    assert p.read_text() == body and "dropping a torn last line (15 bytes" in capsys.readouterr().out
    with open(p, "a") as f:
        f.write('{"id": "c"}\n')
    assert [r["id"] for _, r in dataio.read_jsonl(str(p), repair=True)] == ["a", "b", "c"]
    assert "torn" not in capsys.readouterr().out  # a clean file is not touched
    # repair is only about the tail: a bad complete line is still an error naming file:line
    p.write_text('{"id": "a"}\n{oops}\n{"id": "b"}\n')
    with pytest.raises(dataio.ItemsError, match=f"{p}:2: not valid JSON"):
        dataio.read_jsonl(str(p), repair=True)


def _env():
    return dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")


def test_grpo_stops_on_empty_or_bad_items_before_any_model(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    bad = tmp_path / "bad.json"
    bad.write_bytes(b'[{"id": 1, "prompt": "a", "gt_image": "x.png"},\n {"id": 2}]')
    for path, what in ((empty, "has 0 items"), (bad, f"{bad}[1]: item 2 has no prompt")):
        out = tmp_path / ("out_" + path.stem)
        # tokenizer_dir does not exist: reaching the model build would fail differently
        p = subprocess.run([sys.executable, "grpo.py", "config/grpo_runcpu.py", "--init_from=scratch",
                            f"--tokenizer_dir={tmp_path / 'no_tokenizer'}", f"--data_path={path}",
                            f"--out_dir={out}"], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
        assert p.returncode != 0 and what in p.stderr, p.stderr[-2000:]
        assert "Traceback" not in p.stderr
        assert not (out / "final").exists()


def test_eval_stops_on_empty_items(tmp_path):
    empty = tmp_path / "bench.jsonl"
    empty.write_text("")
    p = subprocess.run([sys.executable, "eval_knowgen.py", f"--items_path={empty}", f"--out_dir={tmp_path / 'o'}"],
                       cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert p.returncode != 0 and "no items to evaluate" in p.stderr and "Traceback" not in p.stderr, p.stderr


def test_grpo_limit_cuts_the_items_and_a_too_small_pool_is_named(tmp_path):
    """grpo.py's limit keeps the first N items; fewer than n_prompts stops before any model is built, naming the
    file and the limit, and writes nothing."""
    p = tmp_path / "rl.jsonl"
    p.write_text("".join(json.dumps({"id": i, "prompt": "a", "gt_image": "x.png"}) + "\n" for i in range(10)))
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "grpo.py", "config/grpo_runcpu.py", f"--data_path={p}", "--limit=6",
                        f"--out_dir={out}"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and f"{p} has 6 items (limit=6), fewer than n_prompts=8" in r.stderr, r.stderr
    assert not out.exists()
