"""Every weight source and format, on random weights saved in the real file layouts."""

from __future__ import annotations

import collections

import pytest
import torch

from conftest import random_vit
from dinofeat.errors import WeightsError
from dinofeat.models.registry import get_spec
from dinofeat.models.statekeys import to_meta_keys
from dinofeat.models.weights import load_model, read_checkpoint


@pytest.fixture
def vits_state(vits14_checkpoint):
    return torch.load(vits14_checkpoint, weights_only=True)


def _assert_loaded(model, state):
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_official_pth(vits14_checkpoint, vits_state):
    _assert_loaded(load_model("dinov2_vits14", vits14_checkpoint), vits_state)


def test_safetensors_with_meta_keys(tmp_path, vits_state):
    from safetensors.torch import save_file

    path = tmp_path / "w.safetensors"
    save_file(vits_state, path)
    _assert_loaded(load_model("dinov2_vits14", path), vits_state)


def test_wrapped_and_prefixed_checkpoints(tmp_path, vits_state):
    path = tmp_path / "wrapped.pth"
    torch.save({"teacher": {f"backbone.{k}": v for k, v in vits_state.items()}}, path)
    _assert_loaded(load_model("dinov2_vits14", path), vits_state)


def _hf_model(registers=False):
    transformers = pytest.importorskip("transformers")
    kwargs = {
        "hidden_size": 384,
        "num_attention_heads": 6,
        "num_hidden_layers": 12,
        "image_size": 518,
        "patch_size": 14,
    }
    if registers:
        return transformers.Dinov2WithRegistersModel(transformers.Dinov2WithRegistersConfig(**kwargs))
    return transformers.Dinov2Model(transformers.Dinov2Config(**kwargs))


@pytest.mark.parametrize("registers", [False, True])
def test_hugging_face_folder_v4_keys(tmp_path, registers):
    hf = _hf_model(registers)
    hf.save_pretrained(tmp_path)  # transformers saves the v4 key layout (attention.attention.query, ...)
    name = "dinov2_vits14_reg" if registers else "dinov2_vits14"
    model = load_model(name, tmp_path)
    state = hf.state_dict()
    assert torch.equal(model.pos_embed, state["embeddings.position_embeddings"])
    qkv = model.blocks[3].attn.qkv.weight
    assert torch.equal(qkv[384:768], state["encoder.layer.3.attention.k_proj.weight"])


def test_hugging_face_v5_in_memory_keys(tmp_path):
    from safetensors.torch import save_file

    hf = _hf_model()
    path = tmp_path / "model.safetensors"
    save_file({f"dinov2.{k}": v.contiguous() for k, v in hf.state_dict().items()}, path)
    model = load_model("dinov2_vits14", path)
    assert torch.equal(model.blocks[0].attn.proj.weight, hf.state_dict()["encoder.layer.0.attention.o_proj.weight"])


def test_swiglu_keys_convert_both_layouts():
    w_gate, w_up = torch.randn(8, 4), torch.randn(8, 4)
    v5 = to_meta_keys({"encoder.layer.0.mlp.gate_proj.weight": w_gate, "encoder.layer.0.mlp.up_proj.weight": w_up})
    v4 = to_meta_keys({"encoder.layer.0.mlp.weights_in.weight": torch.cat([w_gate, w_up])})
    assert torch.equal(v5["blocks.0.mlp.w12.weight"], v4["blocks.0.mlp.w12.weight"])


def test_torch_hub_cache(tmp_path, monkeypatch, vits14_checkpoint, vits_state):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    (tmp_path / "hub" / "checkpoints" / "dinov2_vits14_pretrain.pth").symlink_to(vits14_checkpoint)
    _assert_loaded(load_model("dinov2_vits14"), vits_state)


def _offline_empty_caches(tmp_path, monkeypatch):
    import huggingface_hub.constants as hf_constants

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    return tmp_path / "hf"


def test_hugging_face_hub_cache_offline(tmp_path, monkeypatch):
    """A file in the standard hub cache layout is found with HF_HUB_OFFLINE set."""
    cache = _offline_empty_caches(tmp_path, monkeypatch)
    repo = cache / "models--facebook--dinov2-small"
    snapshot = repo / "snapshots" / "0123456789abcdef0123456789abcdef01234567"
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(snapshot.name)
    hf = _hf_model()
    hf.save_pretrained(snapshot)
    model = load_model("dinov2_vits14")
    assert torch.equal(model.cls_token, hf.state_dict()["embeddings.cls_token"])


