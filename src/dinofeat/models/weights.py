"""Finding and reading DINOv2 and DINOv3 weights (key names are converted by :mod:`dinofeat.models.statekeys`).

Sources are tried in this order (see :func:`load_model`):

1. an explicit path: an official Meta ``.pth``, a ``.safetensors`` file, or a Hugging Face model
   folder (``config.json`` + ``model.safetensors``, or sharded with ``model.safetensors.index.json``),
   with Meta or Hugging Face key names;
2. the official checkpoint in the torch hub cache (``$TORCH_HOME/hub/checkpoints``; DINOv3 file
   names end in a hash, ``dinov3_vits16_pretrain_lvd1689m-<hash>.pth``, and any hash is accepted);
3. the Hugging Face hub (``huggingface_hub``, honouring ``HF_HOME``, ``HF_HUB_OFFLINE`` and the
   token of ``HF_TOKEN`` or ``hf auth login``; the DINOv3 repos are gated behind Meta's licence);
4. DINOv2 only: the official download URL (skipped when ``HF_HUB_OFFLINE`` is set). Meta sends
   DINOv3 download links by e-mail on request, so there is no default URL for DINOv3.

When the local caches miss, the sources still to try are logged before any of them is (a warning,
which the command line prints), and a network source whose host does not answer within
:data:`PROBE_SECONDS` is skipped: an offline machine gets the error in seconds.

Pickled checkpoints are read with ``torch.load(weights_only=True)``: no pickled code runs.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import os
import pickle
import socket
import threading
import urllib.parse
import warnings
import zipfile
from pathlib import Path

import safetensors.torch
import torch

from dinofeat.errors import WeightsError, field
from dinofeat.models.anyup import AnyUp
from dinofeat.models.build import build_model
from dinofeat.models.locations import HF_FILES, hf_cached, hub_checkpoint_path
from dinofeat.models.locations import cached_locally as cached_locally  # re-exported: its home was here
from dinofeat.models.registry import DEFAULT_MODEL, DINOV3_DOWNLOADS, MODELS, ModelSpec, get_spec
from dinofeat.models.statekeys import to_meta_keys
from dinofeat.models.vit import DenseViT

log = logging.getLogger(__name__)

StateDict = dict[str, torch.Tensor]
_WRAPPER_KEYS = ("model", "state_dict", "teacher", "student")
_TRUE = {"1", "true", "yes", "on"}
Model = DenseViT


class _AccessRefused(WeightsError):
    """The Hugging Face hub refused a gated repo: the user has something to do, so it ends the search."""


class _Unreadable(WeightsError):
    """A weights file that is there but cannot be read (damaged, or not a checkpoint): a source that
    found one ends the search with this error instead of trying the next."""


def offline_mode() -> bool:
    """True when ``HF_HUB_OFFLINE`` asks us not to touch the network."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


# ---------------------------------------------------------------------------------------------
# Reading files


#: What a weights file should be, said when it is something else.
EXPECTED_WEIGHTS = "expected Meta's .pth state dict, a .safetensors file or a Hugging Face model folder"
# Leading bytes of files people pass by mistake, to say what the file is.
_MAGIC = (
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"II*\x00", "a TIFF image"),
    (b"MM\x00*", "a TIFF image"),
    (b"%PDF", "a PDF document"),
    (b"\x1aE\xdf\xa3", "a Matroska/WebM video"),
    (b"\x1f\x8b", "a gzip archive"),
)


