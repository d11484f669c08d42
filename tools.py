"""
tools.py: the agent's three tools (search, image_search, browse) with the release's argument schemas and
observation formats, behind two backends.

    python tools.py --tool=search --arguments='{"queries": ["Vorlak capital"], "top_k": 3}'     # local world
    python tools.py --tool=browse --arguments='{"url": "https://miniworld.example/wiki/Vorlak", "query": "flag"}'
    SERPER_API_KEY=... python tools.py --backend=web --summarizer_base_url=http://host:8000/v1 --tool=...

    tb = make_toolbox("local", world_dir="data/miniworld")      # or "web"; the rollout owns img_registry
    r = run_tool(tb, "image_search", {"query": "flag of Vorlak"}, img_registry)    # never raises
    rs = run_tools(tb, [(name, arguments, img_registry), ...])  # concurrent on a thread pool, order kept

local (default, offline): SQLite FTS5 (bm25 + snippet()) over the world's pages.jsonl (world pages + ~10k
  Wikipedia distractors) and images.jsonl (title + page title), built once into <world_dir>/index.sqlite and
  reused while newer than the JSONL files. browse reads the page from the index.
web (the paper's setup): Serper (POST {base}/search {"q","num"} -> organic[{title,link,snippet}]; POST
  {base}/images -> images[{title,imageUrl,link}]; X-API-KEY from $SERPER_API_KEY), pages through a Jina-style
  reader (GET {reader}/{url}, Bearer $JINA_API_KEY if set; reader_base_url="" fetches directly).
browse answers `query` with an OpenAI-compatible summarizer when summarizer_base_url is set (paper:
  Qwen3-VL-30B-A3B-Instruct, temperature 0; pages over ~95k tokens, counted as chars/4, are split into parts
  answered separately and joined, as the release does), else with an EXTRACTIVE offline summarizer: the
  page's sentences sharing most words with the query, no language model (its observation header says so).
Attached images are JPEG copies resized to <= 160,000 pixels (local_path); the generator gets the original
(source_path: the world's file, or the downloaded bytes kept beside the copy), as the release downsizes only
what the policy sees; reward.reference_file(ref) is the one place that picks it. A persistent SQLite result cache (key = tool +
normalized arguments + backend, never an API key; on by default for web) makes a repeated call free and a run
replayable offline. Every failure (bad arguments, HTTP errors after bounded jittered retries, timeouts,
refused urls) becomes a "[Tool Error]: ..." observation. Every HTTP call goes through net.py: model- or
search-supplied urls (browse, image downloads) pass net.check_url (strict parse; no backslash/userinfo/odd
numeric hosts; resolved once, no loopback/private/link-local/reserved address unless allow_private; the
connection is pinned to the checked address; every redirect hop checked); the search API, reader and
summarizer follow no redirect (their keys stay at their origin); every read has a wall-clock deadline
(timeout) and a byte cap (max_response_bytes, max_image_bytes). Leniency (the release's tools accept these too): search takes `query` for `queries`, and one string for the list;
browse takes `goal` for `query` (neither: a summary of the page) and a list of up to 5 urls; `arguments` may be a
JSON string.
"""
import hashlib
import html
import io
import json
import math
import os
import re
import sqlite3
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field

import dataio  # THE reader of JSONL files (stdlib only)
import net
from PIL import Image

# ----------------------------------------------------------------------------------------------
# defaults: make_toolbox's arguments default to these (other stages read e.g. tools.world_dir); the demo
# command line overrides them by name (--backend=web ...)
backend = "local"                 # "local" (offline mini world) or "web" (paper: Serper + reader + VLM)
world_dir = "data/miniworld"      # holds pages.jsonl / images.jsonl (local backend)
index_path = None                 # FTS5 index file; None -> <world_dir>/index.sqlite
cache_path = "out/tool_cache.sqlite"  # persistent result cache (on by default for web only)
image_dir = "out/tool_images"     # resized JPEG copies of attached images (+ downloaded originals)
serper_base_url = "https://google.serper.dev"
reader_base_url = "https://r.jina.ai"  # release: Jina reader; "" = fetch the url directly
summarizer_base_url = None        # OpenAI-compatible /v1 base; None -> extractive offline summarizer
summarizer_model = "Qwen3-VL-30B-A3B-Instruct"  # paper's browse summarizer
summarizer_temperature = 0.0      # paper: temperature 0
summarizer_max_tokens = 8192      # release's max_tokens for a summary
page_token_budget = 95_000        # release: pages over 95k tokens are split and answered per part
part_overlap_tokens = 1024        # release: each part overlaps the next by 1024 tokens
chars_per_token = 4               # token count approximated as chars / 4 (release used tiktoken)
serper_key_env = "SERPER_API_KEY"  # API keys come only from the environment
reader_key_env = "JINA_API_KEY"
summarizer_key_env = "SUMMARIZER_API_KEY"
timeout = 30.0                    # seconds per HTTP request (release: 30 s search, 50 s reader)
call_timeout = 300.0              # seconds, safety net per tool call in run_tools
retries = 3                       # extra attempts on 429 / 5xx / timeouts / connection errors
backoff_base = 1.0                # seconds; attempt n waits ~base * 2^(n-1) * U(0.5, 1), capped
backoff_max = 16.0
max_workers = 32                  # run_tools thread pool (I/O-bound calls: threads are cheap)
max_response_bytes = 5_000_000    # bytes read from any response before giving up
max_image_bytes = 10_000_000
max_image_pixels = 160_000        # paper: attached images resized to <= 160,000 pixels
max_images = 5                    # paper: at most 5 images listed and attached per image_search
top_k_default = 10                # top_k when a call gives none: the release's code (its search and image_search
                                  # default to 10; image_search still shows <= max_images). Its schema text, which
                                  # the model reads, says "default: 5": make_toolbox(top_k_default=5) for that
