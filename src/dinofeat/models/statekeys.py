"""State-dict key layouts: Hugging Face transformers' DINOv2 and DINOv3 names (v4 and v5) and timm's
converted to Meta's, the names :mod:`dinofeat.vit` and :mod:`dinofeat.models.dinov3` use.

timm's layouts (``vit_*_patch14_dinov2``: ``VisionTransformer``; ``vit_*_patch16_dinov3``: ``Eva``):

* DINOv2: Meta's names, except ``reg_token`` for the registers, the giant's packed SwiGLU as
  ``mlp.fc1`` / ``mlp.fc2`` (Meta's ``w12`` / ``w3``), and, with registers, a positional embedding
  without the CLS position (timm adds that position's vector to ``cls_token`` instead: an entry
  of zeros in its place gives the same sum);
* DINOv3: ``reg_token`` (Meta's ``storage_tokens``), LayerScale ``gamma_1`` / ``gamma_2``, the
  q and v biases as ``attn.q_bias`` / ``attn.v_bias`` (timm's ``_qkvb`` models) or none at all
  (timm's others: Meta's biases are zero there), SwiGLU ``fc1_g`` / ``fc1_x`` / ``fc2`` (Meta's
  ``w1`` / ``w2`` / ``w3``); no RoPE periods and no key bias mask (fixed values, filled in when the
  state is loaded).

Wrappers' prefixes (``module.``, ``backbone.``, ...) are stripped; q/k/v and SwiGLU parts split by
transformers are joined as Meta packs them; unknown keys are kept, so that the strict load of
:func:`dinofeat.models.weights.load_state` names them.
"""

from __future__ import annotations

import math
import re

import torch

from dinofeat.errors import WeightsError
from dinofeat.models.dinov3 import KeyMaskedLinear

StateDict = dict[str, torch.Tensor]
#: Prefixes that training wrappers and transformers' base classes add to every key.
_PREFIXES = ("module.", "backbone.", "dinov2.", "model.")