def read_checkpoint(path: str | os.PathLike) -> StateDict:
    """Read a checkpoint file or Hugging Face folder into a flat state dict (keys as stored).

    Pickled ``.pth`` files are read with ``torch.load(weights_only=True)``; safetensors files are
    recognised by their content whatever their suffix. Any other file raises :class:`WeightsError`
    saying what the file is not and what is expected (never torch's advice to load it unsafely).
    """
    path = Path(path)
    if path.is_dir():
        return _read_hf_folder(path)
    if not path.exists():
        raise WeightsError(f"weights file not found: {path}")
    if path.stat().st_size == 0:
        raise WeightsError(f"weights file is empty: {path}")
    if path.name.endswith(".safetensors.index.json"):
        return _read_sharded(path)
    if path.suffix == ".safetensors" or _is_safetensors(path):
        return _read_safetensors(path)
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols of files it then refuses
            warnings.simplefilter("ignore")
            loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=_is_zip(path))
    except Exception as err:  # noqa: BLE001 - torch raises many types for bad files; its advice is not for us
        raise _not_a_checkpoint(path, _what_file_is(path, err)) from None
    return _unwrap(loaded, path)


def _not_a_checkpoint(path: Path, what: str) -> WeightsError:
    return _Unreadable(
        f"cannot read {path}: it is not a PyTorch checkpoint or safetensors file ({what}); {EXPECTED_WEIGHTS}"
    )


def _what_file_is(path: Path, err: BaseException) -> str:
    """What a file torch could not load is, in a few words, from its first bytes (and torch's error)."""
    with open(path, "rb") as f:
        head = f.read(512)
    known = _known_format(head)
    if known:
        return known
    unsafe = isinstance(err, pickle.UnpicklingError) and "weights only" in str(err).lower()
    refused = "it holds pickled Python objects other than tensors, which are not loaded because that could run code"
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError):
            return "it is a truncated or damaged zip archive"
        if any(name == "data.pkl" or name.endswith("/data.pkl") for name in names):
            return refused if unsafe else "it is a truncated or damaged PyTorch checkpoint"
        if names and all(name.endswith(".npy") for name in names):
            return "it is a NumPy .npz archive"
        return "it is a zip archive of other files"
    if unsafe:
        return refused
    if head[:1] == b"\x80":  # a pickle, protocol 2 or later
        return "it is a truncated or damaged pickle" if isinstance(err, EOFError) else "it is some other pickle"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and all(ch.isprintable() or ch in "\n\r\t" for ch in text):
        return "it is a text file"
    return "its content is not recognised"


def _known_format(head: bytes) -> str | None:
    """``it is a PNG image`` and the like, for files whose first bytes say what they are."""
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return f"it is {name}"
    if head[4:8] == b"ftyp":
        return "it is an MP4/MOV video"
    if head.startswith(b"RIFF") and head[8:12] in (b"WEBP", b"AVI "):
        return "it is a WebP image" if head[8:12] == b"WEBP" else "it is an AVI video"
    return None


def _is_zip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"


def _is_safetensors(path: Path) -> bool:
    """A safetensors file: an 8-byte little-endian header length, then a JSON header."""
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9 or head[8:9] != b"{":
        return False
    return 0 < int.from_bytes(head[:8], "little") <= path.stat().st_size - 8


def _read_safetensors(path: Path) -> StateDict:
    try:
        return safetensors.torch.load_file(str(path))
    except Exception as err:  # noqa: BLE001 - safetensors raises SafetensorError / OSError for bad files
        with open(path, "rb") as f:
            known = _known_format(f.read(16))
        reason = " ".join(str(err).split())[:200] or type(err).__name__
        raise _not_a_checkpoint(path, known or f"it is a damaged or truncated safetensors file: {reason}") from None


def _read_hf_folder(path: Path) -> StateDict:
    for name in ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin"):
        if (path / name).is_file():
            return read_checkpoint(path / name)
    raise WeightsError(f"{path} is a folder without model.safetensors or pytorch_model.bin")


def _read_sharded(index: Path) -> StateDict:
    """A sharded safetensors checkpoint: the index's ``weight_map`` names the shard of every tensor."""
    try:
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise _Unreadable(f"cannot read {index} as a safetensors shard index ({err})") from err
    state: StateDict = {}
    for shard in shards:
        state.update(read_checkpoint(index.parent / shard))
    return state


