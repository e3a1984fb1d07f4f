"""Issue 14 (hardening), data side: images decode as they look (16-bit, EXIF orientation),
valid CSVs are accepted (BOM), hostile ones give one line (encodings, shapes), huge images
are refused from the header, and paths outside the dataset folder are listed or refused."""
import json
import os
import shutil
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
from PIL import Image

from plabel_kit import DataError, open_dataset
from plabel_kit.datasets import (EXIF_ROTATED, SIXTEEN_BIT, image_size, load_image, load_index_png,
                                 read_image)
from tests.conftest import REPO, run_plabel, write_index

COLUMNS = ("id", "image", "labels", "mask", "subject", "time")


def _one_line_error(result, *needles):
    """Exit 1, a single ``Error:`` line naming each needle, no traceback anywhere."""
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    assert result.returncode == 1, output
    lines = output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:"), output
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def _dataset(root, image: Image.Image | None = None, mask_shape=None, name="a.png", **save):
    """One image 'a' (``image`` or a 5x4 black PNG) with an optional all-background mask."""
    (root / "img").mkdir(parents=True, exist_ok=True)
    (image or Image.new("RGB", (5, 4))).save(root / "img" / name, **save)
    row = {"id": "a", "image": f"img/{name}", "labels": ""}
    if mask_shape is not None:
        Image.fromarray(np.zeros(mask_shape, np.uint8)).save(root / "img" / "a_m.png")
        row["mask"] = "img/a_m.png"
    return write_index(root / "index.csv", [row], ["background", "cat"])


def _chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png(path, width, height, *, depth=8, color_type=0, rows=None):
    """A PNG written chunk by chunk (PNG spec, ISO/IEC 15948): ``rows`` yields the raw bytes
    of each row; by default zero rows, streamed, so a huge canvas costs no memory here."""
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[color_type]
    row_bytes = width * channels * depth // 8
    packer = zlib.compressobj(9)
    data = bytearray()
    zero = bytes(1 + row_bytes)
    for y in range(height):
        data += packer.compress(b"\x00" + rows[y] if rows is not None else zero)
    data += packer.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n"
                     + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, color_type, 0, 0, 0))
                     + _chunk(b"IDAT", bytes(data)) + _chunk(b"IEND", b""))
    return path


# ---- images decode as they look -----------------------------------------------------------

def test_16_bit_grayscale_png_keeps_its_gradient(tmp_path):
    values = np.tile(np.linspace(0, 65535, 64).round().astype(np.uint16), (4, 1))
    gray = Image.fromarray(values)
    assert gray.mode == "I;16"
    index = _dataset(tmp_path, gray)
    image = load_image(tmp_path / "img" / "a.png", "a")
    assert image.dtype == np.uint8 and image.shape == (4, 64, 3)
    np.testing.assert_array_equal(image[..., 0], values >> 8)  # full range, not clipped to 255
    assert (image == image[..., :1]).all() and image.min() == 0 and image.max() == 255
    assert read_image(tmp_path / "img" / "a.png")[1] == (SIXTEEN_BIT,)
    result = run_plabel("check", "--data", index, check=True)
    assert "converted: 1 image(s) from 16-bit (e.g. id 'a')" in result.stdout, result.stdout


def test_16_bit_big_endian_and_rgb_are_reduced_and_reported(tmp_path):
    values = np.tile(np.linspace(0, 65535, 32).round().astype(np.uint16), (3, 1))
    Image.fromarray(values.astype(">u2")).save(tmp_path / "b.tif")  # mode I;16B
    np.testing.assert_array_equal(load_image(tmp_path / "b.tif")[..., 1], values >> 8)
    rgb = np.stack([values, values[:, ::-1], np.full_like(values, 0x1234)], -1)
    _png(tmp_path / "rgb.png", 32, 3, depth=16, color_type=2,
         rows=[row.astype(">u2").tobytes() for row in rgb])
    image, notes = read_image(tmp_path / "rgb.png")
    np.testing.assert_array_equal(image, rgb >> 8)
    assert notes == (SIXTEEN_BIT,)