top_k_max = 10                    # release caps top_k at 10
max_queries = 8                   # queries per search call
max_browse_urls = 5               # release: browse takes a url or a list, visits the first 5, joins the answers
browse_default_query = "A detailed summary of the page."  # release: browse with no goal/query asks for a summary
list_local_path = True            # release: each image_search hit lists its local_path line (the policy's copy);
                                  # False = the hits without it (our earlier format, ~30 tokens less per image)
snippet_tokens = 32               # FTS5 snippet length (tokens)
extract_sentences = 5             # extractive summarizer: sentences returned
tool = "search"                   # command line demo
arguments = '{"queries": ["capital city"]}'


def _fn(name, description, required, **props):
    return {"type": "function", "function": {"name": name, "description": description, "parameters": {
        "type": "object", "properties": props, "required": required}}}


TOOL_SCHEMAS = [  # the release's function schemas (system prompt of gen_image_deepresearch_agent.py)
    _fn("search", "Web text search tool that performs batched searches: supply an array 'queries'; the tool "
        "retrieves search results for each query.", ["queries"],
        queries={"type": "array", "items": {"type": "string"}, "description": "Array of query strings. You will "
                 "get brief results with (title, url, snippet) for each query."},
        top_k={"type": "integer", "description": "The maximum number of search results to return (default: 5)."}),
    _fn("image_search", "Text-to-image search. Given a descriptive text query, return up to 5 image results to "
        "ground identities, scenes, outfits, locations, and events. Each result has an image id (IMG_###), a "
        "title, the image URL and the page URL; the images are shown to you.", ["query"],
        query={"type": "string", "description": "A descriptive text query for image search."},
        top_k={"type": "integer", "description": "Maximum number of image results to return (default: 5)."}),
    _fn("browse", "Browse a webpage and extract relevant information based on a specific query.", ["url", "query"],
        url={"type": "string", "description": "The URL of the webpage to browse."},
        query={"type": "string", "description": "The specific query to extract relevant information from the "
               "webpage."}),
]
_RETRY_STATUS = {429, 500, 502, 503, 504}
_REG_LOCK = threading.Lock()
_STOP = set("a an the of in on at to for is are was were what which who whom when where how and or with by "
            "from does do did this that it its as be about page".split())
_SPLIT_NOTE = ("Since the content is too long, the result is split and answered separately. "
               "Please combine the results to get the complete answer.\n")
_SUMMARY_PROMPT = ("Please read the source content and answer a following question:\n"
                   "--- begin of source content ---\n{text}\n--- end of source content ---\n\n"
                   "If there is no relevant information, please clearly refuse to answer. "
                   "Now answer the question based on the above content:\n{query}")


@dataclass
class Tool:
    """One entry of the registry: what the model is shown (the function schema), what runs the call, and the
    backends it works on. A new tool is one register() call; the system prompt, the parser's name check, the
    trajectory's tool_calls counts, grpo's log and eval's tool stats all read tool_names()."""
    schema: dict                    # {"type": "function", "function": {"name", "description", "parameters"}}
    run: object                     # run(tb, args, img_registry) -> ToolResult (args validated against the schema)
    backends: tuple = ("local", "web")


registry = {}  # name -> Tool, in the order the system prompt lists them


def register(schema, run, backends=("local", "web")):
    registry[schema["function"]["name"]] = Tool(schema, run, tuple(backends))


def tool_names():
    return tuple(registry)


def tool_schemas():
    return [t.schema for t in registry.values()]


@dataclass
class ToolResult:
    text: str                                   # observation text (goes inside <tool_response>)
    images: list = field(default_factory=list)  # attached images {"img_id","url","local_path","source_path",
    #                                             "title","page_url"}: local_path = the policy's resized copy,
    #                                             source_path = the full-resolution original (for the generator)
    error: bool = False                         # True for a "[Tool Error]: ..." observation


@dataclass
class Toolbox:
    backend: str
    world_dir: str
    index_path: str | None
    cache_path: str | None          # None = no result cache
    image_dir: str
    serper_base_url: str
    reader_base_url: str
    summarizer_base_url: str | None
    summarizer_model: str
    timeout: float
    retries: int
    backoff_base: float
    max_workers: int
    allow_private: bool
    page_token_budget: int
    chars_per_token: int
    max_response_bytes: int
    call_timeout: float
    top_k_default: int = 10         # top_k of a call that gives none (make_toolbox sets both)
    list_local_path: bool = True    # image_search hits list their local_path line
    backend_id: str = ""            # part of the cache key (never holds a key)
    pool: ThreadPoolExecutor | None = field(default=None, repr=False)
    dl_pool: ThreadPoolExecutor | None = field(default=None, repr=False)  # image downloads inside a call
    tls: threading.local = field(default_factory=threading.local, repr=False)  # per-thread sqlite/http
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    llm: object = field(default=None, repr=False)


class ToolFailure(Exception):
    """A tool failure whose message is safe to show the model (becomes a [Tool Error] observation)."""