def _unwrap(loaded: object, path: Path) -> StateDict:
    while isinstance(loaded, dict) and not _is_state_dict(loaded):
        inner = next((loaded[k] for k in _WRAPPER_KEYS if isinstance(loaded.get(k), dict)), None)
        if inner is None:
            break
        loaded = inner
    if not isinstance(loaded, dict) or not _is_state_dict(loaded):
        raise WeightsError(f"{path} does not contain a state dict of tensors; {EXPECTED_WEIGHTS}")
    return dict(loaded)


def _is_state_dict(obj: dict) -> bool:
    return bool(obj) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


# ---------------------------------------------------------------------------------------------
# Architecture checks and loading


#: What a checkpoint tells of its model: family, embed dim (None if unknown), blocks, registers, FFN (DINOv3).
Architecture = tuple[str, int | None, int, int, str | None]


def _architecture(spec: ModelSpec) -> Architecture:
    """What a checkpoint can tell about a model (ViT-L LVD-1689M and SAT-493M share one)."""
    return spec.family, spec.embed_dim, spec.depth, spec.num_registers, spec.ffn if spec.family == "dinov3" else None


def describe_architecture(state: StateDict) -> tuple[str | None, str]:
    """Guess which registry model a Meta-keyed state dict belongs to: (name or None, description)."""
    dim = state["cls_token"].shape[-1] if "cls_token" in state else None
    found: Architecture
    depth = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    if "storage_tokens" in state or "rope_embed.periods" in state:  # DINOv3
        regs = state["storage_tokens"].shape[1] if "storage_tokens" in state else 0
        ffn = "swiglu" if any(".mlp.w1." in k for k in state) else "mlp"
        shape = f"DINOv3, embed dim {dim}, {depth} blocks, {regs} storage tokens, {ffn.replace('swiglu', 'SwiGLU')}"
        found = ("dinov3", dim, depth, regs, ffn)
    else:
        regs = state["register_tokens"].shape[1] if "register_tokens" in state else 0
        shape = f"embed dim {dim}, {depth} blocks, {regs} registers"
        found = ("dinov2", dim, depth, regs, None)
    for spec in MODELS.values():
        if _architecture(spec) == found:
            return spec.name, f"{spec.name} ({shape})"
    return None, f"an unknown architecture ({shape})"


def _fill_fixed_buffers(model: Model, state: StateDict, expected: StateDict, source: str) -> StateDict:
    """DINOv3: drop training-only keys, check the fixed buffers a checkpoint carries, add those it lacks."""
    # Meta's ViT-L SAT-493M and ViT-7B carry `local_cls_norm`, a norm of the local crops' CLS token
    # used in training only (never at inference): accepted and ignored.
    if any(k.startswith("local_cls_norm.") for k in state) and model.spec.name == "dinov3_vitl16":
        log.warning(
            "these weights carry local_cls_norm, as Meta's SAT-493M ViT-L does: for satellite weights "
            "use dinov3_vitl16_sat493m, whose input normalisation differs"
        )
    state = {k: v for k, v in state.items() if not k.startswith("local_cls_norm.")}
    if not model.spec.qkv_bias:  # the 7B: a zero fused bias (timm's layout gives one) is no bias
        state = _without_zero_qkv_bias(state)
    periods = state.get("rope_embed.periods")
    reference = expected["rope_embed.periods"]
    if periods is None:
        state["rope_embed.periods"] = reference
    elif periods.shape == reference.shape and not torch.allclose(periods.float(), reference, rtol=1e-2, atol=0):
        raise WeightsError(
            f"weights from {source} have RoPE periods other than base 100 ({periods[:3].tolist()}...), "
            f"which {model.spec.name} does not use"
        )
    for key, mask in expected.items():
        if not key.endswith(".bias_mask"):
            continue
        if key not in state:
            state[key] = mask
        elif state[key].shape == mask.shape and not torch.equal(state[key].float(), mask):
            raise WeightsError(f"weights from {source} have a {key} that is not the key mask (1 for q and v, 0 for k)")
    return state


