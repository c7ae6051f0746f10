import random
from collections import Counter

import numpy as np
import pytest
from conftest import draw_shape, make_shapes_folder, write_near_duplicates_csv
from PIL import Image

from wildwatch.data import ImageLoadError, discover_images, load_image
from wildwatch.data.splits import Split, assign_groups, perceptual_groups, split_by_group


def test_discover_finds_any_extension_case_and_depth(tmp_path):
    rng = random.Random(0)
    (tmp_path / "a" / "nested").mkdir(parents=True)
    (tmp_path / "b").mkdir()
    (tmp_path / ".hidden").mkdir()
    draw_shape("red_circles", rng).save(tmp_path / "a" / "one.JPG")
    draw_shape("red_circles", rng).save(tmp_path / "a" / "nested" / "two.Jpeg", format="JPEG")
    draw_shape("red_circles", rng).save(tmp_path / "b" / "three.PNG")
    draw_shape("red_circles", rng).save(tmp_path / "b" / "four.webp")
    draw_shape("red_circles", rng).save(tmp_path / ".hidden" / "x.jpg")
    (tmp_path / "b" / "notes.txt").write_text("not an image")
    samples, classes = discover_images(tmp_path)
    assert classes == ["a", "b"]
    assert sorted(s.relpath for s in samples) == ["a/nested/two.Jpeg", "a/one.JPG", "b/four.webp", "b/three.PNG"]


def test_discover_empty_folder_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        discover_images(tmp_path)


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    img.save(tmp_path / "rot.jpg", exif=exif.tobytes())
    assert load_image(tmp_path / "rot.jpg").size == (20, 40)


@pytest.mark.parametrize("mode", ["P", "RGBA", "LA", "CMYK", "L", "I;16", "1"])
def test_every_mode_becomes_rgb(tmp_path, mode):
    base = draw_shape("blue_triangles", random.Random(2), 32)
    if mode == "I;16":
        img = Image.fromarray(np.linspace(0, 65535, 32 * 32).reshape(32, 32).astype(np.uint16))
    else:
        img = base.convert(mode)
    path = tmp_path / f"x.{'jpg' if mode == 'CMYK' else 'png'}"
    img.save(path)
    out = load_image(path)
    assert out.mode == "RGB" and out.size == (32, 32)
    if mode == "I;16":  # 16-bit values are scaled to 8 bits, not clipped to white
        arr = np.asarray(out)
        assert arr.min() < 10 and arr.max() > 240 and len(np.unique(arr)) > 50


def test_transparency_is_composited_on_white(tmp_path):
    img = Image.new("RGBA", (10, 10), (0, 0, 0, 0))
    img.putpixel((5, 5), (255, 0, 0, 255))
    img.save(tmp_path / "t.png")
    arr = np.asarray(load_image(tmp_path / "t.png"))
    assert tuple(arr[0, 0]) == (255, 255, 255)
    assert tuple(arr[5, 5]) == (255, 0, 0)


def test_broken_files_name_the_file(broken_dir):
    for name, reason in [("empty.jpg", "empty"), ("truncated.jpg", "decode"), ("text.jpg", "not an image"),
                         ("missing.jpg", "not found")]:
        with pytest.raises(ImageLoadError) as info:
            load_image(broken_dir / name)
        assert name in str(info.value) and reason in str(info.value)
    assert load_image(broken_dir / "cmyk.jpg").mode == "RGB"
    assert load_image(broken_dir / "sixteen_bit.png").mode == "RGB"


def test_decompression_bomb_is_refused(tmp_path):
    Image.new("L", (3000, 3000)).save(tmp_path / "big.png")
    with pytest.raises(ImageLoadError, match="over the limit"):
        load_image(tmp_path / "big.png", max_pixels=1_000_000)


def _side_of(split: Split) -> dict[str, str]:
    return {s.relpath: name for name in ("train", "val", "test") for s in split.part(name)}


def test_perceptual_hash_groups_mirrors_and_resaves(tmp_path):
    root = make_shapes_folder(tmp_path, per_class=12, duplicates=4)
    samples, _ = discover_images(root)
    groups = perceptual_groups(root, samples, progress=False)
    g = {s.relpath: gid for s, gid in zip(samples, groups)}
    for label in ("red_circles", "green_squares", "blue_triangles"):
        for i in range(4):
            assert g[f"{label}/img{i:03d}.jpg"] == g[f"{label}/img{i:03d}_mirror.jpg"]
    # unrelated drawings are not merged into one big group
    assert len(set(groups)) >= 30


def test_split_never_separates_a_group_and_is_stratified(shapes_dir):
    samples, classes = discover_images(shapes_dir)
    groups, how = assign_groups(shapes_dir, samples, progress=False)
    assert how.startswith("dhash")
    split = split_by_group(samples, groups, classes, (0.6, 0.2, 0.2), seed=3)
    side = _side_of(split)
    assert len(side) == len(samples)
    by_group: dict[int, set] = {}
    for s, gid in zip(samples, groups):
        by_group.setdefault(gid, set()).add(side[s.relpath])
    assert all(len(v) == 1 for v in by_group.values())
    for name, ratio in (("train", 0.6), ("val", 0.2), ("test", 0.2)):
        counts = Counter(s.label for s in split.part(name))
        for c in classes:
            assert abs(counts[c] - ratio * 45) <= 4, (name, c, counts[c])


def test_split_uses_near_duplicates_csv(tmp_path):
    root = make_shapes_folder(tmp_path / "d", per_class=20)
    group = [f"red_circles/img{i:03d}.jpg" for i in range(6)]
    write_near_duplicates_csv(root, [group])
    samples, classes = discover_images(root)
    groups, how = assign_groups(root, samples, progress=False)
    assert how == "near_duplicates.csv"
    for seed in range(5):
        side = _side_of(split_by_group(samples, groups, classes, seed=seed))
        assert len({side[p] for p in group}) == 1


def test_split_is_reproducible_and_saved(tmp_path, shapes_dir):
    samples, classes = discover_images(shapes_dir)
    groups, _ = assign_groups(shapes_dir, samples, progress=False)
    a = split_by_group(samples, groups, classes, seed=7)
    b = split_by_group(samples, groups, classes, seed=7)
    c = split_by_group(samples, groups, classes, seed=8)
    assert a.to_json() == b.to_json() and a.to_json() != c.to_json()
    a.save(tmp_path / "split.json")
    assert Split.load(tmp_path / "split.json").to_json() == a.to_json()


def test_bad_ratios_are_refused(shapes_dir):
    samples, classes = discover_images(shapes_dir)
    with pytest.raises(ValueError, match="summing to 1"):
        split_by_group(samples, list(range(len(samples))), classes, (0.5, 0.1, 0.1))


@pytest.mark.parametrize("size", [(256, 256), (384, 217), (180, 333), (120, 90), (1000, 999)])
@pytest.mark.parametrize("interp", ["bilinear", "bicubic"])
def test_fast_eval_transform_equals_torchvision(size, interp):
    from wildwatch.data.transforms import FastEvalTransform, Preprocess, eval_transform

    p = Preprocess(image_size=224, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), crop_pct=0.875, interpolation=interp)
    img = draw_shape("blue_triangles", random.Random(sum(size)), 64).resize(size)
    fast, ref = FastEvalTransform(p)(img), eval_transform(p)(img)
    assert fast.shape == ref.shape == (3, 224, 224)
    # the same resampling, computed on the crop's box only: at most Pillow's rounding apart
    grey_levels = (fast - ref).abs() * 255 * 0.5
    assert float(grey_levels.max()) <= 2.0 + 1e-4 and float(grey_levels.mean()) < 0.2
