# The KnowGen converter on tiny hand-made releases in the release's row format.
import importlib.util
import json
import os

import pytest
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("knowgen_prepare", os.path.join(ROOT, "data", "knowgen", "prepare.py"))
kg = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(kg)


def _release(tmp_path, rows=None, container="list"):
    rel = tmp_path / "release"
    (rel / "images" / "sub").mkdir(parents=True)
    colors = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    for i, c in enumerate(colors):
        Image.new("RGB", (8, 8), c).save(rel / "images" / "sub" / f"k{i}.png")
    rows = rows or [
        {"id": "1", "prompt": "The flag of the country whose capital is Canberra.",
         "meta": {"category": "geography", "difficulty": "easy"}, "gt_image": "images/sub/k0.png"},
        {"id": 2, "prompt": "Poster of the 2024 film ...", "meta": {"category": "Posters", "difficulty": "Hard"},
         "gt_image": "sub/k1.png"},     # relative to image_dir
        {"id": "a/3", "prompt": "Two anime characters ...",
         "meta": {"category": "multi_subject anime", "difficulty": "medium"}, "gt_image": "k2.png"},  # basename
    ]
    data = rows if container == "list" else {"science_and_knowledge": rows[:1], "pop_culture_and_news": rows[1:]}
    path = rel / "KnowGen-Bench.json"
    path.write_text(json.dumps(data))
    return path, rel / "images"


@pytest.mark.parametrize("container", ["list", "dict"])
def test_convert_copies_and_normalises(tmp_path, container):
    bench, images = _release(tmp_path, container=container)
    out = tmp_path / "out"
    items = kg.convert(str(bench), str(images), str(out))
    rows = [json.loads(line) for line in open(out / "knowgen.jsonl")]
    assert rows == items and [r["id"] for r in rows] == ["1", "2", "a/3"]
    assert [r["meta"]["category"] for r in rows] == ["geography", "posters", "multi-subject-anime"]
    assert [r["meta"]["difficulty"] for r in rows] == ["easy", "hard", "medium"]
    assert set(rows[0]) == {"id", "prompt", "meta", "gt_image"}
    # relative gt paths resolve against the JSONL's folder and hold the right pixels
    for r, color in zip(rows, [(255, 0, 0), (0, 255, 0), (0, 0, 255)]):
        assert not os.path.isabs(r["gt_image"])
        assert Image.open(out / r["gt_image"]).convert("RGB").getpixel((0, 0)) == color
    assert rows[2]["gt_image"] == "gt/a_3.png"


def test_convert_without_copy_uses_absolute_paths(tmp_path):
    bench, images = _release(tmp_path)
    items = kg.convert(str(bench), str(images), str(tmp_path / "out"), copy_images=False)
    assert all(os.path.isabs(it["gt_image"]) and os.path.isfile(it["gt_image"]) for it in items)
    assert not (tmp_path / "out" / "gt").exists()


def _bad(tmp_path, mutate):
    rows = [{"id": f"x{i}", "prompt": "p", "meta": {"category": "film", "difficulty": "easy"},
             "gt_image": f"images/sub/k{i}.png"} for i in range(3)]
    mutate(rows)
    bench, images = _release(tmp_path, rows=rows)
    with pytest.raises(ValueError) as e:
        kg.convert(str(bench), str(images), str(tmp_path / "out"))
    assert not (tmp_path / "out" / "knowgen.jsonl").exists()  # nothing half-written
    return str(e.value)


def test_bad_rows_name_the_row_and_key(tmp_path):
    msg = _bad(tmp_path / "a", lambda r: r[1].pop("prompt"))
    assert "KnowGen-Bench.json[1]" in msg and "'prompt'" in msg and "x1" in msg
    msg = _bad(tmp_path / "b", lambda r: r[2]["meta"].update(category="cooking"))
    assert "[2]" in msg and "'x2'" in msg and "cooking" in msg and "category" in msg
    msg = _bad(tmp_path / "c", lambda r: r[0].update(gt_image="images/nope.png"))
    assert "[0]" in msg and "nope.png" in msg
    msg = _bad(tmp_path / "d", lambda r: r[2].update(id="x0"))
    assert "duplicate id 'x0'" in msg
    msg = _bad(tmp_path / "e", lambda r: r[1].pop("meta"))
    assert "[1]" in msg and "'meta'" in msg
    msg = _bad(tmp_path / "f", lambda r: r[1]["meta"].pop("difficulty"))
    assert "[1]" in msg and "difficulty" in msg


def test_released_spellings_are_accepted(tmp_path):
    """The release's own values: a difficulty such as "multiple subject", Capitalised categories, the
    legacy gen_image key for gt_image."""
    rows = [{"id": "r0", "prompt": "p", "meta": {"category": "Multi_subject Anime", "difficulty": "multiple subject"},
             "gen_image": "images/sub/k0.png"},
            {"id": "r1", "prompt": "q", "meta": {"category": "Film", "difficulty": "Hard"},
             "gt_image": "images/sub/k1.png"}]
    bench, images = _release(tmp_path, rows=rows)
    items = kg.convert(str(bench), str(images), str(tmp_path / "out"))
    assert [it["meta"] for it in items] == [{"category": "multi-subject-anime", "difficulty": "multiple subject"},
                                            {"category": "film", "difficulty": "hard"}]


def test_categories_are_knowgens():
    assert len(kg.CATEGORIES) == 24 and len(kg.GROUPS["science_and_knowledge"]) == 15
    with pytest.raises(ValueError, match="top level"):
        kg.iter_rows("nope")
