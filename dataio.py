"""
dataio.py: THE reader of JSONL and item files, the one every stage reads through: grpo.py, sft.py,
eval_knowgen.py, make_data.py, reward.py, tools.py, bench.py, rollout.py, data/knowgen/prepare.py and
data/miniworld/report.py. Standard library only (no torch), so tools.py and reward.py import it at the top.

    rows = read_jsonl(path)                  # [(line, row)]; repair=True cuts a torn last line, missing_ok=True: []
    rows = read_rows(path)                   # [(where, row)] of a JSON list ("path[i]") or JSONL ("path:line") file
    items = load_items(path, need_gt=True)   # KnowGen items, normalised; a bad file is an ItemsError

An item is {"id": str, "prompt": str, "meta": {"category": str, "difficulty": str}, "gt_image": path, ...}
(README, "Data formats"). Accepted as released: a JSON list (rl_data.json, KnowGen-Bench.json) or JSONL; the
legacy "gen_image" key for "gt_image"; any difficulty string ("multiple subject"); categories in any case
("Multi_subject Anime" -> "multi-subject-anime"); a relative image path is resolved against the file's folder.
Every error is an ItemsError whose message names the file and the line (JSONL) or index (JSON list).
"""
import json
import os
import re


class ItemsError(ValueError):
    """A bad JSONL / items file; the message names the file and the line (JSONL) or index (JSON list)."""


def _decode_utf8(path, data):
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise ItemsError(f"{path}:{line}: not UTF-8 ({e.reason} at byte {e.start})") from None


def read_jsonl(path, repair=False, missing_ok=False):
    """THE JSONL reader of every stage: [(line_no, row)], blank lines skipped, every row a JSON object; a bad line
    is an ItemsError "<path>:<line>: not valid JSON (...)". missing_ok: a missing file is [] (a stage file not
    written yet). repair: for an append-only file this process is about to append to (make_data.py's stages,
    eval_knowgen.py's, the trainers' log.jsonl on resume): every row is written as one line ending in a newline,
    so bytes after the last newline are a write torn by a kill; they are dropped and cut from the file, so the
    next append starts on a clean line. Without repair a torn last line is an error like any bad line."""
    if not os.path.isfile(path):
        if missing_ok:
            return []
        raise ItemsError(f"{path}: no such file")
    with open(path, "rb") as f:
        data = f.read()
    end = data.rfind(b"\n") + 1
    if repair and end < len(data):
        print(f"{path}: dropping a torn last line ({len(data) - end} bytes, a write cut by a kill)")
        with open(path, "r+b") as f:
            f.truncate(end)
        data = data[:end]
    return _jsonl_rows(path, _decode_utf8(path, data))


def _jsonl_rows(path, text):
    out = []
    # split on "\n" only: str.splitlines would also break a row inside a string at U+2028, \x1c, \x85, ...
    for i, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ItemsError(f"{path}:{i}: not valid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(row, dict):
            raise ItemsError(f"{path}:{i}: expected a JSON object, got {type(row).__name__}")
        out.append((i, row))
    return out


def read_rows(path):
    """[(where, row)] of a JSON-list file ("path[index]", rows of any JSON type) or a JSONL file ("path:line",
    read_jsonl): the row reader of load_items and sft.py (sharegpt files come in both shapes)."""
    if not os.path.isfile(path):
        raise ItemsError(f"{path}: no such file")
    with open(path, "rb") as f:
        data = f.read()
    text = _decode_utf8(path, data)
    if text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise ItemsError(f"{path}:{e.lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
        return [(f"{path}[{j}]", r) for j, r in enumerate(rows)]
    return [(f"{path}:{i}", r) for i, r in _jsonl_rows(path, text)]


def norm_category(c):
    return re.sub(r"[\s_]+", "-", str(c).strip().lower())


def load_items(path, need_gt=False, resolve_paths=True):
    """The items of a JSON-list or JSONL file, normalised (see the module docstring). need_gt: every item must
    have a gt_image (GRPO). resolve_paths=False keeps gt_image as written (data/knowgen/prepare.py searches for
    it itself). Raises ItemsError naming file:line / file[index] and the key."""
    base, items, seen = os.path.dirname(os.path.abspath(path)), [], {}
    for where, row in read_rows(path):
        if not isinstance(row, dict):
            raise ItemsError(f"{where}: expected a JSON object, got {type(row).__name__}")
        if not isinstance(row.get("prompt"), str) or not row["prompt"].strip():
            raise ItemsError(f"{where}: item {row.get('id')!r} has no prompt (a non-empty string 'prompt')")
        if row.get("id") is None or not str(row["id"]).strip():
            raise ItemsError(f"{where}: item without an 'id'")
        it = dict(row, id=str(row["id"]))
        if str(it["id"]) in seen:
            raise ItemsError(f"{where}: duplicate id {it['id']!r} (first at {seen[it['id']]})")
        seen[it["id"]] = where
        if "gen_image" in it and "gt_image" not in it:  # the release's older name
            it["gt_image"] = it.pop("gen_image")
        meta = it.get("meta") if it.get("meta") is not None else {}
        if not isinstance(meta, dict):
            raise ItemsError(f"{where}: item {it['id']!r}: 'meta' must be an object, got {type(meta).__name__}")
        meta = dict(meta)
        for k in ("category", "difficulty"):  # also accepted at the top level
            if k not in meta and isinstance(it.get(k), str):
                meta[k] = it[k]
        if "category" in meta:
            meta["category"] = norm_category(meta["category"])
        if "difficulty" in meta:
            meta["difficulty"] = str(meta["difficulty"]).strip().lower()
        it["meta"] = meta
        gt = it.get("gt_image")
        if gt is not None and not isinstance(gt, str):
            raise ItemsError(f"{where}: item {it['id']!r}: gt_image must be a path string")
        if gt and resolve_paths:
            it["gt_image"] = os.path.normpath(os.path.join(base, gt))
        elif need_gt:
            raise ItemsError(f"{where}: item {it['id']!r} has no gt_image (or legacy gen_image)")
        items.append(it)
    return items