def _without_zero_qkv_bias(state: StateDict) -> StateDict:
    """``state`` without the ``attn.qkv.bias`` (and its mask) of blocks where that bias is all zeros."""
    zero = {k for k, v in state.items() if k.endswith(".attn.qkv.bias") and not v.any()}
    return {k: v for k, v in state.items() if k not in zero and k.removesuffix("_mask") not in zero}


def load_state(model: Model, state: StateDict, source: str) -> None:
    """Load Meta-keyed ``state`` into ``model`` strictly; any mismatch raises :class:`WeightsError`.

    Training-only entries may be absent (``mask_token``) and, for DINOv3, fixed buffers too
    (``rope_embed.periods``, ``bias_mask``); those present are checked.
    """
    expected = model.state_dict()
    given, state = state, dict(state)
    state.setdefault("mask_token", expected["mask_token"])  # training-only parameter
    if model.spec.family == "dinov3":
        state = _fill_fixed_buffers(model, state, expected, source)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    if missing or unexpected or wrong_shape:
        problems = []
        guess, description = describe_architecture(given)
        other = guess is not None and _architecture(MODELS[guess]) != _architecture(model.spec)
        if other or wrong_shape:
            problems.append(f"it looks like {description}, not {model.spec.name}")
        if wrong_shape:
            problems.append(f"{len(wrong_shape)} tensors of the wrong shape (first: {wrong_shape[0]})")
        if missing:
            problems.append(f"{len(missing)} missing keys (first: {', '.join(missing[:3])})")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected keys (first: {', '.join(unexpected[:3])})")
        raise WeightsError(f"weights from {source} do not fit {model.spec.name}: " + "; ".join(problems))
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, strict=True)


def _from_torch_hub_cache(spec: ModelSpec) -> StateDict | None:
    path = hub_checkpoint_path(spec)
    return read_checkpoint(path) if path.is_file() else None


def _from_hf_hub(spec: ModelSpec) -> StateDict:
    cached = hf_cached(spec)
    if cached:  # no network round trip when the file is already cached
        return read_checkpoint(cached)
    hub_log = logging.getLogger("huggingface_hub")
    quiet = not log.isEnabledFor(logging.DEBUG)
    previous = hub_log.level
    if quiet:  # its retry warnings would bury our one-line summary of what was tried
        hub_log.setLevel(logging.ERROR)
    try:
        return read_checkpoint(_hf_download(spec))
    except Exception as err:
        if _access_refused(err):
            raise _AccessRefused(_refusal_message(spec, err)) from err
        raise
    finally:
        hub_log.setLevel(previous)


def _hf_download(spec: ModelSpec) -> str:
    """Download the weights of ``spec.hf_repo``: ``model.safetensors``, or the shards its index lists."""
    # lazy: huggingface_hub takes ~0.1 s to import, and only a download needs it
    from huggingface_hub import hf_hub_download

    # lazy: huggingface_hub takes ~0.1 s to import
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    try:
        return hf_hub_download(spec.hf_repo, HF_FILES[0])
    except EntryNotFoundError as err:
        if isinstance(err, LocalEntryNotFoundError):  # offline and not cached, not "no such file"
            raise
        index = hf_hub_download(spec.hf_repo, HF_FILES[1])
    for shard in sorted(set(json.loads(Path(index).read_text())["weight_map"].values())):
        hf_hub_download(spec.hf_repo, shard)  # lands beside the index, where _read_sharded looks
    return index


def _access_refused(err: BaseException) -> bool:
    """A gated repo the user has no access to (no token: 401; licence not accepted: 403)."""
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError  # lazy: as in _hf_download

    if isinstance(err, GatedRepoError):
        return True
    response = getattr(err, "response", None) if isinstance(err, HfHubHTTPError) else None
    return getattr(response, "status_code", None) in (401, 403)


