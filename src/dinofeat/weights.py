"""Finding, reading and converting DINOv2 weights.

Sources are tried in this order (see :func:`load_model`):

1. an explicit path: an official Meta ``.pth``, a ``.safetensors`` file, or a Hugging Face model
   folder (``config.json`` + ``model.safetensors``), with Meta or Hugging Face key names;
2. the official checkpoint in the torch hub cache (``$TORCH_HOME/hub/checkpoints``);
3. the Hugging Face hub (``huggingface_hub``, honouring ``HF_HOME`` and ``HF_HUB_OFFLINE``);
4. the official download URL (skipped when ``HF_HUB_OFFLINE`` is set).

Pickled checkpoints are read with ``torch.load(weights_only=True)``: no pickled code runs.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import torch

from dinofeat.errors import WeightsError
from dinofeat.registry import DEFAULT_MODEL, MODELS, ModelSpec, get_spec
from dinofeat.vit import DinoVisionTransformer

log = logging.getLogger(__name__)

StateDict = dict[str, torch.Tensor]
_WRAPPER_KEYS = ("model", "state_dict", "teacher", "student")
_PREFIXES = ("module.", "backbone.", "dinov2.", "model.")
_TRUE = {"1", "true", "yes", "on"}


def offline_mode() -> bool:
    """True when ``HF_HUB_OFFLINE`` asks us not to touch the network."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


def hub_checkpoint_path(spec: ModelSpec) -> Path:
    """Where ``torch.hub`` keeps (or would keep) the official checkpoint of ``spec``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / spec.checkpoint_file


def cached_locally(spec: ModelSpec) -> str | None:
    """Which local cache already holds weights for ``spec`` ("torch hub", "hugging face"), or None."""
    if hub_checkpoint_path(spec).is_file():
        return "torch hub"
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(spec.hf_repo, "model.safetensors")
    except Exception:  # noqa: BLE001 - a broken cache must not break `dinofeat models`
        return None
    return "hugging face" if isinstance(found, str) else None


# ---------------------------------------------------------------------------------------------
# Reading files


def read_checkpoint(path: str | os.PathLike) -> StateDict:
    """Read a checkpoint file or Hugging Face folder into a flat state dict (keys as stored)."""
    path = Path(path)
    if path.is_dir():
        return _read_hf_folder(path)
    if not path.exists():
        raise WeightsError(f"weights file not found: {path}")
    if path.stat().st_size == 0:
        raise WeightsError(f"weights file is empty: {path}")
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=_is_zip(path))
    except Exception as err:  # torch raises many types for bad files; all mean the same to the user
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise WeightsError(f"cannot read {path} as a PyTorch checkpoint ({reason})") from err
    return _unwrap(loaded, path)


def _is_zip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"


def _read_safetensors(path: Path) -> StateDict:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as err:  # safetensors raises SafetensorError / OSError for bad files
        raise WeightsError(f"cannot read {path} as safetensors ({err})") from err


def _read_hf_folder(path: Path) -> StateDict:
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (path / name).is_file():
            return read_checkpoint(path / name)
    raise WeightsError(f"{path} is a folder without model.safetensors or pytorch_model.bin")


def _unwrap(loaded: object, path: Path) -> StateDict:
    while isinstance(loaded, dict) and not _is_state_dict(loaded):
        inner = next((loaded[k] for k in _WRAPPER_KEYS if isinstance(loaded.get(k), dict)), None)
        if inner is None:
            break
        loaded = inner
    if not isinstance(loaded, dict) or not _is_state_dict(loaded):
        raise WeightsError(f"{path} does not contain a state dict of tensors")
    return dict(loaded)


def _is_state_dict(obj: dict) -> bool:
    return bool(obj) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


# ---------------------------------------------------------------------------------------------
# Converting key names


def to_meta_keys(state: StateDict) -> StateDict:
    """Convert a state dict to Meta's key names (Hugging Face transformers v4 and v5 layouts)."""
    state = {_strip_prefix(k): v for k, v in state.items()}
    if not any(k.startswith(("embeddings.", "encoder.layer.")) for k in state):
        return state
    out: StateDict = {}
    pending: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        new = _convert_hf_key(key)
        if new is None:
            out[key] = value  # unknown: left as is so that the strict load names it
        elif isinstance(new, tuple):
            target, part = new
            pending.setdefault(target, {})[part] = value
        else:
            out[new] = value
    for target, parts in pending.items():
        order = ("q", "k", "v") if ".attn.qkv." in target else ("gate", "up")
        missing = [p for p in order if p not in parts]
        if missing:
            raise WeightsError(f"checkpoint is missing the {'/'.join(missing)} part of {target}")
        out[target] = torch.cat([parts[p] for p in order], dim=0)
    return out


def _strip_prefix(key: str) -> str:
    for prefix in _PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix):]
    return key


_HF_FIXED = {
    "embeddings.cls_token": "cls_token",
    "embeddings.mask_token": "mask_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.register_tokens": "register_tokens",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
}
_HF_LAYER = re.compile(r"encoder\.layer\.(\d+)\.(.+)\.(weight|bias|lambda1)$")
_HF_BLOCK_PARTS = {
    "norm1": "norm1", "norm2": "norm2",
    "attention.output.dense": "attn.proj", "attention.o_proj": "attn.proj",
    "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2",
    "mlp.weights_in": "mlp.w12", "mlp.weights_out": "mlp.w3", "mlp.down_proj": "mlp.w3",
}
_HF_SPLIT_PARTS = {
    "attention.attention.query": ("attn.qkv", "q"), "attention.q_proj": ("attn.qkv", "q"),
    "attention.attention.key": ("attn.qkv", "k"), "attention.k_proj": ("attn.qkv", "k"),
    "attention.attention.value": ("attn.qkv", "v"), "attention.v_proj": ("attn.qkv", "v"),
    "mlp.gate_proj": ("mlp.w12", "gate"), "mlp.up_proj": ("mlp.w12", "up"),
}


