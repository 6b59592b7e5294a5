"""Tests for classification.data and classification.download on small data generated here.

The real shared Omniglot (if present) is used only where it is cheap: the official small archive is
checked against the npz to pin the class order; full preprocessing is timed outside the tests.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import pickle
import threading
import zipfile
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from classification import data as D
from classification.data import (
    OMNIGLOT_URL,
    ClassImages,
    TaskSampler,
    load_miniimagenet,
    load_omniglot,
    omniglot_class_names,
    preprocess_omniglot,
    resolve_cache_dir,
    resolve_data_root,
    split_omniglot,
)
from classification.download import download_file, download_omniglot
from metarl.errors import UserError

# the shared data beside the repository (as CI lays it out: ../shared), or $METARL_DATA
SHARED_DATA = os.environ.get("METARL_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data"
SHARED_OMNIGLOT = Path(SHARED_DATA) / "omniglot"
TINY = {"images_background": 3, "images_evaluation": 2}  # characters per set in the generated data
DRAWERS = 20


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path, monkeypatch):
    """Loads without an explicit cache_dir must not write to the user's ~/.cache."""
    monkeypatch.setenv("METARL_CACHE", str(tmp_path / "default-cache"))


def _papers(n_characters: int, seed: int) -> np.ndarray:
    """Bool (n, 20, 105, 105), True = white paper, with a few random ink strokes per drawing."""
    rng = np.random.default_rng(seed)
    papers = np.ones((n_characters, DRAWERS, 105, 105), dtype=bool)
    for c, d in np.ndindex(n_characters, DRAWERS):
        for _ in range(3):
            r, col = rng.integers(10, 90, size=2)
            if rng.random() < 0.5:
                papers[c, d, r : r + 4, col : col + rng.integers(5, 15)] = False
            else:
                papers[c, d, r : r + rng.integers(5, 15), col : col + 4] = False
    return papers


