import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import random_vit
from dinofeat.errors import InputError
from dinofeat.features.extractor import Extractor


@pytest.fixture(scope="module")
def extractor():
    return Extractor(random_vit("dinov2_vits14", depth=2), device="cpu", precision="fp32", resolution=112)


def test_batched_equals_one_by_one(extractor, photo):
    images = [photo, photo[::-1].copy(), photo[:, ::-1].copy()]
    batched = extractor.extract_arrays(images)
    for image, fmap in zip(images, batched):
        single = extractor.extract(image)
        assert torch.allclose(single.features, fmap.features, atol=1e-4)


def test_mixed_sizes_keep_order_and_geometry(extractor, photo):
    images = [photo, photo[:100, :50].copy(), photo[:, :200].copy(), photo]
    maps = extractor.extract_many(images)
    assert [m.image_size_wh for m in maps] == [(451, 300), (50, 100), (200, 300), (451, 300)]
    for m in maps:
        assert min(m.processed_size_wh) == 112
        assert all(s % 14 == 0 for s in m.processed_size_wh)
        assert m.features.shape[:2] == (m.processed_size_wh[1] // 14, m.processed_size_wh[0] // 14)
        assert m.features.dtype == torch.float32
    assert torch.equal(maps[0].features, maps[3].features)


def test_layers_are_concatenated_and_facets_change_features(photo):
    vit = random_vit("dinov2_vits14", depth=2)
    two = Extractor(vit, device="cpu", resolution=56, layers=[0, -1]).extract(photo)
    key = Extractor(vit, device="cpu", resolution=56, facet="key").extract(photo)
    assert two.dim == 768 and key.dim == 384
    assert not torch.allclose(key.features, two.features[..., 384:])


def test_overlapping_patches(photo):
    fmap = Extractor(random_vit("dinov2_vits14", depth=1), device="cpu", resolution=56, stride=7).extract(photo)
    assert fmap.stride == 7
    w, h = fmap.processed_size_wh
    assert fmap.grid_hw == ((h - 14) // 7 + 1, (w - 14) // 7 + 1)


def test_bf16_agrees_with_fp32(photo):
    vit = random_vit("dinov2_vits14", depth=4)
    fp32 = Extractor(vit, device="cpu", precision="fp32", resolution=112).extract(photo)
    bf16 = Extractor(vit, device="cpu", precision="bf16", resolution=112).extract(photo)
    cosine = F.cosine_similarity(fp32.features, bf16.features, dim=-1)
    assert cosine.mean() >= 0.999


def test_bad_options():
    vit = random_vit("dinov2_vits14", depth=1)
    with pytest.raises(InputError, match="layer"):
        Extractor(vit, device="cpu", layers=7)
    with pytest.raises(InputError, match="stride"):
        Extractor(vit, device="cpu", stride=15)
    with pytest.raises(InputError, match="facet"):
        Extractor(vit, device="cpu", facet="attn")
    with pytest.raises(InputError, match="precision"):
        Extractor(vit, device="cpu", precision="fp8")
    with pytest.raises(InputError, match="resolution"):
        Extractor(vit, device="cpu", resolution=5)


def test_init_and_from_options_are_one_path():
    """Extractor(model, **options) and Extractor.from_options(options, model) give the same
    extractor; a model given names itself in the options (the JSON's "model") either way."""
    from dinofeat.options import ExtractorOptions

    vit = random_vit("dinov3_vits16", depth=1)
    fields = {"device": "cpu", "precision": "fp32", "resolution": 32, "layers": (0,)}
    direct = Extractor(vit, **fields)
    built = Extractor.from_options(ExtractorOptions(**fields), vit)  # the options name the default model
    assert built.options == direct.options and built.options.model == "dinov3_vits16"
    assert (built.device, built.dtype, built.stride, built.model) == (direct.device, direct.dtype, 16, vit)
    with pytest.raises(InputError, match="layers=3 does not exist: the model has 1 blocks"):
        Extractor.from_options(ExtractorOptions(layers=(3,), device="cpu"), vit)  # a shallow model: checked too


def test_image_smaller_than_a_patch(extractor):
    with pytest.raises(InputError, match="smaller than one"):
        extractor.extract(np.zeros((10, 30, 3), np.uint8))