def _jpeg_pair(tmp_path, orientation, size=(16, 8)):
    """The same pixels saved as JPEG without and with EXIF orientation ``orientation``
    (EXIF 2.32 tag 0x0112); JPEG encoding is deterministic, so both decode alike."""
    width, height = size
    yy, xx = np.mgrid[0:height, 0:width]
    pixels = np.stack([xx * 255 // (width - 1), yy * 255 // (height - 1), (xx < 4) * 255], -1)
    original = Image.fromarray(pixels.astype(np.uint8))
    original.save(tmp_path / "plain.jpg", quality=95)
    exif = original.getexif()
    exif[0x0112] = orientation
    original.save(tmp_path / "oriented.jpg", quality=95, exif=exif)
    return load_image(tmp_path / "plain.jpg"), tmp_path / "oriented.jpg"


def test_exif_orientation_3_loads_upside_down_image_upright(tmp_path):
    plain, oriented = _jpeg_pair(tmp_path, 3)
    image = load_image(oriented, "a")
    np.testing.assert_array_equal(image, plain[::-1, ::-1])
    assert not np.array_equal(image, plain)
    assert image_size(oriented) == (8, 16)
    assert read_image(oriented)[1] == (EXIF_ROTATED,)


def test_exif_orientation_6_matches_a_mask_of_the_rotated_size(tmp_path):
    plain, oriented = _jpeg_pair(tmp_path, 6)
    np.testing.assert_array_equal(load_image(oriented), np.rot90(plain, k=-1))  # 90 degrees clockwise
    assert image_size(oriented) == (16, 8)  # (H, W) as shown, not as stored (8 x 16)
    root = tmp_path / "data"
    index = _dataset(root, mask_shape=(16, 8), name="a.jpg")
    shutil.copy(oriented, root / "img" / "a.jpg")
    assert open_dataset(index)["a"].mask.shape == (16, 8)  # image_size path of the mask loader
    result = run_plabel("check", "--data", index, check=True)
    assert "converted: 1 image(s) rotated by EXIF orientation (e.g. id 'a')" in result.stdout


# ---- valid CSVs accepted, hostile encodings one line --------------------------------------

def test_csv_with_utf8_bom_is_accepted(tiny):
    tiny.write_bytes(b"\xef\xbb\xbf" + tiny.read_bytes())
    assert open_dataset(tiny).ids == ["t0", "t1", "t2"]
    assert "ok: 3 images" in run_plabel("check", "--data", tiny, check=True).stdout


def test_cp1252_csv_is_one_line_naming_file_and_line(tiny):
    text = tiny.read_text().replace("t1,img/t1.png,dog,img/t1_m.png,,", "t1,img/t1.png,dog,img/t1_m.png,Café,")
    tiny.write_bytes(text.encode("cp1252"))
    line = _one_line_error(run_plabel("check", "--data", tiny), "index.csv",
                           "not UTF-8 text (byte 0xe9 at line 3)", "save the CSV as UTF-8")
    assert "UnicodeDecodeError" not in line


def test_classes_json_with_bad_encoding_is_one_line(tiny):
    (tiny.parent / "classes.json").write_bytes('{"classes": ["background", "chat", "chien\u00e9"]}'
                                               .encode("cp1252"))
    _one_line_error(run_plabel("check", "--data", tiny), "classes.json", "not UTF-8 text (byte 0xe9 at line 1)")


# ---- bounded memory ------------------------------------------------------------------------

def test_huge_all_zero_png_is_refused_from_the_header(tmp_path):
    _dataset(tmp_path)
    big = _png(tmp_path / "img" / "a.png", 12000, 12000)
    assert big.stat().st_size < 1_000_000  # a tiny file declaring 144 million pixels
    result = run_plabel("check", "--data", tmp_path / "index.csv")
    _one_line_error(result, "a.png", "id 'a'", "12000x12000", "144,000,000 pixels", "PLABEL_MAX_PIXELS")
    # Peak memory of a fresh process (VmHWM: this process's own peak RSS, unlike a forked
    # child's ru_maxrss) grows by far less than the 144 MB one decoded plane would take.
    probe = f"""
import re
import PIL.Image, PIL.PngImagePlugin
from plabel_kit.datasets import image_size, load_image, load_index_png
from plabel_kit.errors import DataError
def peak():
    return int(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read())[1])
before = peak()
for load in (load_image, image_size, load_index_png):
    try:
        load({str(big)!r}, "a")
    except DataError as exc:
        assert "12000x12000" in str(exc), exc
    else:
        raise AssertionError("accepted")
print(peak() - before)
"""
    grown = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO,
                           check=True).stdout
    assert int(grown) < 30_000, f"peak memory grew by {grown} kB"


def test_max_pixels_from_the_environment_and_pillow_bombs(tmp_path):
    index = _dataset(tmp_path, mask_shape=(4, 5))  # 5x4 = 20 pixels
    assert run_plabel("check", "--data", index, env={"PLABEL_MAX_PIXELS": "20"}).returncode == 0
    _one_line_error(run_plabel("check", "--data", index, env={"PLABEL_MAX_PIXELS": "19"}),
                    "a.png", "id 'a'", "5x4", "limit of 19")
    _one_line_error(run_plabel("check", "--data", index, env={"PLABEL_MAX_PIXELS": "lots"}),
                    "PLABEL_MAX_PIXELS", "'lots'")
    # Above Pillow's own hard limit it raises DecompressionBombError at open: same one line.
    # (Only the header is real: Pillow refuses before it reads any pixel data.)
    (tmp_path / "img" / "a.png").write_bytes(
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", 20000, 20000, 8, 0, 0, 0, 0))
        + _chunk(b"IDAT", zlib.compress(b"")) + _chunk(b"IEND", b""))
    _one_line_error(run_plabel("check", "--data", index), "a.png", "id 'a'", "400,000,000 pixels",
                    "limit of 50,000,000")
    with pytest.raises(DataError, match="12000x12000"):
        load_index_png(_png(tmp_path / "huge_mask.png", 12000, 12000), "a")


# ---- paths outside the dataset folder -----------------------------------------------------

def _outside_index(tiny):
    """tiny with t0's image by absolute path and t1's mask by '../' outside the folder."""
    away = tiny.parent.parent / "elsewhere"
    away.mkdir()
    for name in ("t0.png", "t1_m.png"):
        (tiny.parent / "img" / name).rename(away / name)
    text = tiny.read_text().replace("img/t0.png", str(away / "t0.png")).replace(
        "img/t1_m.png", "../elsewhere/t1_m.png")
    tiny.write_text(text)
    return away


def test_outside_paths_are_listed_by_check_and_refused_with_confine(tiny):
    away = _outside_index(tiny)
    dataset = open_dataset(tiny)
    assert [(what, image_id) for what, image_id, _ in dataset.outside] == [("image", "t0"), ("mask", "t1")]
    result = run_plabel("check", "--data", tiny, check=True)
    assert f"1 image path(s) outside {tiny.parent}, e.g. id 't0': {away / 't0.png'}" in result.stdout
    assert "1 mask path(s) outside" in result.stdout and "id 't1'" in result.stdout
    _one_line_error(run_plabel("check", "--data", tiny, "--confine"), "index.csv:2", "id 't0'",
                    "outside", str(away / "t0.png"))
    with pytest.raises(DataError, match=r"index.csv:2.*'t0'.*outside"):
        open_dataset(tiny, confine=True)


def test_symlink_leading_outside_counts_as_outside(tiny):
    away = tiny.parent.parent / "elsewhere"
    away.mkdir()
    (tiny.parent / "img" / "t2.png").rename(away / "t2.png")
    (tiny.parent / "img" / "t2.png").symlink_to(away / "t2.png")
    _one_line_error(run_plabel("check", "--data", tiny, "--confine"), "index.csv:4", "id 't2'", "outside")
    assert open_dataset(tiny).outside == [("image", "t2", str(tiny.parent / "img" / "t2.png"))]
    assert "1 image path(s) outside" in run_plabel("check", "--data", tiny, check=True).stdout


def test_paths_inside_pass_confine(tiny):
    result = run_plabel("check", "--data", tiny, "--confine", check=True)
    assert "outside" not in result.stdout and "converted" not in result.stdout


# ---- hostile CSVs and classes.json: one line each -----------------------------------------

def _hostile(root, case):
    """Build case ``case`` in ``root``; returns the needles its one error line must hold."""
    index = _dataset(root, mask_shape=(4, 5))
    classes = root / "classes.json"
    header = ",".join(COLUMNS) + "\n"
    good = "a,img/a.png,cat,img/a_m.png,,\n"
    if case == "more fields than the header":
        index.write_text(header + "a,img/a.png,cat,dog,img/a_m.png,,\n")
        return ["index.csv:2", "id 'a'", "7 fields", "header has 6"]
    if case == "empty file":
        index.write_bytes(b"")
        return ["index.csv", "no images"]
    if case == "header only":
        index.write_text(header)
        return ["index.csv", "no images"]
    if case == "folder as image path":
        index.write_text(header + "a,img,cat,,,\n")
        return ["index.csv:2", "id 'a'", "folder"]
    if case == "folder as mask path":
        index.write_text(header + "a,img/a.png,cat,img,,\n")
        return ["index.csv:2", "id 'a'", "mask", "folder"]
    if case == "FIFO as image path":
        os.mkfifo(root / "img" / "pipe.png")  # reading it would block forever
        index.write_text(header + "a,img/pipe.png,cat,,,\n")
        return ["index.csv:2", "id 'a'", "not a regular file"]
    if case == "image path too long":
        index.write_text(header + f"a,{'x' * 5000}.png,cat,,,\n")
        return ["index.csv:2", "id 'a'", "image path"]
    if case == "NUL byte":
        index.write_text(header + "a,img/a.png\x00,cat,,,\n")
        return ["index.csv:2"]
    if case == "field above the csv size limit":
        index.write_text(header + good + f"b,img/a.png,cat,,{'s' * 200_000},\n")
        return ["index.csv:3"]
    if case == "repeated column":
        index.write_text("id,image,labels,image\n" + "a,img/a.png,cat,img/b.png\n")
        return ["index.csv", "repeats column(s) image"]
    if case == "UTF-16 CSV":
        index.write_bytes((header + good).encode("utf-16"))
        return ["index.csv", "UTF-16", "save the CSV as UTF-8"]
    if case == "classes.json not a dict":
        classes.write_text('["background", "cat"]')
        return ["classes.json", '{"classes"']
    if case == "classes.json is a folder":
        classes.unlink()
        classes.mkdir()
        return ["classes.json", "folder"]
    if case == "classes.json nested too deeply":
        classes.write_text("[" * 100_000 + "]" * 100_000)
        return ["classes.json", "nested too deeply"]
    if case == "class name with ';'":
        classes.write_text(json.dumps({"classes": ["background", "cat;dog"]}))
        return ["classes.json", "'cat;dog'", "';'"]
    if case == "palette with non-ints":
        classes.write_text(json.dumps({"classes": ["background", "cat"], "palette": [[0, 0, 0], ["r", "g", "b"]]}))
        return ["classes.json", "palette entry 1", "0..255"]
    if case == "palette out of range":
        classes.write_text(json.dumps({"classes": ["background", "cat"], "palette": [[0, 0, 0], [300, 0, 0]]}))
        return ["classes.json", "palette entry 1", "[300, 0, 0]"]
    if case == "palette ragged":
        classes.write_text(json.dumps({"classes": ["background", "cat"], "palette": [[0, 0], [1, 2, 3]]}))
        return ["classes.json", "palette entry 0"]
    raise AssertionError(case)


HOSTILE = ["more fields than the header", "empty file", "header only", "folder as image path",
           "folder as mask path", "FIFO as image path", "image path too long", "NUL byte",
           "field above the csv size limit", "repeated column", "UTF-16 CSV", "classes.json not a dict",
           "classes.json is a folder", "classes.json nested too deeply", "class name with ';'",
           "palette with non-ints", "palette out of range", "palette ragged"]


@pytest.mark.parametrize("case", HOSTILE)
def test_hostile_index_is_one_line(tmp_path, case):
    needles = _hostile(tmp_path, case)
    _one_line_error(run_plabel("check", "--data", tmp_path / "index.csv"), *needles)
    with pytest.raises(DataError):
        open_dataset(tmp_path / "index.csv")


def test_rows_shorter_than_the_header_and_trailing_commas_are_accepted(tmp_path):
    index = _dataset(tmp_path, mask_shape=(4, 5))
    index.write_text(",".join(COLUMNS) + ",\n" + "a,img/a.png,cat\n" + "b,img/a.png,cat,img/a_m.png,s1,3,\n")
    dataset = open_dataset(index)
    assert dataset.ids == ["a", "b"] and dataset["b"].meta == {"subject": "s1", "time": "3"}
    assert dataset["a"].mask_path is None


def test_32_bit_images_are_refused_not_clipped(tmp_path):
    ramp = np.tile(np.arange(8, dtype=np.int32) * 1000, (2, 1))
    Image.fromarray(ramp).save(tmp_path / "i.tif")
    Image.fromarray(ramp.astype(np.float32)).save(tmp_path / "f.tif")
    with pytest.raises(DataError, match=r"i.tif: id 'a': integer 32-bit images are not supported"):
        load_image(tmp_path / "i.tif", "a")
    with pytest.raises(DataError, match=r"f.tif: floating-point 32-bit images are not supported"):
        load_image(tmp_path / "f.tif")


def test_synth_below_its_minimum_size_is_an_argument_error(tmp_path):
    result = run_plabel("synth", "scenes", tmp_path / "s", "--size", "32")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--size" in result.stderr and not (tmp_path / "s").exists()