def _png(paper: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(paper).save(buffer, format="PNG")  # bool -> mode "1", like the official files
    return buffer.getvalue()


def _official_members(set_name: str, papers: np.ndarray, top: str) -> dict[str, bytes]:
    """Official layout: <top>/<Alphabet>/characterNN/<id>_<drawer>.png, ids continuing across sets."""
    first_id = 1 if set_name == "images_background" else 965
    members = {}
    for c, name in enumerate(omniglot_class_names(set_name)[: len(papers)]):
        _, alphabet, character = name.split("/")
        for d in range(papers.shape[1]):
            members[f"{top}/{alphabet}/{character}/{first_id + c:04d}_{d + 1:02d}.png"] = _png(papers[c, d])
    return members


@pytest.fixture(scope="module")
def tiny_omniglot(tmp_path_factory) -> dict[str, Path]:
    """The same tiny Omniglot as npz, as official zips, and as extracted folders (three data roots)."""
    roots = {kind: tmp_path_factory.mktemp(kind) for kind in ("npz", "zip", "folders")}
    for root in roots.values():
        (root / "omniglot").mkdir()
    for seed, (set_name, n) in enumerate(TINY.items()):
        papers = _papers(n, seed)
        labels = np.repeat(np.arange(n)[:, None], DRAWERS, axis=1)
        np.savez_compressed(roots["npz"] / "omniglot" / f"{set_name}.npz", images=papers, labels=labels)
        members = _official_members(set_name, papers, set_name)
        with zipfile.ZipFile(roots["zip"] / "omniglot" / f"{set_name}.zip", "w") as archive:
            for member, content in members.items():
                archive.writestr(member, content)
        for member, content in members.items():
            path = roots["folders"] / "omniglot" / member
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
    return roots


@pytest.fixture(scope="module")
def shared_small_zip(tmp_path_factory) -> Path:
    """A data root whose images_background.zip is the official 5-alphabet archive (skip if absent)."""
    small = SHARED_OMNIGLOT / "images_background_small1.zip"
    if not (small.is_file() and (SHARED_OMNIGLOT / "images_background.npz").is_file()):
        pytest.skip(f"shared Omniglot data not available in {SHARED_OMNIGLOT}")
    root = tmp_path_factory.mktemp("small")
    (root / "omniglot").mkdir()
    (root / "omniglot" / "images_background.zip").symlink_to(small)
    return root


# ------------------------------------------------------------------------------------ Omniglot loading


def test_omniglot_formats_give_identical_tensors(tiny_omniglot):
    loaded = {kind: load_omniglot(root, cache=False) for kind, root in tiny_omniglot.items()}
    reference = loaded["npz"]
    assert reference.images.shape == (sum(TINY.values()), DRAWERS, 1, 28, 28)
    assert reference.images.dtype == torch.uint8
    assert reference.names == (
        "images_background/Arcadian/character01",
        "images_background/Arcadian/character02",
        "images_background/Arcadian/character03",
        "images_evaluation/Angelic/character01",
        "images_evaluation/Angelic/character02",
    )
    for kind in ("zip", "folders"):
        assert loaded[kind].names == reference.names
        assert torch.equal(loaded[kind].images, reference.images), kind


def test_class_order_is_official_id_not_alphabetical(tmp_path):
    """Ids 296..300 are Anglo-Saxon_Futhorc, which sorts before Arcadian (ids 1..26) by name."""
    papers = np.random.default_rng(0).random((300, 1, 8, 8)) < 0.7
    labels = np.arange(300)[:, None]
    _write(tmp_path / "npz", "images_background.npz", images=papers, labels=labels)
    members = _official_members("images_background", papers, "images_background")
    with zipfile.ZipFile(_write(tmp_path / "zip", "images_background.zip", b""), "w") as archive:
        for member in sorted(members):  # alphabetical member order, as in the official archive
            archive.writestr(member, members[member])
    from_npz, from_zip = (
        load_omniglot(tmp_path / kind, sets=["images_background"], cache=False) for kind in ("npz", "zip")
    )
    assert from_zip.names == from_npz.names == tuple(omniglot_class_names("images_background")[:300])
    assert from_zip.names[-1] == "images_background/Anglo-Saxon_Futhorc/character05"
    assert torch.equal(from_zip.images, from_npz.images)


def test_preprocessing_is_inverted_lanczos_28():
    paper = np.ones((105, 105), dtype=bool)
    paper[30:75, 45:60] = False  # a thick vertical bar of ink
    out = preprocess_omniglot(paper)
    assert out.shape == (28, 28) and out.dtype == np.uint8
    assert out[14, 14] == 255 and out[0, 0] == 0 and out[14, 2] == 0  # ink high, paper low
    expected = Image.fromarray(np.where(paper, 0, 255).astype(np.uint8)).resize((28, 28), Image.LANCZOS)
    np.testing.assert_array_equal(out, np.asarray(expected))
    assert len(np.unique(out)) > 2  # grey levels: a real Lanczos filter, not Pillow's bilevel nearest
    assert set(np.unique(preprocess_omniglot(paper, resample="nearest"))) <= {0, 255}


def test_official_small_zip_matches_npz_order(shared_small_zip):
    """Class order by character id: the official PNGs land on the npz rows of the same characters."""
    from_zip = load_omniglot(shared_small_zip, sets=["images_background"], cache=False)
    assert from_zip.images.shape == (136, DRAWERS, 1, 28, 28)
    assert {name.split("/")[1] for name in from_zip.names} == {
        "Balinese",
        "Early_Aramaic",
        "Greek",
        "Korean",
        "Latin",
    }
    rows = [omniglot_class_names("images_background").index(name) for name in from_zip.names]
    assert rows == sorted(rows)
    with np.load(SHARED_OMNIGLOT / "images_background.npz") as npz:
        papers = npz["images"][rows]
    expected = np.stack([[preprocess_omniglot(p)[None] for p in drawings] for drawings in papers])
    assert torch.equal(from_zip.images, torch.from_numpy(expected))


def test_cache_is_written_atomically_reused_and_invalidated(tiny_omniglot, tmp_path, monkeypatch):
    cache_dir = tmp_path / "cache"
    first = load_omniglot(tiny_omniglot["npz"], cache_dir=cache_dir)
    files = os.listdir(cache_dir)
    assert len(files) == 1 and files[0].startswith("omniglot_28_lanczos_") and files[0].endswith(".pt")

    def no_preprocessing(*args, **kwargs):
        raise AssertionError("preprocessed although cached")

    monkeypatch.setattr(D, "_read_omniglot_set", no_preprocessing)
    again = load_omniglot(tiny_omniglot["npz"], cache_dir=cache_dir)
    assert torch.equal(again.images, first.images) and again.names == first.names
    source = tiny_omniglot["npz"] / "omniglot" / "images_evaluation.npz"
    stat = source.stat()
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a changed source is a new key
    try:
        with pytest.raises(AssertionError, match="preprocessed"):
            load_omniglot(tiny_omniglot["npz"], cache_dir=cache_dir)
    finally:
        os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_default_cache_dir_from_environment(tiny_omniglot, tmp_path, monkeypatch):
    monkeypatch.setenv("METARL_CACHE", str(tmp_path / "chosen"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert resolve_cache_dir(tmp_path / "explicit") == tmp_path / "explicit"
    load_omniglot(tiny_omniglot["zip"])
    assert [p.suffix for p in (tmp_path / "chosen").iterdir()] == [".pt"]  # no temporary file left
    monkeypatch.delenv("METARL_CACHE")
    load_omniglot(tiny_omniglot["zip"], resample="nearest")
    assert [p.name[:17] for p in (tmp_path / "xdg" / "metarl").iterdir()] == ["omniglot_28_neare"]
    assert not (tiny_omniglot["zip"] / "omniglot" / "cache").exists()  # the data folder is never written


def test_missing_omniglot_names_files_and_url(tmp_path):
    with pytest.raises(UserError) as error:
        load_omniglot(tmp_path)
    message = str(error.value)
    for expected in (
        "images_background.npz",
        "images_background.zip",
        OMNIGLOT_URL,
        str(tmp_path / "omniglot"),
    ):
        assert expected in message


def test_missing_evaluation_set_is_named(tiny_omniglot, tmp_path):
    (tmp_path / "omniglot").mkdir()
    (tmp_path / "omniglot" / "images_background.npz").symlink_to(
        tiny_omniglot["npz"] / "omniglot" / "images_background.npz"
    )
    with pytest.raises(UserError, match="images_evaluation"):
        load_omniglot(tmp_path, cache=False)


def _write(root: Path, name: str, content: bytes | None = None, **arrays) -> Path:
    path = root / "omniglot" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if arrays:
        np.savez(path, **arrays)
    else:
        path.write_bytes(content)
    return path


@pytest.mark.parametrize(
    "arrays",
    [
        {"x": np.ones((2, DRAWERS, 105, 105), dtype=bool)},  # wrong key
        {"images": np.ones((2, DRAWERS, 105, 105), dtype=np.uint8), "labels": np.zeros((2, DRAWERS))},
        {"images": np.ones((DRAWERS, 105, 105), dtype=bool), "labels": np.zeros(DRAWERS)},  # 3-D
        {"images": np.ones((2, DRAWERS, 105, 105), dtype=bool), "labels": np.zeros((2, DRAWERS))},
        {"images": np.ones((965, 1, 2, 2), dtype=bool), "labels": np.arange(965)[:, None]},  # too many
    ],
)
def test_malformed_npz_is_a_user_error(tmp_path, arrays):
    _write(tmp_path, "images_background.npz", **arrays)
    with pytest.raises(UserError, match="images_background"):
        load_omniglot(tmp_path, sets=["images_background"], cache=False)


def test_corrupt_archives_and_pngs_are_user_errors(tmp_path, tiny_omniglot):
    _write(tmp_path / "a", "images_background.npz", b"not an npz")
    _write(tmp_path / "b", "images_background.zip", b"PK\x03\x04 truncated")
    with zipfile.ZipFile(_write(tmp_path / "c", "images_background.zip", b""), "w") as archive:
        archive.writestr("images_background/readme.txt", "no pngs")
    _write(tmp_path / "d", "images_background/Arcadian/character01/0001_01.png", b"not a png")
    for case in "abcd":
        with pytest.raises(UserError, match=OMNIGLOT_URL.split("/")[2]) as error:
            load_omniglot(tmp_path / case, sets=["images_background"], cache=False)
        assert "allow_pickle" not in str(error.value)  # numpy's advice for pickles, no fix for a damaged file


# ---------------------------------------------------------------------------------------------- splits


@pytest.fixture(scope="module")
def all_characters() -> ClassImages:
    """1623 classes with the official names; each image a 2x2 pattern that identifies its class."""
    names = tuple(omniglot_class_names("images_background") + omniglot_class_names("images_evaluation"))
    ids = torch.arange(len(names))
    images = torch.zeros(len(names), 2, 1, 2, 2, dtype=torch.uint8)
    images[:, :, 0, 0, 0] = (ids % 256).to(torch.uint8)[:, None]
    images[:, :, 0, 0, 1] = (ids // 256).to(torch.uint8)[:, None]
    return ClassImages(images, names)


def test_cbfinn_split_sizes_and_seed(all_characters):
    splits = split_omniglot(all_characters)
    assert {k: len(v) for k, v in splits.items()} == {"train": 1100, "val": 100, "test": 423}
    assert sorted(sum((s.names for s in splits.values()), ())) == sorted(all_characters.names)
    again = split_omniglot(all_characters, seed=1)
    other = split_omniglot(all_characters, seed=2)
    assert all(again[k].names == splits[k].names for k in splits)
    assert other["test"].names != splits["test"].names
    assert splits["train"].images.shape == (1100, 2, 1, 2, 2)
    index = all_characters.names.index(splits["val"].names[7])
    assert torch.equal(splits["val"].images[7], all_characters.images[index])
    with pytest.raises(UserError, match="1623"):
        split_omniglot(all_characters.subset(range(964)))


def test_vinyals_split_by_alphabet_with_rotated_classes(all_characters):
    plain = split_omniglot(all_characters, protocol="vinyals", rotations_as_classes=False)
    assert {k: len(v) for k, v in plain.items()} == {"train": 1028, "val": 172, "test": 423}
    assert {n.split("/")[1] for n in plain["val"].names} == {
        "Armenian",
        "Bengali",
        "Early_Aramaic",
        "Hebrew",
        "Mkhedruli_(Georgian)",
    }
    assert plain["test"].names[0] == "images_evaluation/Gurmukhi/character42"
    assert "images_evaluation/Gurmukhi/character41" in plain["train"].names
    rotated = split_omniglot(all_characters, protocol="vinyals", seed=5)  # default: rotations as classes
    assert {k: len(v) for k, v in rotated.items()} == {"train": 4112, "val": 688, "test": 1692}
    assert rotated["test"].names[:2] == (
        "images_evaluation/Gurmukhi/character42/rot000",
        "images_evaluation/Gurmukhi/character42/rot090",
    )
    for k in range(4):
        assert torch.equal(rotated["val"].images[k], torch.rot90(plain["val"].images[0], k, dims=(-2, -1)))


def test_unknown_protocol_or_names_are_user_errors(all_characters):
    with pytest.raises(UserError, match="cbfinn"):
        split_omniglot(all_characters, protocol="lake")
    unnamed = ClassImages(all_characters.images[:2], ("images_background/Klingon/character01", "x"))
    with pytest.raises(UserError, match="official"):
        split_omniglot(unnamed, protocol="vinyals")


# --------------------------------------------------------------------------------------------- sampler


@pytest.fixture(scope="module")
def numbered() -> ClassImages:
    """12 classes x 20 constant images whose value is class * 20 + index (rotation-invariant ids)."""
    values = torch.arange(12 * 20, dtype=torch.uint8).reshape(12, 20, 1, 1, 1)
    return ClassImages(values.expand(12, 20, 1, 3, 3).clone(), tuple(f"c{i}" for i in range(12)))


def _ids(x: torch.Tensor) -> torch.Tensor:
    return (x[..., 0, 0, 0] * 255).round().long()


def test_sampler_shapes_labels_and_disjoint_sets(numbered):
    ways, shots, queries = 5, 2, 3
    task = TaskSampler(numbered, ways, shots, queries, seed=0).sample()
    assert task.support_x.shape == (ways * shots, 1, 3, 3) and task.support_x.dtype == torch.float32
    assert task.query_x.shape == (ways * queries, 1, 3, 3)
    assert 0 <= task.support_x.min() and task.support_x.max() <= 1
    assert task.support_y.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert torch.bincount(task.query_y).tolist() == [queries] * ways
    support, query = _ids(task.support_x), _ids(task.query_x)
    for label in range(ways):
        classes = (support[task.support_y == label] // 20).tolist() + (query[task.query_y == label] // 20).tolist()
        assert len(set(classes)) == 1  # one class per label, shared by support and query
    assert len(set((support // 20).tolist())) == ways  # distinct classes
    assert len(set(support.tolist()) | set(query.tolist())) == ways * (shots + queries)  # no image twice


def test_sampler_defaults_to_k_queries_and_batches(numbered):
    batch = TaskSampler(numbered, ways=4, shots=3, seed=0).sample_batch(6)
    assert batch.support_x.shape == (6, 12, 1, 3, 3) and batch.query_x.shape == (6, 12, 1, 3, 3)
    assert batch.support_y.shape == batch.query_y.shape == (6, 12)
    assert len({tuple(_ids(x).tolist()) for x in batch.support_x}) == 6  # independent tasks


def test_sampler_is_deterministic_under_its_seed(numbered):
    a = TaskSampler(numbered, 5, 1, 2, seed=3).sample_batch(4)
    b = TaskSampler(numbered, 5, 1, 2, seed=3).sample_batch(4)
    c = TaskSampler(numbered, 5, 1, 2, seed=4).sample_batch(4)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not torch.equal(a.support_x, c.support_x)
    sampler = TaskSampler(numbered, 5, 1, 2, seed=3)
    sampler.sample()
    state = sampler.state_dict()
    expected = sampler.sample()
    sampler.load_state_dict(state)
    assert torch.equal(sampler.sample().query_x, expected.query_x)


def test_a_drawn_block_materialised_in_slices_equals_the_whole_block():
    """Evaluation draws 32 tasks at a time but makes their float images one meta-batch at a time."""
    images = torch.randint(0, 256, (12, 20, 1, 4, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    whole = TaskSampler(images, 5, 1, 2, rotate=True, seed=7).sample_batch(10)
    sampler = TaskSampler(images, 5, 1, 2, rotate=True, seed=7)
    drawn = sampler.draw(10)
    pieces = [sampler.materialise(tuple(f[i : i + 4] for f in drawn)) for i in range(0, 10, 4)]
    for field, *parts in zip(whole, *pieces, strict=True):
        assert torch.equal(field, torch.cat(parts))


def test_sampler_rotates_each_class_of_each_task():
    images = torch.zeros(10, 20, 1, 4, 4, dtype=torch.uint8)
    images[..., 0, 0] = 255  # a mark in the top-left corner shows the rotation
    sampler = TaskSampler(images, ways=5, shots=2, queries=2, rotate=True, seed=0)
    batch = sampler.sample_batch(64)
    corners = {(0, 0): 0, (3, 0): 1, (3, 3): 2, (0, 3): 3}  # where rot90 by k moves (0, 0)
    turns = torch.empty(64, 5, dtype=torch.long)
    for t, (support, query) in enumerate(zip(batch.support_x, batch.query_x, strict=True)):
        both = torch.cat([support.reshape(5, 2, 4, 4), query.reshape(5, 2, 4, 4)], dim=1)
        for label, drawings in enumerate(both):
            marks = {tuple(torch.nonzero(d).squeeze(0).tolist()) for d in drawings}
            assert len(marks) == 1  # one rotation per class, support and query alike
            turns[t, label] = corners[marks.pop()]
    assert all(set(turns[:, label].tolist()) == {0, 1, 2, 3} for label in range(5))  # every class turns
    assert (turns != turns[:, :1]).any(dim=1).float().mean() > 0.9  # drawn per class, not per task
    assert TaskSampler(images, 5, 2, 2, seed=0).sample().support_x[:, 0, 0, 0].eq(1).all()


def test_sampler_rejects_impossible_tasks(numbered):
    with pytest.raises(ValueError, match="queries"):
        TaskSampler(numbered, 5, 10, 15)
    with pytest.raises(ValueError, match="classes"):
        TaskSampler(numbered, 13, 1)


# ---------------------------------------------------------------------------------------- MiniImageNet


def _mini_images(tmp_path: Path, counts: dict[str, int], sizes: list[tuple[int, int]]) -> list[tuple[str, str]]:
    """Random JPEGs in images/ and the CSV rows naming them; some are not 84x84."""
    rng = np.random.default_rng(0)
    rows = []
    (tmp_path / "images").mkdir(parents=True)
    for label, count in counts.items():
        for i in range(count):
            height, width = sizes[i % len(sizes)]
            filename = f"{label}{i:08d}.jpg"
            pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "images" / filename, quality=95)
            rows.append((filename, label))
    return rows


def _decoded(folder: Path, filename: str) -> np.ndarray:
    image = Image.open(folder / "images" / filename).convert("RGB")
    return np.asarray(image if image.size == (84, 84) else image.resize((84, 84), Image.LANCZOS))


def test_miniimagenet_pkl_and_csv_give_identical_tensors(tmp_path):
    folder = tmp_path / "csvroot" / "miniimagenet"
    rows = _mini_images(folder, {"n03": 4, "n01": 4, "n02": 4}, [(84, 84), (100, 120), (60, 90)])
    (folder / "val.csv").write_text("filename,label\n" + "".join(f"{f},{label}\n" for f, label in rows))
    from_csv = load_miniimagenet(tmp_path / "csvroot", "val", cache_dir=tmp_path / "cache")
    assert from_csv.images.shape == (3, 4, 3, 84, 84) and from_csv.images.dtype == torch.uint8
    assert from_csv.names == ("n01", "n02", "n03")

    image_data = np.stack([_decoded(folder, filename) for filename, _ in rows])
    class_dict: dict[str, list[int]] = {}
    for i, (_, label) in enumerate(rows):
        class_dict.setdefault(label, []).append(i)
    (tmp_path / "pklroot" / "miniimagenet").mkdir(parents=True)
    with open(tmp_path / "pklroot" / "miniimagenet" / "mini-imagenet-cache-validation.pkl", "wb") as f:
        pickle.dump({"image_data": image_data, "class_dict": class_dict}, f)
    from_pkl = load_miniimagenet(tmp_path / "pklroot", "val")
    assert from_pkl.names == from_csv.names
    assert torch.equal(from_pkl.images, from_csv.images)
    assert torch.equal(from_pkl.images[0, 1], torch.from_numpy(image_data[class_dict["n01"][1]]).permute(2, 0, 1))
    cached = load_miniimagenet(tmp_path / "csvroot", "val", cache_dir=tmp_path / "cache")
    assert torch.equal(cached.images, from_csv.images)


def test_miniimagenet_unequal_counts_are_cut_with_a_warning(tmp_path):
    folder = tmp_path / "miniimagenet"
    rows = _mini_images(folder, {"a": 3, "b": 2}, [(84, 84)])
    # written with a byte-order mark, as some editors save UTF-8
    text = "filename,label\n" + "".join(f"{f},{label}\n" for f, label in rows)
    (folder / "test.csv").write_text(text, encoding="utf-8-sig")
    with pytest.warns(UserWarning, match="first 2"):
        loaded = load_miniimagenet(tmp_path, "test", cache=False)
    assert loaded.images.shape == (2, 2, 3, 84, 84)


@pytest.mark.parametrize(
    "content",
    [
        pickle.dumps({"class_dict": {"a": [0]}}),  # no image_data
        pickle.dumps({"image_data": np.zeros((2, 84, 84), np.uint8), "class_dict": {"a": [0]}}),
        pickle.dumps({"image_data": np.zeros((2, 84, 84, 3), np.uint8), "class_dict": {"a": [5]}}),
        pickle.dumps([1, 2, 3]),
        b"garbage",
        # a pickle that imports a module this Python lacks (as numpy>=2's numpy._core under numpy 1.x)
        b"cno_such_module_metarl\nthing\n.",
    ],
)
def test_malformed_miniimagenet_pkl_is_a_user_error(tmp_path, content):
    (tmp_path / "miniimagenet").mkdir()
    (tmp_path / "miniimagenet" / "mini-imagenet-cache-train.pkl").write_bytes(content)
    with pytest.raises(UserError, match="mini-imagenet-cache-train.pkl"):
        load_miniimagenet(tmp_path, "train")


def test_miniimagenet_missing_or_bad_csv_is_a_user_error(tmp_path):
    with pytest.raises(UserError) as error:
        load_miniimagenet(tmp_path, "train")
    assert "mini-imagenet-cache-train.pkl" in str(error.value) and "train.csv" in str(error.value)
    (tmp_path / "miniimagenet" / "images").mkdir(parents=True)
    (tmp_path / "miniimagenet" / "train.csv").write_text("file,class\nx.jpg,n01\n")
    with pytest.raises(UserError, match="filename,label"):
        load_miniimagenet(tmp_path, "train", cache=False)
    (tmp_path / "miniimagenet" / "train.csv").write_text("filename,label\nmissing.jpg,n01\n")
    with pytest.raises(UserError, match="missing.jpg"):
        load_miniimagenet(tmp_path, "train", cache=False)
    with pytest.raises(UserError, match="1 image.* missing.*missing.jpg"):  # with the cache: before hashing files
        load_miniimagenet(tmp_path, "train", cache_dir=tmp_path / "cache")
    (tmp_path / "miniimagenet" / "train.csv").write_bytes(b"filename,label\n\xff\xfe.jpg,n01\n")
    with pytest.raises(UserError, match="not a UTF-8"):
        load_miniimagenet(tmp_path, "train", cache=False)
    with pytest.raises(UserError, match="split"):
        load_miniimagenet(tmp_path, "validation")


# ------------------------------------------------------------------------------------------ data root


def test_resolve_data_root_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv("METARL_DATA", raising=False)
    assert resolve_data_root(None) == Path("data")
    monkeypatch.setenv("METARL_DATA", str(tmp_path))
    assert resolve_data_root(None) == tmp_path
    assert resolve_data_root("/elsewhere") == Path("/elsewhere")


# ------------------------------------------------------------------------------------------- download


class _Handler(SimpleHTTPRequestHandler):
    requests: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        _Handler.requests.append(self.path)
        super().do_GET()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server(tmp_path, monkeypatch):
    """A loopback HTTP server over tmp_path/served; yields (base_url, served folder)."""
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    served = tmp_path / "served"
    served.mkdir()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, directory=str(served)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    _Handler.requests = []
    yield f"http://127.0.0.1:{httpd.server_address[1]}/python/", served
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def _serve(served: Path) -> dict[str, str]:
    (served / "python").mkdir()
    checksums = {}
    for name in ("images_background.zip", "images_evaluation.zip"):
        content = name.encode() * 50_000  # ~1 MB, several read chunks
        (served / "python" / name).write_bytes(content)
        checksums[name] = "sha256:" + hashlib.sha256(content).hexdigest()
    return checksums


def test_download_verifies_and_keeps_verified_files(server, tmp_path):
    base_url, served = server
    checksums = _serve(served)
    paths = download_omniglot(tmp_path / "data", base_url=base_url, checksums=checksums)
    assert [p.name for p in paths] == ["images_background.zip", "images_evaluation.zip"]
    for path in paths:
        assert path.read_bytes() == (served / "python" / path.name).read_bytes()
    assert sorted(os.listdir(tmp_path / "data" / "omniglot")) == [
        "images_background.zip",
        "images_evaluation.zip",
    ]
    download_omniglot(tmp_path / "data", base_url=base_url, checksums=checksums)
    assert len(_Handler.requests) == 2  # already present and verified: not fetched again


def test_download_checksum_mismatch_leaves_nothing(server, tmp_path):
    base_url, served = server
    _serve(served)
    target = tmp_path / "data" / "omniglot"
    with pytest.raises(UserError, match="Checksum mismatch"):
        download_omniglot(
            tmp_path / "data", base_url=base_url, checksums={"images_background.zip": "sha256:" + "0" * 64}
        )
    assert os.listdir(target) == []
    with pytest.raises(UserError, match="md5"):  # the default table (published MD5s) is applied too
        download_omniglot(tmp_path / "data", base_url=base_url)
    assert os.listdir(target) == []


def test_download_http_error_is_a_user_error(server, tmp_path):
    base_url, _ = server
    (tmp_path / "out").mkdir()
    with pytest.raises(UserError, match="images_evaluation.zip") as error:
        download_file(base_url + "images_evaluation.zip", tmp_path / "out" / "images_evaluation.zip")
    assert "404" in str(error.value)
    assert os.listdir(tmp_path / "out") == []


def test_a_present_file_that_fails_its_checksum_is_named_when_the_download_fails(tmp_path):
    target = tmp_path / "data" / "omniglot"
    target.mkdir(parents=True)
    (target / "images_background.zip").write_bytes(b"junk")
    with pytest.raises(UserError, match="already there does not match") as error:
        download_omniglot(tmp_path / "data", base_url="http://127.0.0.1:9/", timeout=2)  # nothing listens there
    assert "Could not download" in str(error.value) and "\n" not in str(error.value)
    assert (target / "images_background.zip").read_bytes() == b"junk"  # left as it was