# ----------------------------------------------------------------------------------------------
# construction


# make_toolbox's arguments that default to this module's global of the same name (None = that global, read at call
# time, so a later --key=value reaches it; default_cache_path reads cache_path)
_TOOLBOX_GLOBALS = ("backend", "world_dir", "image_dir", "summarizer_base_url", "summarizer_model", "timeout",
                    "retries", "max_workers", "index_path", "serper_base_url", "reader_base_url", "backoff_base",
                    "page_token_budget", "chars_per_token", "max_response_bytes", "call_timeout", "top_k_default",
                    "list_local_path")


def make_toolbox(backend=None, world_dir=None, cache_path=None, image_dir=None, summarizer_base_url=None,
                 summarizer_model=None, timeout=None, retries=None, max_workers=None, allow_private=False,
                 use_cache=None, index_path=None, serper_base_url=None, reader_base_url=None, backoff_base=None,
                 page_token_budget=None, chars_per_token=None, max_response_bytes=None, call_timeout=None,
                 default_cache_path=None, top_k_default=None, list_local_path=None):
    """Build a Toolbox. use_cache=None means: cache on for web (at cache_path or default_cache_path), and for local
    only when cache_path is given. The local backend builds/reuses its FTS5 index here. Every other None: this
    module's global of that name at call time (default_cache_path: cache_path's)."""
    a, g = locals(), globals()
    c = {k: g[k] if a[k] is None else a[k] for k in _TOOLBOX_GLOBALS}
    if default_cache_path is None:
        default_cache_path = g["cache_path"]
    backend, world_dir, image_dir = c["backend"], c["world_dir"], c["image_dir"]
    if backend not in ("local", "web"):
        raise ValueError(f"tools.py: backend must be 'local' or 'web', got {backend!r}")
    if use_cache is None:
        use_cache = backend == "web" or cache_path is not None
    tb = Toolbox(backend, world_dir, None, (cache_path or default_cache_path) if use_cache else None, image_dir,
                 c["serper_base_url"].rstrip("/"), (c["reader_base_url"] or "").rstrip("/"),
                 c["summarizer_base_url"], c["summarizer_model"], float(c["timeout"]), int(c["retries"]),
                 float(c["backoff_base"]), int(c["max_workers"]), bool(allow_private), int(c["page_token_budget"]),
                 int(c["chars_per_token"]), int(c["max_response_bytes"]), float(c["call_timeout"]),
                 int(c["top_k_default"]), bool(c["list_local_path"]))
    if not 1 <= tb.top_k_default <= top_k_max:
        raise ValueError(f"tools.py: make_toolbox top_k_default must be 1..{top_k_max}, got {tb.top_k_default}")
    if backend == "local":
        tb.index_path = build_index(world_dir, c["index_path"])
        tb.backend_id = f"local:{os.path.abspath(tb.index_path)}:{os.path.getmtime(tb.index_path):.0f}"
    else:
        tb.backend_id = "web"
    if tb.cache_path:
        os.makedirs(os.path.dirname(os.path.abspath(tb.cache_path)), exist_ok=True)
        con = sqlite3.connect(tb.cache_path, timeout=30)
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("CREATE TABLE IF NOT EXISTS cache(key TEXT PRIMARY KEY, tool TEXT, args TEXT, value TEXT, "
                    "created REAL)")
        con.commit()
        con.close()
    os.makedirs(image_dir, exist_ok=True)
    tb.pool = ThreadPoolExecutor(tb.max_workers, thread_name_prefix="tool")
    tb.dl_pool = ThreadPoolExecutor(max_images, thread_name_prefix="tool-dl")
    return tb


def close_toolbox(tb):
    for p in filter(None, (tb.pool, tb.dl_pool)):
        p.shutdown(wait=False, cancel_futures=True)


def build_index(world_dir, index_path=None):
    """Build the FTS5 index over pages.jsonl / images.jsonl into index_path (default <world_dir>/index.sqlite)
    unless an index newer than both files exists. Written to a temp file then renamed (safe with several
    processes). Returns the index path."""
    pages_path, images_path = os.path.join(world_dir, "pages.jsonl"), os.path.join(world_dir, "images.jsonl")
    if not os.path.exists(pages_path):
        raise FileNotFoundError(f"tools.py: {pages_path} not found (run: python data/miniworld/prepare.py)")
    index_path = index_path or os.path.join(world_dir, "index.sqlite")
    srcs = [p for p in (pages_path, images_path) if os.path.exists(p)]
    if os.path.exists(index_path) and all(os.path.getmtime(index_path) > os.path.getmtime(s) for s in srcs):
        return index_path
    pages = dataio.read_jsonl(pages_path)
    images = dataio.read_jsonl(images_path, missing_ok=True)
    tmp = f"{index_path}.{os.getpid()}.{threading.get_ident()}.tmp"
    con = sqlite3.connect(tmp)
    con.executescript("""
        CREATE TABLE pages(id INTEGER PRIMARY KEY, url TEXT UNIQUE, title TEXT, text TEXT, source TEXT);
        CREATE VIRTUAL TABLE pages_fts USING fts5(title, text, content='pages', content_rowid='id',
                                                  tokenize='porter unicode61');
        CREATE TABLE images(id INTEGER PRIMARY KEY, image_id TEXT, path TEXT, title TEXT, url TEXT UNIQUE,
                            page_url TEXT, page_title TEXT);
        CREATE VIRTUAL TABLE images_fts USING fts5(title, page_title, content='images', content_rowid='id',
                                                   tokenize='porter unicode61');""")
    titles = {}
    for n, p in pages:
        url = _norm_url(p.get("url", ""))
        if not url or not isinstance(p.get("text"), str):
            raise ValueError(f"tools.py: {pages_path}:{n}: a page needs 'url' and 'text'")
        titles[url] = p.get("title", "")
        con.execute("INSERT OR IGNORE INTO pages(url, title, text, source) VALUES (?,?,?,?)",
                    (url, p.get("title", ""), p["text"], p.get("source", "")))
    for n, im in images:
        if "path" not in im or "url" not in im:
            raise ValueError(f"tools.py: {images_path}:{n}: an image needs 'path' and 'url'")
        path = im["path"] if os.path.isabs(im["path"]) else os.path.join(os.path.abspath(world_dir), im["path"])
        page_url = im.get("page_url", "")
        con.execute("INSERT OR IGNORE INTO images(image_id, path, title, url, page_url, page_title) "
                    "VALUES (?,?,?,?,?,?)", (im.get("image_id", ""), path, im.get("title", ""), im["url"],
                                             page_url, titles.get(_norm_url(page_url), "")))
    con.execute("INSERT INTO pages_fts(pages_fts) VALUES('rebuild')")
    con.execute("INSERT INTO images_fts(images_fts) VALUES('rebuild')")
    con.commit()
    con.close()
    os.replace(tmp, index_path)
    return index_path