def to_meta_keys(state: StateDict) -> StateDict:
    """Convert a state dict to Meta's key names (Hugging Face transformers v4 and v5 layouts).

    DINOv3 layouts (``layer.N.`` / ``model.layer.N.``, no ``encoder.``) are told apart from DINOv2
    ones (``encoder.layer.N.``) by their keys.
    """
    state = {_strip_prefix(k): v for k, v in state.items()}
    if _is_dinov3_timm(state):
        return _dinov3_timm_to_meta(state)
    if _is_dinov3_hf(state):
        return _dinov3_hf_to_meta(state)
    if not any(k.startswith(("embeddings.", "encoder.layer.")) for k in state):
        return _dinov2_timm_to_meta(state)
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
            return key[len(prefix) :]
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
    "norm1": "norm1",
    "norm2": "norm2",
    "attention.output.dense": "attn.proj",
    "attention.o_proj": "attn.proj",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
    "mlp.weights_in": "mlp.w12",
    "mlp.weights_out": "mlp.w3",
    "mlp.down_proj": "mlp.w3",
}
_HF_SPLIT_PARTS = {
    "attention.attention.query": ("attn.qkv", "q"),
    "attention.q_proj": ("attn.qkv", "q"),
    "attention.attention.key": ("attn.qkv", "k"),
    "attention.k_proj": ("attn.qkv", "k"),
    "attention.attention.value": ("attn.qkv", "v"),
    "attention.v_proj": ("attn.qkv", "v"),
    "mlp.gate_proj": ("mlp.w12", "gate"),
    "mlp.up_proj": ("mlp.w12", "up"),
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


# transformers' DINOv3ViTModel: v4 saves ``layer.N.``, v5 holds ``model.layer.N.`` in memory (and
# saves ``layer.N.``). q/k/v are split, with no key bias; ``inv_freq`` = 1 / Meta's periods is not
# saved by current versions; the mask token is (1, 1, D) instead of (1, D).
_HF3_LAYER = re.compile(r"(?:model\.)?layer\.(\d+)\.(.+)\.(weight|bias|lambda1)$")
_HF3_FIXED = {
    "embeddings.cls_token": "cls_token",
    "embeddings.mask_token": "mask_token",
    "embeddings.register_tokens": "storage_tokens",
    "embeddings.patch_embeddings.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.bias": "patch_embed.proj.bias",
    "norm.weight": "norm.weight",
    "norm.bias": "norm.bias",
}
_HF3_BLOCK_PARTS = {"norm1": "norm1", "norm2": "norm2", "attention.o_proj": "attn.proj"}
_HF3_MLP = {  # (SwiGLU name, plain MLP name)
    "mlp.gate_proj": ("mlp.w1", None),
    "mlp.up_proj": ("mlp.w2", "mlp.fc1"),
    "mlp.down_proj": ("mlp.w3", "mlp.fc2"),
}


def _is_dinov3_hf(state: StateDict) -> bool:
    return "embeddings.patch_embeddings.weight" in state or any(_HF3_LAYER.match(k) for k in state)


def _dinov3_hf_to_meta(state: StateDict) -> StateDict:
    """transformers' DINOv3 key names -> Meta's; unknown keys are kept so the strict load names them."""
    gated = any(".mlp.gate_proj." in k for k in state)
    out: StateDict = {}
    qkv: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        if key in _HF3_FIXED:
            out[_HF3_FIXED[key]] = value.reshape(1, -1) if key == "embeddings.mask_token" else value
            continue
        if key == "rope_embeddings.inv_freq":
            out["rope_embed.periods"] = 1 / value.float()
            continue
        match = _HF3_LAYER.match(key)
        index, part, kind = match.groups() if match else (None, None, None)
        block = f"blocks.{index}"
        if kind == "lambda1" and part in ("layer_scale1", "layer_scale2"):
            out[f"{block}.ls{part[-1]}.gamma"] = value
        elif part in _HF3_BLOCK_PARTS and kind != "lambda1":
            out[f"{block}.{_HF3_BLOCK_PARTS[part]}.{kind}"] = value
        elif part in _HF3_MLP and kind != "lambda1" and _HF3_MLP[part][0 if gated else 1]:
            out[f"{block}.{_HF3_MLP[part][0 if gated else 1]}.{kind}"] = value
        elif part in ("attention.q_proj", "attention.k_proj", "attention.v_proj") and (
            kind == "weight" or (kind == "bias" and part != "attention.k_proj")
        ):
            qkv.setdefault(f"{block}.attn.qkv.{kind}", {})[part[len("attention.")]] = value
        else:
            out[key] = value  # unknown (a key bias too: DINOv3 has none): named by the strict load
    for target, parts in qkv.items():
        order = ("q", "k", "v") if target.endswith(".weight") else ("q", "v")
        missing = [p for p in order if p not in parts]
        if missing:
            raise WeightsError(f"checkpoint is missing the {'/'.join(missing)} part of {target}")
        if target.endswith(".weight"):
            out[target] = torch.cat([parts[p] for p in order], dim=0)
        else:  # Meta stores a key bias and masks it; ours is zero
            q, v = parts["q"], parts["v"]
            out[target] = torch.cat((q, torch.zeros_like(q), v))
            out[target.removesuffix("bias") + "bias_mask"] = KeyMaskedLinear.key_mask(q.shape[0])
    return out


# timm: Meta's names with a few of its own (see the module docstring).
_TIMM_BLOCK = re.compile(r"blocks\.(\d+)\.(.+)$")
_TIMM3_PARTS = {
    "gamma_1": "ls1.gamma",
    "gamma_2": "ls2.gamma",
    "mlp.fc1_g.weight": "mlp.w1.weight",
    "mlp.fc1_g.bias": "mlp.w1.bias",
    "mlp.fc1_x.weight": "mlp.w2.weight",
    "mlp.fc1_x.bias": "mlp.w2.bias",
}


def _is_dinov3_timm(state: StateDict) -> bool:
    """timm's ``Eva`` DINOv3: registers named ``reg_token``, LayerScale ``gamma_1``, no positional embedding."""
    return "reg_token" in state and "pos_embed" not in state and any(k.endswith(".gamma_1") for k in state)


def _dinov3_timm_to_meta(state: StateDict) -> StateDict:
    """timm's DINOv3 names -> Meta's. Without q/v biases (timm's non-``_qkvb`` models) the fused
    bias is zero: Meta's is zero there too, and a model without q/k/v bias (the 7B) drops it."""
    swiglu = any(".mlp.fc1_g." in k for k in state)
    out: StateDict = {}
    biases: dict[str, dict[str, torch.Tensor]] = {}
    blocks: set[str] = set()
    for key, value in state.items():
        if key == "reg_token":
            out["storage_tokens"] = value
            continue
        match = _TIMM_BLOCK.match(key)
        if match is None:
            out[key] = value
            continue
        index, part = match.groups()
        blocks.add(index)
        if part in ("attn.q_bias", "attn.v_bias"):
            biases.setdefault(index, {})[part[len("attn.")]] = value
        elif part in _TIMM3_PARTS:
            out[f"blocks.{index}.{_TIMM3_PARTS[part]}"] = value
        elif swiglu and part in ("mlp.fc2.weight", "mlp.fc2.bias"):
            out[f"blocks.{index}.mlp.w3.{part.rsplit('.', 1)[1]}"] = value
        else:
            out[key] = value
    for index in blocks:
        weight = out.get(f"blocks.{index}.attn.qkv.weight")
        if weight is None:
            continue  # named by the strict load
        dim = weight.shape[1]
        parts = biases.get(index, {})
        if parts and set(parts) != {"q", "v"}:
            raise WeightsError(f"checkpoint has only the {'/'.join(parts)} bias of blocks.{index}.attn")
        q = parts.get("q", weight.new_zeros(dim))
        v = parts.get("v", weight.new_zeros(dim))
        out[f"blocks.{index}.attn.qkv.bias"] = torch.cat((q, torch.zeros_like(q), v))
        out[f"blocks.{index}.attn.qkv.bias_mask"] = KeyMaskedLinear.key_mask(dim)
    return out


def _dinov2_timm_to_meta(state: StateDict) -> StateDict:
    """timm's DINOv2 names -> Meta's (Meta's own keys pass unchanged): ``reg_token``, the giant's
    packed SwiGLU ``mlp.fc1`` / ``mlp.fc2``, and a positional embedding without the CLS position."""
    out: StateDict = {}
    for key, value in state.items():
        match = _TIMM_BLOCK.match(key)
        if key == "reg_token":
            out["register_tokens"] = value
        elif match and match.group(2).startswith("mlp.fc") and _packed_swiglu(state, match.group(1)):
            out[key.replace(".mlp.fc1.", ".mlp.w12.").replace(".mlp.fc2.", ".mlp.w3.")] = value
        else:
            out[key] = value
    pos = out.get("pos_embed")
    if pos is not None and pos.ndim == 3 and math.isqrt(pos.shape[1]) ** 2 == pos.shape[1]:
        out["pos_embed"] = torch.cat((pos.new_zeros(pos.shape[0], 1, pos.shape[2]), pos), dim=1)
    return out


def _packed_swiglu(state: StateDict, index: str) -> bool:
    """Block ``index``'s ``mlp.fc1`` packs gate and up (twice as wide as ``mlp.fc2``'s input)."""
    fc1, fc2 = state.get(f"blocks.{index}.mlp.fc1.weight"), state.get(f"blocks.{index}.mlp.fc2.weight")
    return fc1 is not None and fc2 is not None and fc1.shape[0] == 2 * fc2.shape[1]
