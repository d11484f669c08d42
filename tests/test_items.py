"""rollout.load_items, THE item reader: released shapes accepted, every bad input named by file and line/index;
grpo.py and eval_knowgen.py stop with one message on an empty items file (subprocess: exit code + message)."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import rollout  # noqa: E402

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
    assert rollout.load_items(str(tmp_path / "a.json")) == _expect(tmp_path)
    assert rollout.load_items(str(tmp_path / "a.jsonl")) == _expect(tmp_path)
    # the legacy key is gone after reading, the relative path resolved against the file's folder
    assert "gen_image" not in rollout.load_items(str(tmp_path / "a.json"))[1]


def test_top_level_category_and_raw_paths(tmp_path):
    p = tmp_path / "rl.json"
    p.write_text(json.dumps([{"id": 0, "prompt": "x", "category": "Film", "gt_image": "i/0.png"}]))
    it = rollout.load_items(str(p), resolve_paths=False)[0]
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
    with pytest.raises(rollout.ItemsError) as e:
        rollout.load_items(str(p))
    msg = str(e.value)
    assert msg.startswith(str(p) + where) and what in msg, msg


def test_need_gt_and_missing_file(tmp_path):
    p = tmp_path / "rl.jsonl"
    p.write_text('{"id": 1, "prompt": "a", "gt_image": "x.png"}\n{"id": 2, "prompt": "b"}\n')
    with pytest.raises(rollout.ItemsError, match=r"rl\.jsonl:2: item '2' has no gt_image"):
        rollout.load_items(str(p), need_gt=True)
    with pytest.raises(rollout.ItemsError, match="no such file"):
        rollout.load_items(str(tmp_path / "nope.jsonl"))


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