def _refusal_message(spec: ModelSpec, err: BaseException) -> str:
    status = getattr(getattr(err, "response", None), "status_code", None)
    why = f"HTTP {status}" if status else type(err).__name__
    return (
        f"the Hugging Face hub refused access to {spec.hf_repo} ({why}): its weights are gated. Accept the "
        f"licence at https://huggingface.co/{spec.hf_repo} and log in (`hf auth login`) or set HF_TOKEN, or "
        f"download the checkpoint (links from {DINOV3_DOWNLOADS} for DINOv3) and pass {field('weights', 'FILE')}"
    )


def _from_url(spec: ModelSpec) -> StateDict:
    """Meta's checkpoint downloaded into the torch hub cache (as ``torch.hub`` names it), then read.

    Downloaded with ``torch.hub.download_url_to_file`` (a bar on stderr, a temporary file moved into
    place when complete) rather than ``load_state_dict_from_url``, which prints ``Downloading: ...``
    on standard output, where ``dinofeat match`` writes its JSON."""
    if spec.url is None:
        raise WeightsError(f"no download URL for {spec.name}")
    if offline_mode():
        raise WeightsError("skipped: HF_HUB_OFFLINE is set")
    target = hub_checkpoint_path(spec)
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.hub.download_url_to_file(spec.url, str(target), progress=True)
    return read_checkpoint(target)


# ---------------------------------------------------------------------------------------------
# The network: is a host there at all (answered in seconds, not after a client's retries)?

#: Seconds a weights host has to accept a connection before the network counts as unreachable.
PROBE_SECONDS = 3.0
_PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")


def reachable(url: str, timeout: float = PROBE_SECONDS) -> bool:
    """Whether the host of ``url`` accepts a TCP connection within ``timeout`` seconds.

    Name resolution is included in the time (it runs in a helper thread, since ``getaddrinfo``
    has no timeout of its own). Behind a proxy (``HTTPS_PROXY``, ``ALL_PROXY``) the host cannot be
    probed directly, so it counts as reachable and the download itself finds out.
    """
    if any(os.environ.get(name) for name in _PROXY_VARIABLES):
        return True
    parts = urllib.parse.urlsplit(url)
    address = (parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80))
    answered = threading.Event()

    def connect() -> None:
        try:
            socket.create_connection(address, timeout=timeout).close()
        except OSError:
            return
        answered.set()

    threading.Thread(target=connect, name="dinofeat-probe", daemon=True).start()
    return answered.wait(timeout)


def _probe(urls: list[str]) -> dict[str, bool]:
    """:func:`reachable` of each URL, asked at the same time (offline, one timeout passes, not one per host)."""
    if not urls:
        return {}
    with concurrent.futures.ThreadPoolExecutor(len(urls), thread_name_prefix="dinofeat-probe") as pool:
        return dict(zip(urls, pool.map(reachable, urls)))


def _hf_endpoint() -> str:
    from huggingface_hub import constants  # lazy: huggingface_hub takes ~0.1 s to import

    return str(constants.ENDPOINT)


def _host(url: str) -> str:
    return urllib.parse.urlsplit(url).hostname or url


def _first_sentence(err: BaseException, limit: int = 200) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    text = text.split(". ")[0]
    return text if len(text) <= limit else text[: limit - 1] + "…"


