"""
Convert the released KnowGen benchmark (KnowGen-Bench.json + its ground-truth image folder) into our item
JSONL, from LOCAL files (no hub access on these machines: download the release elsewhere and copy it here).

    python data/knowgen/prepare.py --bench_json=/path/to/KnowGen-Bench.json --image_dir=/path/to/images
    python data/knowgen/prepare.py --bench_json=... --image_dir=... --out_dir=data/knowgen --copy_images=False

Writes out_dir/knowgen.jsonl, one item per line (format: README "Data formats", "KnowGen item"):
    {"id": str, "prompt": str, "meta": {"category": str, "difficulty": str}, "gt_image": path}
With copy_images=True the ground truths are copied to out_dir/gt/<id><ext> and gt_image is the relative path
"gt/<id><ext>" (resolved against the JSONL's directory, as every reader does); otherwise gt_image is the
absolute path of the original file.

The release's rows look like {"id", "prompt", "meta": {"category", "difficulty"}, "gt_image": path}. We are
lenient about the container (a list of rows, or a dict whose values are lists of rows or single rows) and
about the spelling of categories ("Multi_subject Anime" -> "multi-subject-anime"), strict about content: a
row with a missing/empty key, an unknown category or a missing image stops the conversion with an error that
names the row and the key, because a silently dropped item would change the benchmark's group averages.
"""
import json
import os
import re
import shutil
import sys

# -----------------------------------------------------------------------------
# config (override: python data/knowgen/prepare.py --key=value)
bench_json = ""           # path of the released KnowGen-Bench.json (required)
image_dir = ""            # folder holding its ground-truth images ("" = paths relative to the json's folder)
out_dir = "data/knowgen"
out_name = "knowgen.jsonl"
copy_images = True        # copy ground truths into out_dir/gt/ (portable) or point at the originals
# -----------------------------------------------------------------------------

# KnowGen's 24 categories in its two groups: defined once, in eval_knowgen.py (the paper's Table 1)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from eval_knowgen import GROUPS  # noqa: E402
import dataio  # noqa: E402  (THE item reader: dataio.load_items)

CATEGORIES = {c: g for g, cs in GROUPS.items() for c in cs}


def iter_rows(data):
    """(where, row) pairs from a list of rows or a dict of lists / single rows; `where` names the row."""
    if isinstance(data, list):
        return [(f"row {i}", r) for i, r in enumerate(data)]
    if isinstance(data, dict):
        out = []
        for k, v in data.items():
            if isinstance(v, list):
                out += [(f"['{k}'] row {i}", r) for i, r in enumerate(v)]
            elif isinstance(v, dict):
                out.append((f"['{k}']", {"id": k, **v}))
            else:
                raise ValueError(f"top-level key '{k}': expected a list of rows or a row, got {type(v).__name__}")
        return out
    raise ValueError(f"top level must be a list or a dict of lists, got {type(data).__name__}")


def index_images(image_dir):
    """basename -> [paths] of every file under image_dir (the release's folder layout may differ from its
    json paths, e.g. a flat download of images listed as 'KnowGen/images/x.png')."""
    idx = {}
    for root, _, files in os.walk(image_dir or "."):
        for f in sorted(files):
            idx.setdefault(f, []).append(os.path.join(root, f))
    return idx


def resolve_image(path, json_dir, image_dir, index):
    """The first existing file among: the path as given (absolute), relative to image_dir, relative to the
    json's folder, and the unique file with that basename under image_dir. Returns (found or None, tried)."""
    tried = [path] if os.path.isabs(path) else []
    for base in [image_dir, json_dir]:
        if base:
            tried.append(os.path.join(base, path))
    for p in tried:
        if os.path.isfile(p):
            return os.path.abspath(p), tried
    same_name = index.get(os.path.basename(path), [])
    tried.append(f"<image_dir>/**/{os.path.basename(path)} ({len(same_name)} matches)")
    return (os.path.abspath(same_name[0]) if len(same_name) == 1 else None), tried


def _first_char(path):
    with open(path, "rb") as f:
        return f.read(4096).lstrip()[:1].decode("latin-1")