def _norm_url(url):
    """Comparable form of a url: no surrounding space, no #fragment, no trailing slash."""
    return url.strip().split("#", 1)[0].rstrip("/") if isinstance(url, str) else ""


def _db(tb):
    if getattr(tb.tls, "db", None) is None:  # one read-only connection per thread
        tb.tls.db = sqlite3.connect(f"file:{tb.index_path}?mode=ro", uri=True, check_same_thread=False)
    return tb.tls.db


# ----------------------------------------------------------------------------------------------
# entry points


def run_tool(tb, name, arguments, img_registry):
    """Execute one tool call. Never raises: any failure becomes a "[Tool Error]: ..." observation."""
    try:
        args = _validate(name, arguments, tb.top_k_default)
        if tb.backend not in registry[name].backends:
            raise ToolFailure(f"{name} is not available on the {tb.backend!r} backend")
        return registry[name].run(tb, args, img_registry)
    except ToolFailure as e:
        return ToolResult(f"[Tool Error]: {_scrub(str(e))}", [], True)
    except Exception as e:  # a bug or an unexpected backend answer: still an observation, never a crash
        return ToolResult(f"[Tool Error]: {name} failed: {type(e).__name__}: {_scrub(str(e))[:300]}", [], True)


def run_tools(tb, calls):
    """Run [(name, arguments, img_registry), ...] concurrently on the toolbox's thread pool; results in order.
    Each call is bounded by its HTTP timeouts/retries; call_timeout (per pool wave) is a safety net."""
    futures = [tb.pool.submit(run_tool, tb, n, a, r) for n, a, r in calls]
    deadline = time.monotonic() + tb.call_timeout * math.ceil(max(1, len(calls)) / tb.max_workers)
    out = []
    for (name, _, _), fut in zip(calls, futures):
        try:
            out.append(fut.result(timeout=max(0.0, deadline - time.monotonic())))
        except FutureTimeout:
            out.append(ToolResult(f"[Tool Error]: {name} timed out after {tb.call_timeout:g}s", [], True))
        except Exception as e:  # cancelled pool etc.
            out.append(ToolResult(f"[Tool Error]: {name} failed: {type(e).__name__}", [], True))
    return out


# argument aliases the release's tools accept beside the schema's names (alias -> name): its search takes `query`
# or `queries`, its browse `goal` or `query`
ALIASES = {"search": {"query": "queries"}, "browse": {"goal": "query"}}