def find_weights(spec: ModelSpec) -> tuple[StateDict, str]:
    """Try the torch hub cache, the Hugging Face hub and (DINOv2) the official URL, in that order.

    The local caches are read first; when neither holds the weights, what will be tried is logged
    at once (a warning: the command line shows it), and each network source is tried only if its
    host answers within :data:`PROBE_SECONDS` (so an offline machine fails in seconds, not after a
    client's retries). With ``HF_HUB_OFFLINE`` set the Hugging Face client looks in its cache only
    and the URL is skipped.
    """
    tried = []
    cached = _from_torch_hub_cache(spec)
    if cached is not None:
        return cached, str(hub_checkpoint_path(spec))
    hub_dir = hub_checkpoint_path(spec).parent
    tried.append(f"torch hub cache ({hub_dir / spec.checkpoint_pattern}: not there)")
    sources = [(f"Hugging Face hub {spec.hf_repo}", _hf_endpoint(), _from_hf_hub)]
    if spec.url is not None:
        sources.append((f"URL {spec.url}", spec.url, _from_url))
    offline = offline_mode()
    in_hf_cache = _in_hf_cache(spec)
    if not offline and not in_hf_cache:
        log.warning(_search_plan(spec))
    online = [address for _, address, fetch in sources if not offline and not (fetch is _from_hf_hub and in_hf_cache)]
    answered = _probe(online)
    for label, address, fetch in sources:
        if address in answered and not answered[address]:
            tried.append(f"{label} (no network: {_host(address)} did not answer within {PROBE_SECONDS:g} s)")
            continue
        try:
            return fetch(spec), label
        except (_AccessRefused, _Unreadable):
            raise
        except WeightsError as err:
            tried.append(f"{label} ({err.template})")
        except Exception as err:  # noqa: BLE001 - network and cache failures of every kind
            tried.append(f"{label} ({_first_sentence(err)})")
    raise WeightsError(f"no weights found for {spec.name}. Tried: " + "; ".join(tried) + _advice(spec, hub_dir))


def _in_hf_cache(spec: ModelSpec) -> bool:
    try:
        return hf_cached(spec) is not None
    except Exception:  # noqa: BLE001 - a broken cache is one more source that fails when read
        return False


def _search_plan(spec: ModelSpec) -> str:
    """``looking for dinov2_vits14 weights: ...``: the sources still to try, said before the slow ones."""
    then = f", then Meta's URL {spec.url}" if spec.url else ""
    return (
        f"looking for {spec.name} weights: torch hub cache and Hugging Face cache: not there; "
        f"trying the Hugging Face hub ({spec.hf_repo}){then}"
    )


def _advice(spec: ModelSpec, hub_dir: Path) -> str:
    """What to do when no source had the weights: offline, pass a file or set HF_HUB_OFFLINE=1."""
    offline = " Set HF_HUB_OFFLINE=1 on machines without network, so that no download is tried."
    if spec.url is None:
        return (
            f". DINOv3 weights are gated: accept the licence at https://huggingface.co/{spec.hf_repo} and log "
            f"in (`hf auth login`) or set HF_TOKEN, or request Meta's download links at {DINOV3_DOWNLOADS} "
            f"and pass {field('weights', 'FILE')}, or copy the {spec.checkpoint_pattern} file to {hub_dir}/." + offline
        )
    return (
        f". Offline, download {spec.url} elsewhere and pass {field('weights', 'FILE')}, or copy it to {hub_dir}/."
        + offline
    )


def load_model(
    name: str = DEFAULT_MODEL,
    weights: str | os.PathLike | None = None,
    *,
    depth: int | None = None,
) -> Model:
    """Build ``name`` from the registry and load its weights (on the CPU, in eval mode).

    ``weights`` is a checkpoint file or Hugging Face folder; without it the caches, the Hugging
    Face hub and (DINOv2) the official URL are tried. ``depth`` builds a shallower model (for tests).

    >>> load_model("dinov2_vitz14")
    Traceback (most recent call last):
    ...
    dinofeat.errors.UnknownModelError: unknown model 'dinov2_vitz14'. Did you mean ...
    """
    spec = get_spec(name)
    if weights is not None:
        state, source = read_checkpoint(weights), str(weights)
    else:
        state, source = find_weights(spec)
    model = build_model(spec, depth=depth)
    load_state(model, to_meta_keys(state), source)
    model.weights_source = source  # recorded in the files written with this model
    log.info("loaded %s weights from %s", spec.name, source)
    return model.eval()


# ---------------------------------------------------------------------------------------------
# AnyUp upsampler weights


