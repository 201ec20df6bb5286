import numpy as np
import pytest
from PIL import Image

from dinofeat.errors import InputError, render
from dinofeat.io.images import enlargement_note, load_image, processed_size, size_cap_note


def test_exif_orientation_is_applied(tmp_path):
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :10] = 255  # white band on the left
    img = Image.fromarray(pixels)
    exif = img.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    img.save(tmp_path / "r.jpg", exif=exif, quality=100)
    loaded = load_image(tmp_path / "r.jpg")
    assert loaded.shape == (40, 20, 3)
    assert loaded[:10].mean() > 200 and loaded[-10:].mean() < 50  # the band is now on top


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "LA", "CMYK"])
def test_modes_become_rgb(tmp_path, mode):
    rgb = (np.arange(30 * 20 * 3) % 256).astype(np.uint8).reshape(30, 20, 3)
    img = Image.fromarray(rgb).convert(mode)
    path = tmp_path / ("x.tif" if mode == "CMYK" else "x.png")
    img.save(path)
    out = load_image(path)
    assert out.shape == (30, 20, 3) and out.dtype == np.uint8


def test_16_bit_images_are_scaled(tmp_path):
    values = np.full((16, 16), 65535, np.uint16)
    values[:8] = 32768
    Image.fromarray(values).save(tmp_path / "d.png")
    out = load_image(tmp_path / "d.png")
    assert out[0, 0].tolist() == [128, 128, 128] and out[-1, -1].tolist() == [255, 255, 255]


def test_arrays_and_pil_images():
    assert load_image(np.ones((4, 5), np.float32)).max() == 255
    assert load_image(Image.new("RGB", (7, 3))).shape == (3, 7, 3)
    with pytest.raises(InputError, match="shape"):
        load_image(np.zeros((4, 5, 2), np.uint8))


@pytest.mark.parametrize("content,message", [(None, "not found"), (b"", "empty"), (b"\x89PNG garbage", "not an image")])
def test_bad_files(tmp_path, content, message):
    path = tmp_path / "bad.png"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(InputError, match=message):
        load_image(path)


def test_truncated_image(tmp_path):
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    data = (tmp_path / "a.png").read_bytes()
    (tmp_path / "t.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="t.png"):
        load_image(tmp_path / "t.png")


def test_folder_is_not_an_image(tmp_path):
    with pytest.raises(InputError, match="folder"):
        load_image(tmp_path)


@pytest.mark.parametrize("patch", [14, 16])
@pytest.mark.parametrize("size_wh", [(640, 480), (480, 640), (451, 300), (1000, 999), (17, 17), (3000, 200)])
@pytest.mark.parametrize("resolution", [224, 448, 518])
def test_processed_sizes_fit_the_patch_grid_and_keep_aspect(size_wh, resolution, patch):
    w, h = processed_size(size_wh, resolution, patch_size=patch, max_size=10_000)
    assert w % patch == 0 and h % patch == 0
    assert min(w, h) == resolution // patch * patch or abs(min(w, h) - resolution) <= patch / 2
    aspect, new_aspect = size_wh[0] / size_wh[1], w / h
    assert abs(np.log(new_aspect / aspect)) < patch / min(w, h)


@pytest.mark.parametrize("patch", [14, 16])
def test_long_side_cap_and_strides(patch):
    assert max(processed_size((3000, 200), 448, patch_size=patch, max_size=1792)) <= 1792
    w, h = processed_size((640, 480), 448, patch_size=patch, stride=patch // 2)
    assert (w - patch) % (patch // 2) == 0 and (h - patch) % (patch // 2) == 0


def test_too_small_images_are_rejected():
    with pytest.raises(InputError, match="smaller than one 14-pixel patch"):
        processed_size((13, 100), 448)


def test_a_panorama_capped_to_one_row_of_patches_says_y_will_be_coarse():
    note = render(size_cap_note((20000, 200), 448))
    assert "using 1792x14 for this 20000x200 image" in note
    assert note.endswith("only 1 row of patches: y will be coarse (a patch spans 200 of the image's 200 pixels)")
    tall = render(size_cap_note((200, 20000), 448))
    assert "only 1 column of patches: x will be coarse" in tall
    assert "coarse" not in render(size_cap_note((3000, 200), 448))  # 9 rows: fine


@pytest.mark.parametrize(
    "size_wh, enlarged", [((176, 144), True), ((320, 180), True), ((640, 480), False), ((600, 400), False)]
)
def test_small_inputs_enlarged_for_the_model_are_named(size_wh, enlarged):
    note = enlargement_note(size_wh, 448)
    assert (note is not None) == enlarged
    if enlarged:
        used = processed_size(size_wh, 448)
        assert render(note).startswith(f"enlarging {size_wh[0]}x{size_wh[1]} to {used[0]}x{used[1]} for the model")
        assert f"resolution={min(size_wh)} keeps the input's size" in render(note)