def _convert_hf_key(key: str) -> str | tuple[str, str] | None:
    if key in _HF_FIXED:
        return _HF_FIXED[key]
    match = _HF_LAYER.match(key)
    if not match:
        return None
    index, part, kind = match.groups()
    if kind == "lambda1":
        scale = {"layer_scale1": "ls1", "layer_scale2": "ls2"}.get(part)
        return f"blocks.{index}.{scale}.gamma" if scale else None
    if part in _HF_BLOCK_PARTS:
        return f"blocks.{index}.{_HF_BLOCK_PARTS[part]}.{kind}"
    if part in _HF_SPLIT_PARTS:
        target, piece = _HF_SPLIT_PARTS[part]
        return f"blocks.{index}.{target}.{kind}", piece
    return None


# ---------------------------------------------------------------------------------------------
# Architecture checks and loading


def describe_architecture(state: StateDict) -> tuple[str | None, str]:
    """Guess which registry model a Meta-keyed state dict belongs to: (name or None, description)."""
    dim = state["cls_token"].shape[-1] if "cls_token" in state else None
    depth = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    regs = state["register_tokens"].shape[1] if "register_tokens" in state else 0
    shape = f"embed dim {dim}, {depth} blocks, {regs} registers"
    for spec in MODELS.values():
        if (spec.embed_dim, spec.depth, spec.num_registers) == (dim, depth, regs):
            return spec.name, f"{spec.name} ({shape})"
    return None, f"an unknown architecture ({shape})"


def load_state(model: DinoVisionTransformer, state: StateDict, source: str) -> None:
    """Load Meta-keyed ``state`` into ``model`` strictly; any mismatch raises :class:`WeightsError`."""
    expected = model.state_dict()
    state = dict(state)
    state.setdefault("mask_token", expected["mask_token"])  # training-only parameter
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    if missing or unexpected or wrong_shape:
        problems = []
        guess, description = describe_architecture(state)
        if (guess is not None and guess != model.spec.name) or wrong_shape:
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
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    cached = try_to_load_from_cache(spec.hf_repo, "model.safetensors")
    if isinstance(cached, str):  # no network round trip when the file is already cached
        return read_checkpoint(cached)
    hub_log = logging.getLogger("huggingface_hub")
    quiet = not log.isEnabledFor(logging.DEBUG)
    previous = hub_log.level
    if quiet:  # its retry warnings would bury our one-line summary of what was tried
        hub_log.setLevel(logging.ERROR)
    try:
        return read_checkpoint(hf_hub_download(spec.hf_repo, "model.safetensors"))
    finally:
        hub_log.setLevel(previous)


def _from_url(spec: ModelSpec) -> StateDict:
    if offline_mode():
        raise WeightsError("skipped: HF_HUB_OFFLINE is set")
    return _unwrap(
        torch.hub.load_state_dict_from_url(
            spec.url, map_location="cpu", weights_only=True, file_name=spec.checkpoint_file
        ),
        Path(spec.url),
    )


def _first_sentence(err: BaseException, limit: int = 200) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    text = text.split(". ")[0]
    return text if len(text) <= limit else text[: limit - 1] + "…"


def find_weights(spec: ModelSpec) -> tuple[StateDict, str]:
    """Try the torch hub cache, the Hugging Face hub and the official URL, in that order."""
    tried = []
    cached = _from_torch_hub_cache(spec)
    if cached is not None:
        return cached, str(hub_checkpoint_path(spec))
    tried.append(f"torch hub cache ({hub_checkpoint_path(spec)}: not there)")
    for label, fetch in ((f"Hugging Face hub {spec.hf_repo}", _from_hf_hub), (f"URL {spec.url}", _from_url)):
        try:
            return fetch(spec), label
        except WeightsError as err:
            if "do not fit" in str(err) or "cannot read" in str(err):
                raise
            tried.append(f"{label} ({err})")
        except Exception as err:  # noqa: BLE001 - network and cache failures of every kind
            tried.append(f"{label} ({_first_sentence(err)})")
    raise WeightsError(
        f"no weights found for {spec.name}. Tried: " + "; ".join(tried)
        + f". Offline, download {spec.url} elsewhere and pass --weights FILE, or copy it to "
        f"{hub_checkpoint_path(spec).parent}/"
    )


def load_model(
    name: str = DEFAULT_MODEL,
    weights: str | os.PathLike | None = None,
    *,
    depth: int | None = None,
) -> DinoVisionTransformer:
    """Build ``name`` from the registry and load its weights (on the CPU, in eval mode).

    ``weights`` is a checkpoint file or Hugging Face folder; without it the caches, the Hugging
    Face hub and the official URL are tried. ``depth`` builds a shallower model (for tests).

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
    model = DinoVisionTransformer(spec, depth=depth)
    load_state(model, to_meta_keys(state), source)
    log.info("loaded %s weights from %s", spec.name, source)
    return model.eval()