def test_nothing_found_explains_every_source(tmp_path, monkeypatch):
    _offline_empty_caches(tmp_path, monkeypatch)
    with pytest.raises(WeightsError) as info:
        load_model("dinov2_vits14")
    message = str(info.value)
    for part in ("torch hub cache", "Hugging Face hub facebook/dinov2-small", "dl.fbaipublicfiles.com", "weights=FILE"):
        assert part in message
    assert "\n" not in message


def test_a_damaged_file_in_a_cache_ends_the_search_with_its_own_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    checkpoints = tmp_path / "torch" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / "dinov2_vits14_pretrain.pth").write_bytes(b"not a checkpoint at all")
    with pytest.raises(WeightsError, match=r"^cannot read .*dinov2_vits14_pretrain.pth: it is not a PyTorch"):
        load_model("dinov2_vits14")


@pytest.mark.parametrize("text", ["the token file cannot read", "proxy settings do not fit"])
def test_a_source_that_fails_is_one_tried_whatever_its_message_says(tmp_path, monkeypatch, text):
    """Which failures end the search is said by their type, not by words in their message."""
    import dinofeat.models.weights

    _offline_empty_caches(tmp_path, monkeypatch)

    def hub(spec):
        raise WeightsError(f"skipped: {text}")

    monkeypatch.setattr(dinofeat.models.weights, "_from_hf_hub", hub)
    with pytest.raises(WeightsError) as info:
        load_model("dinov2_vits14")
    message = str(info.value)
    assert message.startswith("no weights found for dinov2_vits14. Tried: ")
    assert f"Hugging Face hub facebook/dinov2-small (skipped: {text})" in message
    assert "URL https://dl.fbaipublicfiles.com" in message  # the next source was tried


def test_wrong_architecture_is_named(vits14_checkpoint):
    with pytest.raises(WeightsError, match="looks like dinov2_vits14.*not dinov2_vitb14"):
        load_model("dinov2_vitb14", vits14_checkpoint)
    with pytest.raises(WeightsError, match="not dinov2_vits14_reg"):
        load_model("dinov2_vits14_reg", vits14_checkpoint)


def test_missing_and_unexpected_keys_are_named(tmp_path, vits_state):
    state = collections.OrderedDict(vits_state)
    del state["blocks.5.norm2.bias"]
    state["head.weight"] = torch.zeros(3)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(
        WeightsError, match=r"missing keys \(first: blocks.5.norm2.bias\).*unexpected keys \(first: head.weight\)"
    ):
        load_model("dinov2_vits14", path)


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", "truncated"])
def test_unreadable_files(tmp_path, vits14_checkpoint, content):
    path = tmp_path / "w.pth"
    if content == "truncated":
        content = vits14_checkpoint.read_bytes()[: 1 << 20]
    path.write_bytes(content)
    with pytest.raises(WeightsError, match="w.pth"):
        load_model("dinov2_vits14", path)


def test_truncated_safetensors(tmp_path):
    path = tmp_path / "w.safetensors"
    path.write_bytes(b'\x10\x00\x00\x00\x00\x00\x00\x00{"a":')
    with pytest.raises(WeightsError, match="safetensors"):
        read_checkpoint(path)


class Payload:
    def __reduce__(self):
        return (print, ("pickled code ran",))


def test_pickled_code_is_never_executed(tmp_path, capsys):
    path = tmp_path / "evil.pth"
    torch.save({"cls_token": torch.zeros(1), "payload": Payload()}, path)
    with pytest.raises(WeightsError, match="cannot read"):
        read_checkpoint(path)
    assert "pickled code ran" not in capsys.readouterr().out


def test_folder_without_weights(tmp_path):
    with pytest.raises(WeightsError, match="model.safetensors"):
        read_checkpoint(tmp_path)