def _validate(name, arguments, default_top_k):
    """Check arguments against the release schema; return them normalized (aliases mapped, defaults filled)."""
    if name not in registry:  # never another tool: the model is told which ones exist
        raise ToolFailure(f"unknown tool {name!r}; available tools: {', '.join(registry)}")
    if isinstance(arguments, str):  # lenient: a JSON object given as a string
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            raise ToolFailure(f"{name}: arguments must be a JSON object, got unparsable text") from None
    if not isinstance(arguments, dict):
        raise ToolFailure(f"{name}: arguments must be a JSON object, got {type(arguments).__name__}")
    schema = registry[name].schema["function"]["parameters"]
    args = dict(arguments)
    for alias, key in ALIASES.get(name, {}).items():
        if alias in args and alias not in schema["properties"]:
            v = args.pop(alias)
            if key not in args or (name == "browse" and isinstance(v, str) and v.strip()):
                args[key] = v  # release: search prefers `queries`; browse prefers a non-empty `goal`
    if name == "browse" and (args.get("query") is None or isinstance(args.get("query"), str)
                             and not args["query"].strip()):
        args["query"] = browse_default_query  # release: no goal -> a summary of the page
    if name == "browse" and isinstance(args.get("url"), list):
        urls = args["url"]
        if not urls or not all(isinstance(u, str) and u.strip() for u in urls):
            raise ToolFailure(f"{name}: 'url' must be a non-empty string or a list of them")
        args["url"] = [u.strip() for u in urls[:max_browse_urls]]
    arguments = args
    extra = sorted(set(arguments) - set(schema["properties"]))
    if extra:
        raise ToolFailure(f"{name}: unexpected argument(s) {', '.join(map(repr, extra))}; "
                          f"allowed: {', '.join(schema['properties'])}")
    missing = [k for k in schema["required"] if k not in arguments]
    if missing:
        raise ToolFailure(f"{name}: missing required argument(s) {', '.join(map(repr, missing))}")
    if "queries" in args:
        q = [args["queries"]] if isinstance(args["queries"], str) else args["queries"]  # lenient: one string
        if not isinstance(q, list) or not q or not all(isinstance(x, str) and x.strip() for x in q):
            raise ToolFailure(f"{name}: 'queries' must be a non-empty list of non-empty strings")
        if len(q) > max_queries:
            raise ToolFailure(f"{name}: at most {max_queries} queries per call, got {len(q)}")
        args["queries"] = [x.strip() for x in q]
    for k in ("query", "url"):
        if k == "url" and isinstance(args.get(k), list):
            continue  # browse's list of urls, checked above
        if k in args and not (isinstance(args[k], str) and args[k].strip()):
            raise ToolFailure(f"{name}: '{k}' must be a non-empty string")
        if k in args:
            args[k] = args[k].strip()
    if "top_k" in schema["properties"]:
        k = args.get("top_k", default_top_k)
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= top_k_max:
            raise ToolFailure(f"{name}: 'top_k' must be an integer from 1 to {top_k_max}, got {k!r}")
        args["top_k"] = k
    return args


# ----------------------------------------------------------------------------------------------
# the three tools


def _search(tb, args):
    blocks = []
    for q in args["queries"]:
        key_args = {"q": " ".join(q.lower().split()), "num": args["top_k"]}
        try:
            hits = _cached(tb, "search", key_args, lambda q=q: (
                _local_search(tb, q, args["top_k"]) if tb.backend == "local" else _web_search(tb, q, args["top_k"])))
        except ToolFailure as e:
            raise ToolFailure(f"search failed for [{q}]: {e}") from None
        body = "\n\n".join(f"[{h['title']}]({h['link']}) {h['snippet']}" for h in hits) or f"No results for '{q}'."
        blocks.append(f"--- search result for [{q}] ---\n{body}\n--- end of search result ---")
    return ToolResult("\n\n".join(blocks))


def _image_search(tb, args, img_registry):
    q, k = args["query"], min(args["top_k"], max_images)
    key_args = {"q": " ".join(q.lower().split()), "num": top_k_max}
    hits = _cached(tb, "image_search", key_args, lambda: (
        _local_image_hits(tb, q, top_k_max) if tb.backend == "local" else _web_image_hits(tb, q, top_k_max)))
    # JPEG files for the first k hits (downloads in parallel); a dead link or a non-image is skipped and the
    # next-ranked hit takes its place
    seen = set()
    shown, pending = [], [h for h in hits if not (h["url"] in seen or seen.add(h["url"]))]  # unique urls
    while pending and len(shown) < k:
        batch, pending = pending[:k - len(shown)], pending[k - len(shown):]
        for h, fut in [(h, tb.dl_pool.submit(_image_file, tb, h)) for h in batch]:
            try:
                copy, orig = fut.result()
                shown.append(dict(h, local_path=copy, source_path=orig))
            except Exception:
                pass
    shown = [_register(img_registry, h) for h in shown]
    if not shown:
        return ToolResult(f"[ImageSearch] No image results found for '{q}'. Your search query is too long or too "
                          "specific. You MUST retry image_search using <= 3 words that describe only the main "
                          'visual subject (e.g. "person name", "city skyline", "logo").')
    lines = [f"--- image search result for [{q}] ---"]
    for im in shown:  # the release agent's lines: id + title, url, local_path, page_url (when there is one)
        lines += [f"{im['img_id']}: title: {im['title']}", f"  url: {im['url']}"]
        lines += [f"  local_path: {_shown_path(tb, im['local_path'])}"] if tb.list_local_path else []
        lines += [f"  page_url: {im['page_url']}"] if im["page_url"] else []
    lines.append("--- end of image search result ---")
    return ToolResult("\n".join(lines), [dict(im) for im in shown[:max_images]])


def _shown_path(tb, path):
    """A listed local_path: the file under the image folder's own name (tool_images/<hash>.jpg, as the release
    lists saved_img/<file>), so the observation's tokens do not depend on where out_dir or the checkout lives."""
    return os.path.join(os.path.basename(os.path.normpath(tb.image_dir)), os.path.basename(path))


def _register(reg, hit):
    """Per-trajectory ids: IMG_{len(reg)+1:03d} for an unseen url (or path), the old id for a seen one."""
    key = hit.get("url") or hit["local_path"]
    with _REG_LOCK:
        if key not in reg:
            reg[key] = {"img_id": f"IMG_{len(reg) + 1:03d}", "url": hit.get("url", ""),
                        "local_path": hit["local_path"], "source_path": hit.get("source_path") or hit["local_path"],
                        "title": hit.get("title", ""), "page_url": hit.get("page_url", "")}
        return reg[key]