def check_row(where, row, json_dir, image_dir, index):
    if not isinstance(row, dict):
        raise ValueError(f"{where}: expected an object, got {type(row).__name__}")
    for key in ("id", "prompt", "gt_image"):
        if not isinstance(row.get(key), (str, int)) or not str(row.get(key)).strip():
            raise ValueError(f"{where} (id {row.get('id')!r}): missing or empty key '{key}'")
    iid, meta = str(row["id"]), row.get("meta")
    if not isinstance(meta, dict) or not meta:
        raise ValueError(f"{where} (id '{iid}'): missing key 'meta' (an object with category and difficulty)")
    cat = dataio.norm_category(meta.get("category", ""))
    if cat not in CATEGORIES:
        raise ValueError(f"{where} (id '{iid}'): unknown meta.category {meta.get('category')!r}; "
                         f"KnowGen's categories: {', '.join(CATEGORIES)}")
    diff = str(meta.get("difficulty", "")).strip().lower()
    if not diff:  # any string is fine (the release has "multiple subject"), an absent one is not
        raise ValueError(f"{where} (id '{iid}'): missing meta.difficulty")
    found, tried = resolve_image(str(row["gt_image"]), json_dir, image_dir, index)
    if found is None:
        raise ValueError(f"{where} (id '{iid}'): gt_image {row['gt_image']!r} not found; tried {tried}")
    return {"id": iid, "prompt": str(row["prompt"]).strip(), "meta": {"category": cat, "difficulty": diff},
            "gt_image": found}


def convert(bench_json, image_dir="", out_dir="data/knowgen", out_name="knowgen.jsonl", copy_images=True):
    """Validate every row, then write out_dir/out_name (and out_dir/gt/ copies). Returns the items."""
    if not bench_json or not os.path.isfile(bench_json):
        raise FileNotFoundError(f"data/knowgen/prepare.py: bench_json {bench_json!r} not found; pass "
                                "--bench_json=/path/to/KnowGen-Bench.json (download the release elsewhere)")
    json_dir = os.path.dirname(os.path.abspath(bench_json))
    rows = None
    if _first_char(bench_json) == "{":  # lenient container: a dict of lists / rows (a JSONL file is not one)
        try:
            with open(bench_json, encoding="utf-8") as f:
                data = json.load(f)
            rows = None if "prompt" in data else iter_rows(data)
        except (json.JSONDecodeError, UnicodeDecodeError):
            rows = None  # JSONL, or a bad file: the item reader below names file and line
    if rows is None:  # a JSON list or JSONL: THE item reader (file:line / file[index] in every error)
        try:
            rows = [(f"{bench_json}[{j}]", it)
                    for j, it in enumerate(dataio.load_items(bench_json, resolve_paths=False))]
        except dataio.ItemsError as e:
            raise ValueError(str(e)) from None
    items, seen, index = [], {}, index_images(image_dir or json_dir)
    for where, row in rows:  # validate everything before writing anything
        it = check_row(where, row, json_dir, image_dir, index)
        if it["id"] in seen:
            raise ValueError(f"{where}: duplicate id '{it['id']}' (first at {seen[it['id']]})")
        seen[it["id"]] = where
        items.append(it)
    if not items:
        raise ValueError(f"{bench_json}: no rows")
    os.makedirs(out_dir, exist_ok=True)
    if copy_images:
        names = {}
        os.makedirs(os.path.join(out_dir, "gt"), exist_ok=True)
        for it in items:
            name = re.sub(r"[^\w.-]", "_", it["id"]) + os.path.splitext(it["gt_image"])[1].lower()
            if name in names:
                raise ValueError(f"ids '{names[name]}' and '{it['id']}' map to the same image file gt/{name}")
            names[name] = it["id"]
            shutil.copyfile(it["gt_image"], os.path.join(out_dir, "gt", name))
            it["gt_image"] = f"gt/{name}"
    with open(os.path.join(out_dir, out_name), "w", encoding="utf-8") as f:
        for it in items:
            f.write(json.dumps(it, ensure_ascii=False) + "\n")
    return items


if __name__ == "__main__":
    from configurator import configure
    configure(globals())
    items = convert(bench_json, image_dir, out_dir, out_name, copy_images)
    per_group = {g: sum(CATEGORIES[it["meta"]["category"]] == g for it in items) for g in GROUPS}
    print(f"wrote {len(items)} items to {os.path.join(out_dir, out_name)}: {per_group}")