def test_random_vit_roundtrip_at_reduced_depth(tmp_path):
    vit = random_vit("dinov2_vitg14_reg", depth=1)
    path = tmp_path / "g.pth"
    torch.save(vit.state_dict(), path)
    loaded = load_model("dinov2_vitg14_reg", path, depth=1)
    x = torch.randn(1, 3, 42, 28)
    assert torch.equal(loaded(x), vit(x))
    assert get_spec("dinov2_vitg14_reg").ffn == "swiglu"


# -- the first run on a machine without network (issue 22 item 1) -------------------------------


def _unreachable_network(tmp_path, monkeypatch, *, hub_client: bool = False) -> list:
    """Empty caches, no HF_HUB_OFFLINE, and a network where every connection fails; returns the
    addresses dialled. The download clients must not be reached (the hub's, unless ``hub_client``)."""
    import socket

    import huggingface_hub
    import huggingface_hub.constants as hf_constants

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    dialled = []

    def refuse(address, *args, **kwargs):
        dialled.append(address)
        raise OSError(101, "Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", refuse)
    if not hub_client:
        monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **k: pytest.fail("the hub was called"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: pytest.fail("a download was started"))
    return dialled


def test_an_unreachable_network_fails_at_once_naming_what_to_do(tmp_path, monkeypatch, caplog):
    dialled = _unreachable_network(tmp_path, monkeypatch)
    with caplog.at_level("WARNING", logger="dinofeat"), pytest.raises(WeightsError) as info:
        load_model("dinov2_vits14")
    assert sorted(dialled) == [("dl.fbaipublicfiles.com", 443), ("huggingface.co", 443)]  # at the same time
    message = str(info.value)
    assert "Hugging Face hub facebook/dinov2-small (no network: huggingface.co did not answer within 3 s)" in message
    assert "no network: dl.fbaipublicfiles.com" in message
    assert "HF_HUB_OFFLINE=1" in message and "weights=FILE" in message and "\n" not in message
    said = [record.getMessage() for record in caplog.records]
    assert said == [
        "looking for dinov2_vits14 weights: torch hub cache and Hugging Face cache: not there; trying the "
        "Hugging Face hub (facebook/dinov2-small), then Meta's URL "
        "https://dl.fbaipublicfiles.com/dinov2/dinov2_vits14/dinov2_vits14_pretrain.pth"
    ]


def test_hf_hub_offline_dials_nothing_and_says_nothing_before_the_error(tmp_path, monkeypatch, caplog):
    import huggingface_hub.constants as hf_constants

    dialled = _unreachable_network(tmp_path, monkeypatch, hub_client=True)  # offline, it reads its cache only
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    with caplog.at_level("WARNING", logger="dinofeat"), pytest.raises(WeightsError, match="HF_HUB_OFFLINE"):
        load_model("dinov2_vits14")
    assert dialled == [] and caplog.records == []


def test_a_probe_that_hangs_counts_as_unreachable(monkeypatch):
    import socket
    import threading

    import dinofeat.models.weights

    release = threading.Event()

    def hang(*args, **kwargs):
        release.wait()
        raise OSError("gave up")

    monkeypatch.setattr(socket, "create_connection", hang)
    try:
        assert not dinofeat.models.weights.reachable("https://huggingface.co", timeout=0.05)
    finally:
        release.set()


def test_a_proxy_is_not_probed(monkeypatch):
    import socket

    import dinofeat.models.weights

    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: pytest.fail("dialled"))
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    assert dinofeat.models.weights.reachable("https://huggingface.co")


def test_meta_url_is_downloaded_into_the_hub_cache_without_printing(tmp_path, monkeypatch, capsys, vits14_checkpoint):
    import shutil

    import dinofeat.models.weights

    _unreachable_network(tmp_path, monkeypatch)
    monkeypatch.setattr(dinofeat.models.weights, "reachable", lambda url, timeout=0: "fbaipublicfiles" in url)
    fetched = []

    def download(url, dst, progress=True):
        fetched.append(url)
        shutil.copy(vits14_checkpoint, dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    load_model("dinov2_vits14")
    assert fetched == [get_spec("dinov2_vits14").url]
    assert (tmp_path / "torch" / "hub" / "checkpoints" / "dinov2_vits14_pretrain.pth").is_file()
    assert capsys.readouterr().out == ""  # torch.hub's "Downloading: ..." line is not printed