def _browse(tb, args):
    """One url: its answer (a failure is the call's [Tool Error]). A list (release): each url answered in turn and
    the answers joined by the release's separator; a failed url is its part's [Tool Error] line, and the call is an
    error only when every url failed."""
    if isinstance(args["url"], str):
        return ToolResult(_browse_one(tb, args["url"], args["query"]))
    parts, failed = [], 0
    for url in args["url"]:
        try:
            parts.append(_browse_one(tb, url, args["query"]))
        except ToolFailure as e:
            parts.append(f"[Tool Error]: {_scrub(str(e))}")
            failed += 1
    return ToolResult("\n\n=======\n\n".join(parts), [], failed == len(parts))


def _browse_one(tb, url, query):
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme not in ("http", "https"):
        raise ToolFailure(f"browse refused {url!r}: only http(s) urls can be browsed")
    summarizer = tb.summarizer_model if tb.summarizer_base_url else "extractive"
    key_args = {"url": _norm_url(url), "query": " ".join(query.lower().split()), "summarizer": summarizer}

    def fetch_and_answer():
        if tb.backend == "local":
            row = _db(tb).execute("SELECT title, text FROM pages WHERE url=?", (_norm_url(url),)).fetchone()
            if row is None:
                raise ToolFailure(f"The page {url} could not be fetched (no such page). Use a url from "
                                  "the search results.")
            title, text = row
        else:
            title, text = "", _fetch_page(tb, url)
        if not text.strip():
            raise ToolFailure(f"The page {url} could not be fetched (empty page).")
        if tb.summarizer_base_url:
            return _llm_answer(tb, text, query)
        return _extractive_answer(url, title, text, query)

    return _cached(tb, "browse", key_args, fetch_and_answer)


# the release's three tools, in its order
register(TOOL_SCHEMAS[0], lambda tb, args, img_registry: _search(tb, args))
register(TOOL_SCHEMAS[1], _image_search)
register(TOOL_SCHEMAS[2], lambda tb, args, img_registry: _browse(tb, args))


# ----------------------------------------------------------------------------------------------
# local backend


def _local_search(tb, q, k):
    rows = _fts(tb, q, k, "SELECT p.title, p.url, snippet(pages_fts, 1, '', '', '...', %d) FROM pages_fts "
                "JOIN pages p ON p.id = pages_fts.rowid WHERE pages_fts MATCH ? "
                "ORDER BY bm25(pages_fts, 5.0, 1.0) LIMIT ?" % snippet_tokens)  # a title hit weighs 5 text hits
    return [{"title": t, "link": u, "snippet": " ".join(s.split())} for t, u, s in rows]


def _local_image_hits(tb, q, k):
    rows = _fts(tb, q, k, "SELECT i.title, i.url, i.page_url, i.path FROM images_fts JOIN images i ON "
                "i.id = images_fts.rowid WHERE images_fts MATCH ? ORDER BY bm25(images_fts, 2.0, 1.0) LIMIT ?")
    return [{"title": t, "url": u, "page_url": p, "path": path} for t, u, p, path in rows]


def _fts(tb, q, k, sql):
    # every word as a quoted term OR-ed together: bm25 rewards pages matching more / rarer words, and no
    # model-written punctuation or FTS keyword (AND, NEAR, ...) can break the query syntax
    terms = " OR ".join(f'"{w}"' for w in re.findall(r"\w+", q.lower())[:32])
    return _db(tb).execute(sql, (terms, k)).fetchall() if terms else []


def _words(s):
    return {w[:-1] if len(w) > 3 and w.endswith("s") else w
            for w in re.findall(r"\w+", s.lower()) if w not in _STOP}


def _extractive_answer(url, title, text, query):
    """Offline stand-in for the summarizer VLM: the page's extract_sentences sentences sharing the most
    (non-stop) words with the query, in page order. Not a language model; the header says so."""
    sents = [s.strip() for s in re.split(r"(?<=[.!?])\s+|\n+", text) if s.strip()]
    qw = _words(query)
    scored = [(len(qw & _words(s)), -i, i) for i, s in enumerate(sents)]
    best = sorted(i for n, _, i in sorted(scored, reverse=True)[:extract_sentences] if n > 0)
    head = (f"[Extractive summary (offline, no language model): the sentences of {title or url} ({url}) "
            f"most relevant to the query \"{query}\"]")
    if not best:
        return head + "\nThe page contains no information relevant to the query."
    return head + "\n" + "\n".join(f"- {sents[i]}" for i in best)


# ----------------------------------------------------------------------------------------------
# web backend


def _web_search(tb, q, k):
    data = _api_json(tb, "/search", {"q": q.replace('"', "").replace("'", ""), "num": k})  # release strips quotes
    organic = data.get("organic") or []
    if not isinstance(organic, list):
        raise ToolFailure("search API answered without an 'organic' list")
    clean = lambda s: re.sub(r"</?b>", "", str(s or ""))  # noqa: E731  (Serper marks matches with <b>)
    return [{"title": clean(h.get("title")), "link": str(h.get("link", "")), "snippet": clean(h.get("snippet"))}
            for h in organic[:k] if isinstance(h, dict)]


def _web_image_hits(tb, q, k):
    images = _api_json(tb, "/images", {"q": q, "num": k}).get("images") or []
    if not isinstance(images, list):
        raise ToolFailure("image search API answered without an 'images' list")
    return [{"title": str(h.get("title", "")), "url": h["imageUrl"], "page_url": str(h.get("link", ""))}
            for h in images[:k] if isinstance(h, dict) and isinstance(h.get("imageUrl"), str)]