#: Released AnyUp checkpoints (plain state dicts, CC-BY 4.0): name -> download URL. The first is the
#: default (trained on several backbones; the paper's was trained on DINOv2 ViT-S/14 only).
ANYUP_CHECKPOINTS = {
    "anyup_multi_backbone": "https://github.com/wimmerth/anyup/releases/download/checkpoint_v2/anyup_multi_backbone.pth",
    "anyup_paper": "https://github.com/wimmerth/anyup/releases/download/checkpoint/anyup_paper.pth",
}
DEFAULT_ANYUP_CHECKPOINT = "anyup_multi_backbone"
#: What an AnyUp weights file should be, said when it is something else.
EXPECTED_ANYUP = f"expected an AnyUp state dict such as {DEFAULT_ANYUP_CHECKPOINT}.pth"


def anyup_hub_path(name: str = DEFAULT_ANYUP_CHECKPOINT) -> Path:
    """Where ``torch.hub`` keeps (or would keep) the released checkpoint ``name``: ``checkpoints/<name>.pth``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / f"{name}.pth"


def find_anyup_weights(name: str = DEFAULT_ANYUP_CHECKPOINT) -> tuple[StateDict, str]:
    """The released checkpoint ``name``: from the torch hub cache, else downloaded from its release
    URL into that cache (not with ``HF_HUB_OFFLINE`` set). One-line :class:`WeightsError` otherwise."""
    url = ANYUP_CHECKPOINTS[name]
    path = anyup_hub_path(name)
    if path.is_file():
        return _read_anyup_file(path), str(path)
    tried = [f"torch hub cache ({path}: not there)"]
    if offline_mode():
        tried.append(f"URL {url} (skipped: HF_HUB_OFFLINE is set)")
    else:
        try:
            loaded = torch.hub.load_state_dict_from_url(
                url, map_location="cpu", weights_only=True, file_name=path.name, progress=False
            )
            return _unwrap(loaded, Path(url)), url
        except Exception as err:  # noqa: BLE001 - network and cache failures of every kind
            tried.append(f"URL {url} ({_first_sentence(err)})")
    raise WeightsError(
        f"no AnyUp weights found ({name}). Tried: " + "; ".join(tried) + f". Offline, download {url} elsewhere "
        f"and pass {field('upsample_weights', 'FILE')}, or copy it to {path.parent}/"
    )


def _read_anyup_file(path: str | os.PathLike) -> StateDict:
    try:
        return read_checkpoint(path)
    except WeightsError as err:
        raise WeightsError(err.template.replace(EXPECTED_WEIGHTS, EXPECTED_ANYUP)) from None


def load_anyup_state(model: torch.nn.Module, state: StateDict, source: str) -> None:
    """Load ``state`` into an :class:`~dinofeat.models.anyup.AnyUp` strictly; missing, unexpected
    and wrongly shaped keys are named in a one-line :class:`WeightsError`."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    if missing or unexpected or wrong_shape:
        problems = []
        if wrong_shape:
            first = wrong_shape[0]
            problems.append(
                f"{len(wrong_shape)} tensors of the wrong shape (first: {first} "
                f"{tuple(state[first].shape)}, expected {tuple(expected[first].shape)})"
            )
        if missing:
            problems.append(f"{len(missing)} missing keys (first: {', '.join(missing[:3])})")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected keys (first: {', '.join(unexpected[:3])})")
        raise WeightsError(f"weights from {source} do not fit AnyUp: " + "; ".join(problems))
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, strict=True)


def load_anyup(weights: str | os.PathLike | None = None) -> AnyUp:
    """The AnyUp upsampler with its weights (on the CPU, in eval mode).

    ``weights``: a checkpoint file, or the name of a released checkpoint (``anyup_multi_backbone``,
    the default, or ``anyup_paper``), found in the torch hub cache (``checkpoints/<name>.pth``) or
    downloaded from its release URL. Pickles are read with ``torch.load(weights_only=True)``.
    """
    if weights is None or str(weights) in ANYUP_CHECKPOINTS:
        state, source = find_anyup_weights(DEFAULT_ANYUP_CHECKPOINT if weights is None else str(weights))
    else:
        state, source = _read_anyup_file(weights), str(weights)
    model = AnyUp()
    load_anyup_state(model, state, source)
    log.info("loaded AnyUp weights from %s", source)
    return model.eval()