def _api_json(tb, path, payload):
    key = os.environ.get(serper_key_env, "").strip()
    if not key:
        raise ToolFailure(f"the search API key is not set (environment variable {serper_key_env})")
    body = _http(tb, "POST", tb.serper_base_url + path, json_body=payload,
                 headers={"X-API-KEY": key, "Content-Type": "application/json"})[2]
    try:
        data = json.loads(body)
    except ValueError:
        raise ToolFailure(f"search API returned invalid JSON ({len(body)} bytes)") from None
    if not isinstance(data, dict):
        raise ToolFailure("search API returned JSON that is not an object")
    if (data.get("message") or data.get("error")) and not (data.get("organic") or data.get("images")):
        raise ToolFailure(f"search API error: {str(data.get('message') or data.get('error'))[:200]}")  # a 200
    return data


def _fetch_page(tb, url):
    """Page text through the reader (GET {reader}/{url}) or, with reader_base_url="", directly."""
    _check_url(url, tb.allow_private)
    if tb.reader_base_url:
        key = os.environ.get(reader_key_env, "").strip()
        status, headers, body = _http(tb, "GET", f"{tb.reader_base_url}/{url}",
                                      headers={"Authorization": f"Bearer {key}"} if key else {})
    else:
        status, headers, body = _http(tb, "GET", url, checked=True)
    text = body.decode("utf-8", "replace")
    if "html" in headers.get("content-type", "") and not tb.reader_base_url:
        text = re.sub(r"(?is)<(script|style)\b.*?</\1\s*>", " ", text)
        text = html.unescape(re.sub(r"(?s)<[^>]+>", " ", text))
        text = re.sub(r"[ \t]+", " ", re.sub(r"\n\s*\n+", "\n", text)).strip()
    return text


def _llm_answer(tb, text, query):
    """The release's browse summarizer: one prompt per part of <= page_token_budget tokens."""
    budget = tb.page_token_budget * tb.chars_per_token
    if len(text) <= budget:
        return _chat(tb, _SUMMARY_PROMPT.format(text=text, query=query))
    n = max(2, len(text) // budget + 1)
    step, overlap = len(text) // n, part_overlap_tokens * tb.chars_per_token
    outs = [_chat(tb, _SUMMARY_PROMPT.format(text=text[i * step: i * step + step + overlap], query=query))
            for i in range(n)]
    return _SPLIT_NOTE + "".join(f"--- begin of result part {i + 1} ---\n{o}\n--- end of result part {i + 1} ---\n\n"
                                 for i, o in enumerate(outs)).rstrip()


def _chat(tb, prompt):
    """One summarizer answer: an OpenAI-compatible POST {base}/chat/completions, net.fetch_ok inside net.retry,
    so the answer has the same deadline and byte cap (max_response_bytes) as every other read and an empty answer
    is asked again like a 5xx; no redirect."""
    key = os.environ.get(summarizer_key_env, "").strip() or "EMPTY"
    payload = {"model": tb.summarizer_model, "temperature": summarizer_temperature,
               "max_tokens": summarizer_max_tokens, "messages": [{"role": "user", "content": prompt}]}
    url = tb.summarizer_base_url.rstrip("/") + "/chat/completions"

    def once():
        r = net.fetch_ok("POST", url, json_body=payload, headers={"Authorization": f"Bearer {key}"},
                         timeout=tb.timeout, max_bytes=tb.max_response_bytes, allow_private=tb.allow_private)
        if r.status in net.REDIRECT_STATUS:
            raise net.HTTPFailure(f"answered a redirect (HTTP {r.status}); API redirects are not followed")
        try:
            answer = (json.loads(r.body)["choices"][0]["message"]["content"] or "").strip()
        except (ValueError, KeyError, IndexError, TypeError):
            raise net.HTTPFailure(f"an unreadable answer ({len(r.body)} bytes)") from None  # final: not retried
        if not answer:
            raise net.Unparseable("an empty answer")
        return answer
    try:
        return net.retry(once, tb.retries, tb.backoff_base, backoff_max, f"summarizer failed: {_host(url)}", [key])
    except net.URLRefused as e:
        raise ToolFailure(str(e)) from None
    except net.HTTPFailure as e:
        raise ToolFailure(str(e).replace("deadline passed", f"timed out after {tb.timeout:g}s")) from None


# ----------------------------------------------------------------------------------------------
# HTTP, safety, images, cache


def _http(tb, method, url, json_body=None, headers=None, max_bytes=None, retries=None, checked=False):
    """One request through net.request: bounded retries (429/5xx/timeouts/connection errors, jittered
    backoff), one wall-clock deadline of tb.timeout per attempt, at most max_bytes of body.
    checked=False: an operator endpoint (search API, reader): no redirect followed, so its key stays there.
    checked=True: a model/search-supplied url: net.check_url on it and on every redirect hop.
    Returns (status, headers with lower-case names, body bytes)."""
    max_bytes = max_bytes or tb.max_response_bytes
    retries = tb.retries if retries is None else retries
    try:
        r = net.request(method, url, json_body=json_body, headers=headers, timeout=tb.timeout,
                        max_bytes=max_bytes, redirects="check" if checked else "none",
                        allow_private=tb.allow_private, retries=retries, backoff_base=tb.backoff_base,
                        backoff_max=backoff_max)
    except net.URLRefused as e:
        raise ToolFailure(str(e)) from None
    except net.HTTPFailure as e:
        msg = str(e).replace("deadline passed", f"timed out after {tb.timeout:g}s")
        raise ToolFailure(f"{_host(url)}: {msg}") from None
    if not checked and r.status in net.REDIRECT_STATUS:
        raise ToolFailure(f"{_host(url)} answered a redirect (HTTP {r.status}); API redirects are not followed")
    return r.status, r.headers, r.body


def _host(url):
    return urllib.parse.urlsplit(url).netloc or url[:60]


def _check_url(url, allow_private):
    """net.check_url as a tool failure (refuses before any byte is sent). Used before handing a url to the
    reader, which does its own lookup: with allow_private the url is only parsed, not resolved."""
    try:
        net.parse_url(url) if allow_private else net.check_url(url, allow_private)
    except net.URLRefused as e:
        raise ToolFailure(f"the page {url} could not be fetched: {e}") from None


def _image_file(tb, hit):
    """(copy, original) for a hit's image: a resized JPEG copy in image_dir (what the policy sees) and the
    full-resolution original (what the generator gets: the release downsizes only the policy's view). A local
    hit's original is its world file; a download is kept byte for byte beside its copy. Both reused if present."""
    src = hit.get("path") or hit["url"]
    stem = os.path.join(tb.image_dir, hashlib.sha1(src.encode()).hexdigest()[:20])
    dst = stem + ".jpg"
    if hit.get("path"):
        if not (os.path.exists(dst) and os.path.getmtime(dst) >= os.path.getmtime(src)):
            _to_jpeg(src, dst)
        return dst, os.path.abspath(src)
    kept = [stem + ".orig" + e for e in _ORIG_EXT.values() if os.path.exists(stem + ".orig" + e)]
    if os.path.exists(dst) and kept:
        return dst, kept[0]
    body = _http(tb, "GET", src, max_bytes=max_image_bytes, retries=min(1, tb.retries), checked=True)[2]
    fmt = _to_jpeg(io.BytesIO(body), dst)  # also checks that the bytes are an image
    orig = stem + ".orig" + _ORIG_EXT.get(fmt, ".png")
    tmp = f"{orig}.{os.getpid()}.{threading.get_ident()}.tmp"
    if fmt in _ORIG_EXT:
        with open(tmp, "wb") as f:
            f.write(body)
    else:  # a format the generators' data URLs do not carry (BMP, TIFF, ...): a lossless full-size PNG of it
        with Image.open(io.BytesIO(body)) as im:
            im.convert("RGBA" if "A" in im.getbands() else "RGB").save(tmp, "PNG")
    os.replace(tmp, orig)
    return dst, orig


# a downloaded original kept byte for byte, by format (the image types a generator's data URL carries)
_ORIG_EXT = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "GIF": ".gif"}


def _to_jpeg(src, dst, max_pixels=None):
    """Write src as an RGB JPEG of <= max_pixels (None: max_image_pixels) to dst; returns src's format name (PIL's,
    e.g. "PNG")."""
    if max_pixels is None:
        max_pixels = max_image_pixels
    with Image.open(src) as im:
        im.load()
        fmt = im.format
        if im.mode in ("RGBA", "LA", "P", "PA"):  # flatten transparency on white
            rgba = im.convert("RGBA")
            im = Image.new("RGB", rgba.size, "white")
            im.paste(rgba, mask=rgba.split()[-1])
        else:
            im = im.convert("RGB")
    w, h = im.size
    if w * h > max_pixels:  # keep the aspect ratio; floor keeps the product <= max_pixels
        s = math.sqrt(max_pixels / (w * h))
        im = im.resize((max(1, int(w * s)), max(1, int(h * s))), Image.BICUBIC)
    tmp = f"{dst}.{os.getpid()}.{threading.get_ident()}.tmp"
    im.save(tmp, "JPEG", quality=90)
    os.replace(tmp, dst)
    return fmt


def _cached(tb, tool, key_args, fn):
    """fn() through the persistent cache; key = tool + normalized arguments + backend (never an API key).
    Failures are not cached."""
    if not tb.cache_path:
        return fn()
    blob = json.dumps([tool, key_args, tb.backend_id], sort_keys=True)
    key = hashlib.sha256(blob.encode()).hexdigest()
    if getattr(tb.tls, "cache", None) is None:  # one connection per thread; WAL lets readers and a writer mix
        tb.tls.cache = sqlite3.connect(tb.cache_path, timeout=30, check_same_thread=False)
    con = tb.tls.cache
    row = con.execute("SELECT value FROM cache WHERE key=?", (key,)).fetchone()
    if row is not None:
        return json.loads(row[0])
    value = fn()
    with con:  # commits
        con.execute("INSERT OR REPLACE INTO cache VALUES (?,?,?,?,?)",
                    (key, tool, json.dumps(key_args), json.dumps(value), time.time()))
    return value


def _scrub(msg):
    """Remove any API key value from a message (keys live only in the environment)."""
    for env in (serper_key_env, reader_key_env, summarizer_key_env):
        v = os.environ.get(env, "").strip()
        if len(v) >= 4:
            msg = msg.replace(v, "***")
    return msg


if __name__ == "__main__":
    from configurator import configure
    configure(globals())
    toolbox = make_toolbox()  # every setting from this module's (now configured) globals
    result = run_tool(toolbox, tool, arguments, {})
    print(result.text)
    for attached in result.images:
        print(f"[attached {attached['img_id']}: {attached['local_path']}]")
    close_toolbox(toolbox)
