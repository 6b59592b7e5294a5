"""Few-shot classification data: Omniglot and MiniImageNet in memory, splits, and N-way K-shot tasks.

Every dataset becomes one `ClassImages`: a uint8 tensor (n_classes, n_per_class, C, H, W) plus class
names. One dense tensor (channel axis included, also for grey Omniglot) lets the task sampler slice a
whole meta-batch with a single indexing operation and no per-iteration decoding; uint8 keeps the full
Omniglot at 25 MB and MiniImageNet-train at 0.8 GB. Pixels become floats in [0, 1] (divided by 255)
only when a task is drawn.

Omniglot (Lake et al. 2015) is read from, per set (images_background, images_evaluation), in this
order: `<set>.npz` (bool (n, 20, 105, 105), True = white paper), the official `<set>.zip`, or that
archive extracted to `<set>/<Alphabet>/characterNN/<id>_<drawer>.png`. Characters are ordered by the
official character id (the number in the file names, which is also the npz order), so all routes give
the same tensor and names. Note that the id order is *not* the alphabetical order of the alphabets
(ids 1-26 are Arcadian, Alphabet_of_the_Magi is 709-728). Images are inverted (ink = 255) and resized
to 28x28 with Lanczos; the result is cached because preprocessing 32,460 images takes seconds.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import pickle
import re
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from metarl.errors import UserError

OMNIGLOT_URL = "https://github.com/brendenlake/omniglot/raw/master/python/"
OMNIGLOT_SETS = ("images_background", "images_evaluation")
MINIIMAGENET_CSV_URL = "https://github.com/twitter/meta-learning-lstm/tree/master/data/miniImagenet"
DEFAULT_DATA_ROOT = Path("data")
_RESAMPLING = {"lanczos": Image.Resampling.LANCZOS, "nearest": Image.Resampling.NEAREST}
log = logging.getLogger(__name__)

# Alphabets in official character-id order, with their number of characters. The background set
# has ids 1..964, the evaluation set 965..1623. Checked against the official archive
# images_background_small1.zip (Balinese 108, Early_Aramaic 251, Greek 394, Korean 643, Latin 683 and
# their sizes); the sizes agree with the official folders, and the order with public id tables.
# fmt: off
OMNIGLOT_ALPHABETS: dict[str, tuple[tuple[str, int], ...]] = {
    "images_background": (
        ("Arcadian", 26), ("Armenian", 41), ("Asomtavruli_(Georgian)", 40), ("Balinese", 24),
        ("Bengali", 46), ("Blackfoot_(Canadian_Aboriginal_Syllabics)", 14), ("Braille", 26),
        ("Cyrillic", 33), ("Early_Aramaic", 22), ("Syriac_(Estrangelo)", 23), ("Anglo-Saxon_Futhorc", 29),
        ("Futurama", 26), ("Grantha", 43), ("Greek", 24), ("Gujarati", 48), ("Hebrew", 22),
        ("Japanese_(hiragana)", 52), ("Inuktitut_(Canadian_Aboriginal_Syllabics)", 16),
        ("Malay_(Jawi_-_Arabic)", 40), ("Japanese_(katakana)", 47), ("Korean", 40), ("Latin", 26),
        ("Alphabet_of_the_Magi", 20), ("Mkhedruli_(Georgian)", 41), ("Burmese_(Myanmar)", 34),
        ("N_Ko", 33), ("Ojibwe_(Canadian_Aboriginal_Syllabics)", 14), ("Sanskrit", 42), ("Tagalog", 17),
        ("Tifinagh", 55),
    ),
    "images_evaluation": (
        ("Angelic", 20), ("Atemayar_Qelisayer", 26), ("Atlantean", 26), ("Aurek-Besh", 26), ("Avesta", 26),
        ("Ge_ez", 26), ("Glagolitic", 45), ("Gurmukhi", 45), ("Kannada", 41), ("Keble", 26),
        ("Malayalam", 47), ("Manipuri", 40), ("Mongolian", 30), ("Old_Church_Slavonic_(Cyrillic)", 45),
        ("Oriya", 46), ("Syriac_(Serto)", 23), ("Sylheti", 28), ("Tengwar", 25), ("Tibetan", 42),
        ("ULOG", 26),
    ),
}
# fmt: on
# Vinyals et al. (2016) split as released by Snell et al. (prototypical networks, splits/vinyals):
# validation = five background alphabets (172 characters), test = the evaluation characters from
# Gurmukhi/character42 on (423), train = the remaining 1028.
_VINYALS_VAL_ALPHABETS = frozenset({"Armenian", "Bengali", "Early_Aramaic", "Hebrew", "Mkhedruli_(Georgian)"})
_VINYALS_TEST_FROM = ("Gurmukhi", 42)  # in images_evaluation
_CBFINN_SIZES = (1100, 100, 423)
_PNG_MEMBER = re.compile(r"(?:^|/)([^/]+)/(character\d+)/(\d+)_(\d+)\.png$")

MINIIMAGENET_SPLITS = {
    "train": ("mini-imagenet-cache-train.pkl", "train.csv"),
    "val": ("mini-imagenet-cache-validation.pkl", "val.csv"),
    "test": ("mini-imagenet-cache-test.pkl", "test.csv"),
}


@dataclass(frozen=True, eq=False)
class ClassImages:
    """Images grouped by class: `images` uint8 (n_classes, n_per_class, C, H, W), one name per class."""

    images: Tensor
    names: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 5 or len(self.names) != len(self.images):
            raise ValueError("ClassImages needs uint8 (n_classes, n_per_class, C, H, W) images, one name each")

    def __len__(self) -> int:
        return len(self.names)

    def subset(self, indices: Sequence[int] | Tensor) -> ClassImages:
        """The classes at `indices`, in that order."""
        index = torch.as_tensor(indices, dtype=torch.long)
        return ClassImages(self.images[index], tuple(self.names[i] for i in index.tolist()))

    def with_rotations(self) -> ClassImages:
        """Each class followed by its copies turned 90, 180, 270 degrees, as new classes (4x classes)."""
        turned = torch.stack([torch.rot90(self.images, k, dims=(-2, -1)) for k in range(4)], dim=1)
        names = tuple(f"{name}/rot{90 * k:03d}" for name in self.names for k in range(4))
        return ClassImages(turned.flatten(0, 1), names)


class Task(NamedTuple):
    """One N-way K-shot task (or a stack of T tasks, with a leading T axis on every field)."""

    support_x: Tensor  # float (N*K, C, H, W) in [0, 1], class-major: all shots of label 0, then label 1...
    support_y: Tensor  # int64 (N*K,), labels 0..N-1
    query_x: Tensor  # float (N*Q, C, H, W)
    query_y: Tensor  # int64 (N*Q,)


def resolve_data_root(explicit: str | Path | None = None) -> Path:
    """The data root: the explicit argument, else $METARL_DATA, else ./data (datasets live in subfolders)."""
    chosen = explicit if explicit not in (None, "") else os.environ.get("METARL_DATA") or DEFAULT_DATA_ROOT
    return Path(chosen).expanduser()


# ----------------------------------------------------------------------------------------------- Omniglot


def omniglot_class_names(set_name: str) -> list[str]:
    """All character names of one official set in id order, e.g. 'images_background/Arcadian/character01'."""
    return [
        f"{set_name}/{alphabet}/character{number:02d}"
        for alphabet, count in OMNIGLOT_ALPHABETS[set_name]
        for number in range(1, count + 1)
    ]


def preprocess_omniglot(paper: np.ndarray, size: int = 28, resample: str = "lanczos") -> np.ndarray:
    """One official image (bool, True = white paper) -> uint8 (size, size) with ink = 255.

    Inverting before resizing makes the resampling act on ink. "nearest" reproduces what Finn et al.'s
    resize script produced in practice: Pillow silently resizes mode-"1" (bilevel) images with nearest
    neighbour whatever filter is asked for, so their "Lanczos" images are binary.
    """
    ink = Image.fromarray(np.logical_not(paper).astype(np.uint8) * 255)
    return np.asarray(ink.resize((size, size), _RESAMPLING[resample]))


def load_omniglot(
    data_root: str | Path | None = None,
    size: int = 28,
    resample: str = "lanczos",
    sets: Sequence[str] = OMNIGLOT_SETS,
    cache: bool = True,
    cache_dir: str | Path | None = None,
) -> ClassImages:
    """All Omniglot characters: uint8 (1623, 20, 1, size, size), ink = 255, background set first.

    Data is read from `<data_root>/omniglot/` (see the module docstring for the accepted files). The
    preprocessed tensor is cached in `resolve_cache_dir(cache_dir)`; the cache file name carries a
    digest of the source files (path, size, mtime) and of the preprocessing settings, so a changed
    source is preprocessed again.
    """
    if resample not in _RESAMPLING:
        raise UserError(f"Unknown Omniglot resampling {resample!r}; choose one of {sorted(_RESAMPLING)}.")
    unknown = [name for name in sets if name not in OMNIGLOT_SETS]
    if unknown:
        raise UserError(f"Unknown Omniglot sets {unknown}; the official sets are {list(OMNIGLOT_SETS)}.")
    folder = resolve_data_root(data_root) / "omniglot"
    sources = [_omniglot_source(folder, name) for name in sets]
    files = [file for source in sources for file in _source_files(source)]

    def build() -> ClassImages:
        parts = [_read_omniglot_set(source, name, size, resample) for source, name in zip(sources, sets, strict=True)]
        return ClassImages(torch.cat([p.images for p in parts]), sum((p.names for p in parts), ()))

    settings = {"size": size, "resample": resample, "sets": list(sets)}
    return _cached(f"omniglot_{size}_{resample}", files, settings, build, cache, cache_dir)


def _omniglot_source(folder: Path, set_name: str) -> Path:
    """The preferred existing source of one set: npz, then zip, then extracted folder."""
    for candidate in (folder / f"{set_name}.npz", folder / f"{set_name}.zip"):
        if candidate.is_file():
            return candidate
    if (folder / set_name).is_dir():
        return folder / set_name
    raise UserError(
        f"Omniglot {set_name} not found in {folder}: expected {set_name}.npz, or the official archive "
        f"{set_name}.zip from {OMNIGLOT_URL}{set_name}.zip (or that archive extracted to {set_name}/). "
        f"Put images_background.zip and images_evaluation.zip in {folder} (`metarl data download omniglot "
        f"--data-root {folder.parent}` does it), or point --data-root / METARL_DATA at the folder that holds "
        f"omniglot/."
    )


def _source_files(source: Path) -> list[Path]:
    return sorted(source.rglob("*.png")) if source.is_dir() else [source]


def _read_omniglot_set(source: Path, set_name: str, size: int, resample: str) -> ClassImages:
    if source.suffix == ".npz":
        papers, names = _read_omniglot_npz(source, set_name)
    elif source.suffix == ".zip":
        try:
            with zipfile.ZipFile(source) as archive:
                papers, names = _read_omniglot_pngs(archive.namelist(), archive.read, source, set_name)
        except (zipfile.BadZipFile, OSError, EOFError) as error:
            raise UserError(
                f"{source} is not a readable zip archive ({error}); download it again from "
                f"{OMNIGLOT_URL}{set_name}.zip and put it at {source}."
            ) from error
    else:
        members = [path.relative_to(source).as_posix() for path in _source_files(source)]
        papers, names = _read_omniglot_pngs(members, lambda m: (source / m).read_bytes(), source, set_name)
    out = np.empty((*papers.shape[:2], 1, size, size), dtype=np.uint8)
    for c, d in np.ndindex(*papers.shape[:2]):
        out[c, d, 0] = preprocess_omniglot(papers[c, d], size, resample)
    return ClassImages(torch.from_numpy(out), tuple(names))


def _read_omniglot_npz(path: Path, set_name: str) -> tuple[np.ndarray, list[str]]:
    """The npz format of the shared data: 'images' bool (n, 20, 105, 105), 'labels' = character index."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            papers, labels = npz["images"], npz["labels"]
    except (KeyError, ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
        # numpy's own message for a non-npz file suggests loading pickles, which is no fix here
        detail = str(error.args[0]) if isinstance(error, KeyError) else "not a readable npz file"
        raise UserError(
            f"{path} is not an Omniglot npz with arrays 'images' (bool, n x 20 x 105 x 105, True = white "
            f"paper) and 'labels' ({detail}). Replace it, or delete it and put the official archive "
            f"{OMNIGLOT_URL}{set_name}.zip next to it."
        ) from error
    names = omniglot_class_names(set_name)
    n = len(papers)
    if papers.dtype != np.bool_ or papers.ndim != 4 or not 0 < n <= len(names) or papers.shape[1] < 1:
        raise UserError(
            f"{path}: 'images' should be bool (n <= {len(names)}, drawers, height, width) with True = white "
            f"paper, got {papers.dtype} {papers.shape}. Replace it with the official {set_name}.zip from "
            f"{OMNIGLOT_URL}."
        )
    if labels.shape != papers.shape[:2] or not (labels == np.arange(n)[:, None]).all():
        raise UserError(f"{path}: 'labels' should hold the character index 0..{n - 1} of each image, in order.")
    return papers, names[:n]


def _read_omniglot_pngs(
    members: Iterable[str], read: Callable[[str], bytes], source: Path, set_name: str
) -> tuple[np.ndarray, list[str]]:
    """Decode an official-layout tree into bool (characters, drawers, H, W), ordered by (id, drawer)."""
    characters: dict[int, tuple[str, dict[int, str]]] = {}
    for member in members:
        match = _PNG_MEMBER.search(member)
        if match is None:
            continue
        alphabet, character, char_id, drawer = match.groups()
        name = f"{set_name}/{alphabet}/{character}"
        known, drawers = characters.setdefault(int(char_id), (name, {}))
        if known != name or int(drawer) in drawers:
            raise UserError(f"{source}: character id {char_id} is used twice ({known}, {member}): not official.")
        drawers[int(drawer)] = member
    counts = {len(drawers) for _, drawers in characters.values()}
    if len(counts) != 1:
        raise UserError(
            f"{source}: expected PNGs <Alphabet>/characterNN/<id>_<drawer>.png with the same number of "
            f"drawers per character (found {'none' if not counts else sorted(counts)}). Use the official "
            f"{OMNIGLOT_URL}{set_name}.zip."
        )
    ordered = [characters[char_id] for char_id in sorted(characters)]
    try:
        papers = np.stack([[_decode_paper(read(drawers[d])) for d in sorted(drawers)] for _, drawers in ordered])
    except (UnidentifiedImageError, OSError, zipfile.BadZipFile, ValueError) as error:
        raise UserError(
            f"{source}: cannot decode the Omniglot PNGs ({error}); get a fresh copy of {set_name}.zip from "
            f"{OMNIGLOT_URL}."
        ) from error
    return papers, [name for name, _ in ordered]


def _decode_paper(png: bytes) -> np.ndarray:
    """A PNG as bool with True = white paper (official files are bilevel, mode "1")."""
    with Image.open(io.BytesIO(png)) as image:
        return np.asarray(image) if image.mode == "1" else np.asarray(image.convert("L")) >= 128


def split_omniglot(
    data: ClassImages,
    protocol: str = "cbfinn",
    seed: int = 1,
    rotations_as_classes: bool | None = None,
) -> dict[str, ClassImages]:
    """Split the 1623 characters into 'train', 'val', 'test'.

    "cbfinn" (default, Finn et al. 2017 and the ANIL paper): all characters shuffled with `seed`,
    1100 / 100 / 423. Finn's own split is not reproducible exactly (it shuffled an os.listdir order),
    so the seed defines ours. "vinyals": 1028 / 172 / 423 by the released Vinyals split (whole
    alphabets for val; test = the last 423 evaluation characters), independent of the seed.
    `rotations_as_classes` (default: True for vinyals, False for cbfinn) turns every character of every
    split into 4 classes after splitting, so rotated copies never cross splits; with cbfinn, rotation
    is instead drawn per task (`TaskSampler(rotate=True)`).
    """
    if protocol == "cbfinn":
        if len(data) != sum(_CBFINN_SIZES):
            raise UserError(f"The cbfinn split needs all 1623 Omniglot characters, got {len(data)}.")
        order = torch.from_numpy(np.random.default_rng(seed).permutation(len(data)))
        n_train, n_val, _ = _CBFINN_SIZES
        parts = {"train": order[:n_train], "val": order[n_train:][:n_val], "test": order[n_train + n_val :]}
    elif protocol == "vinyals":
        roles = [_vinyals_role(name) for name in data.names]
        parts = {role: [i for i, r in enumerate(roles) if r == role] for role in ("train", "val", "test")}
    else:
        raise UserError(f"Unknown Omniglot split protocol {protocol!r}; choose 'cbfinn' or 'vinyals'.")
    rotate = protocol == "vinyals" if rotations_as_classes is None else rotations_as_classes
    splits = {role: data.subset(index) for role, index in parts.items()}
    return {role: split.with_rotations() for role, split in splits.items()} if rotate else splits


def _vinyals_role(name: str) -> str:
    set_name, alphabet, character = (name.split("/") + ["", ""])[:3]
    alphabets = [a for a, _ in OMNIGLOT_ALPHABETS.get(set_name, ())]
    if alphabet not in alphabets:
        raise UserError(f"The vinyals split needs official Omniglot class names; {name!r} is not one.")
    if set_name == "images_background":
        return "val" if alphabet in _VINYALS_VAL_ALPHABETS else "train"
    first_alphabet, first_number = _VINYALS_TEST_FROM
    position = (alphabets.index(alphabet), int(character.removeprefix("character")))
    return "test" if position >= (alphabets.index(first_alphabet), first_number) else "train"


# ------------------------------------------------------------------------------------------- MiniImageNet


def load_miniimagenet(
    data_root: str | Path | None = None,
    split: str = "train",
    cache: bool = True,
    cache_dir: str | Path | None = None,
) -> ClassImages:
    """One MiniImageNet split: uint8 (n_classes, n_per_class, 3, 84, 84), classes sorted by name.

    Read from `<data_root>/miniimagenet/`: `mini-imagenet-cache-<split>.pkl` (dict with 'image_data'
    N x 84 x 84 x 3 uint8 and 'class_dict' class -> row indices), else the Ravi & Larochelle
    `<split>.csv` (filename,label) with the JPEGs in `images/` (resized to 84x84 with Lanczos where
    needed; the decoded tensor is cached like Omniglot's). Every class has 600 images in the standard
    data; if counts differ, all classes are cut to the smallest count (with a warning) so the tensor
    stays dense for vectorised sampling.
    """
    if split not in MINIIMAGENET_SPLITS:
        raise UserError(f"Unknown MiniImageNet split {split!r}; choose one of {list(MINIIMAGENET_SPLITS)}.")
    folder = resolve_data_root(data_root) / "miniimagenet"
    pkl_name, csv_name = MINIIMAGENET_SPLITS[split]
    if (folder / pkl_name).is_file():
        return _read_miniimagenet_pkl(folder / pkl_name)
    if (folder / csv_name).is_file() and (folder / "images").is_dir():
        rows = _read_split_csv(folder / csv_name)
        files = [folder / csv_name] + [folder / "images" / filename for filename, _ in rows]
        missing = [path for path in files[1:] if not path.is_file()]
        if missing:
            raise UserError(
                f"{folder / csv_name} lists {len(missing)} image(s) missing from {folder / 'images'}, e.g. "
                f"{missing[0].name}; put the ImageNet JPEGs of the Ravi & Larochelle split there."
            )
        return _cached(
            f"miniimagenet_{split}",
            files,
            {"split": split},
            lambda: _read_miniimagenet_jpegs(folder, rows),
            cache,
            cache_dir,
        )
    raise UserError(
        f"MiniImageNet {split} split not found in {folder}: expected {pkl_name} (the common pickle cache: "
        f"dict with 'image_data' and 'class_dict'), or {csv_name} (filename,label) from the Ravi & "
        f"Larochelle split ({MINIIMAGENET_CSV_URL}) next to an images/ folder of the ImageNet JPEGs. "
        f"MiniImageNet cannot be downloaded automatically (ImageNet licence); put the files in {folder}."
    )


def _read_miniimagenet_pkl(path: Path) -> ClassImages:
    """The pickle cache. Only open pickles you trust: unpickling can run code."""
    try:
        with path.open("rb") as f:
            content = pickle.load(f, encoding="latin1")  # latin1: caches written by Python 2 also load
        image_data, class_dict = content["image_data"], content["class_dict"]
        image_data = np.asarray(image_data)
    except (
        pickle.UnpicklingError,
        EOFError,
        OSError,
        LookupError,
        TypeError,
        ValueError,
        AttributeError,
        ImportError,  # a pickle naming a module this Python lacks (numpy>=2's numpy._core under numpy 1.x)
    ) as error:
        raise UserError(
            f"{path} is not a MiniImageNet cache: expected a pickled dict with 'image_data' (N x 84 x 84 x 3 "
            f"uint8) and 'class_dict' (class -> list of row indices) ({type(error).__name__}: {error}). "
            f"Replace it, or use the CSV split from {MINIIMAGENET_CSV_URL} with an images/ folder."
        ) from error
    if image_data.dtype != np.uint8 or image_data.ndim != 4 or image_data.shape[1:] != (84, 84, 3):
        raise UserError(
            f"{path}: 'image_data' should be uint8 N x 84 x 84 x 3, not {image_data.dtype} {image_data.shape}"
        )
    if not isinstance(class_dict, dict) or not class_dict:
        raise UserError(f"{path}: 'class_dict' should be a non-empty dict class -> list of row indices.")
    try:
        rows = {str(name): np.asarray(class_dict[name], dtype=np.int64) for name in class_dict}
    except (TypeError, ValueError) as error:
        raise UserError(f"{path}: 'class_dict' should map each class to a list of row indices ({error}).") from None
    if any(r.ndim != 1 or len(r) == 0 or r.min() < 0 or r.max() >= len(image_data) for r in rows.values()):
        raise UserError(f"{path}: 'class_dict' has empty lists, or rows outside 0..{len(image_data) - 1}.")
    images = torch.from_numpy(image_data)
    return _dense({name: images[torch.from_numpy(rows[name])] for name in sorted(rows)}, path)


def _read_split_csv(path: Path) -> list[tuple[str, str]]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:  # -sig: a byte-order mark is no header problem
            lines = list(csv.reader(f))
    except UnicodeDecodeError as error:
        raise UserError(f"{path} is not a UTF-8 text CSV ({error.reason} at byte {error.start}).") from None
    header_ok = bool(lines) and [cell.strip() for cell in lines[0]] == ["filename", "label"]
    if not header_ok or any(len(row) != 2 for row in lines[1:]):
        raise UserError(
            f"{path}: expected a CSV with header 'filename,label' and one image per line, as in the Ravi & "
            f"Larochelle split ({MINIIMAGENET_CSV_URL})."
        )
    if len(lines) == 1:
        raise UserError(f"{path} lists no images.")
    return [(filename, label) for filename, label in lines[1:]]


def _read_miniimagenet_jpegs(folder: Path, rows: list[tuple[str, str]]) -> ClassImages:
    by_class: dict[str, list[np.ndarray]] = {}
    for filename, label in rows:
        path = folder / "images" / filename
        try:
            with Image.open(path) as image:
                rgb = image.convert("RGB")
        except (UnidentifiedImageError, OSError) as error:
            raise UserError(f"Cannot read MiniImageNet image {path} ({error}); the CSV lists it.") from error
        if rgb.size != (84, 84):
            rgb = rgb.resize((84, 84), Image.Resampling.LANCZOS)
        by_class.setdefault(label, []).append(np.asarray(rgb))
    return _dense({label: torch.from_numpy(np.stack(by_class[label])) for label in sorted(by_class)}, folder)


def _dense(per_class: dict[str, Tensor], source: Path) -> ClassImages:
    """Stack per-class (n, H, W, C) images into (classes, n, C, H, W), cutting all to the smallest n."""
    counts = {name: len(images) for name, images in per_class.items()}
    smallest = min(counts.values())
    if len(set(counts.values())) > 1:
        short = sorted(name for name, count in counts.items() if count == smallest)
        warnings.warn(
            f"{source}: classes have {min(counts.values())}..{max(counts.values())} images; using the first "
            f"{smallest} of each (smallest: {short[:5]}).",
            stacklevel=3,
        )
    images = torch.stack([images[:smallest] for images in per_class.values()]).permute(0, 1, 4, 2, 3)
    images = images.contiguous()
    return ClassImages(images, tuple(per_class))


# -------------------------------------------------------------------------------------------------- cache


def _cached(
    prefix: str,
    files: list[Path],
    settings: dict,
    build: Callable[[], ClassImages],
    cache: bool,
    cache_dir: str | Path | None,
) -> ClassImages:
    """`build()`, or its saved result when the source files and settings are unchanged."""
    if not cache:
        return build()
    key = hashlib.sha256()
    for path in files:
        stat = path.stat()
        key.update(f"{path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    key.update(json.dumps(settings, sort_keys=True).encode())
    path = resolve_cache_dir(cache_dir) / f"{prefix}_{key.hexdigest()[:16]}.pt"
    if path.is_file():
        try:
            saved = torch.load(path, weights_only=True)
            return ClassImages(saved["images"], tuple(saved["names"]))
        except Exception as error:  # a damaged cache is rebuilt, never fatal
            log.warning("ignoring unreadable cache %s (%s)", path, error)
    data = build()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save({"images": data.images, "names": list(data.names)}, f)
            os.replace(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)
    except OSError as error:
        log.warning("cannot write cache %s (%s): the data will be preprocessed again next time", path, error)
    return data


def resolve_cache_dir(explicit: str | Path | None = None) -> Path:
    """Where preprocessed tensors go: the argument, else $METARL_CACHE, else $XDG_CACHE_HOME/metarl
    (~/.cache/metarl). Never the data folder itself, which is often shared or read-only (and a
    permission check cannot tell when running as root)."""
    if explicit not in (None, ""):
        return Path(explicit).expanduser()
    if os.environ.get("METARL_CACHE"):
        return Path(os.environ["METARL_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "metarl"


# ---------------------------------------------------------------------------------------------- sampling


class TaskSampler:
    """Draws N-way K-shot tasks from in-memory class images, reproducibly from its own seed.

    Images are sliced from the uint8 tensor (on whatever device it lives) and converted to float in
    [0, 1] per task; nothing is decoded per iteration. `queries` defaults to `shots`, as Finn et al.'s
    code does for Omniglot (and for MiniImageNet at test time); MiniImageNet training in the reference
    setup uses 15. `rotate=True` turns each class of each task by a random multiple of 90 degrees
    (support and query alike), the Omniglot augmentation of Finn et al.
    """

    def __init__(
        self,
        data: ClassImages | Tensor,
        ways: int,
        shots: int,
        queries: int | None = None,
        rotate: bool = False,
        seed: int = 0,
    ) -> None:
        self.images = data.images if isinstance(data, ClassImages) else data
        self.ways, self.shots = ways, shots
        self.queries = shots if queries is None else queries
        self.rotate = rotate
        n_classes, n_per_class, _, height, width = self.images.shape
        if not 0 < ways <= n_classes:
            raise ValueError(f"{ways}-way tasks need at least {ways} classes, have {n_classes}")
        if shots < 1 or self.queries < 0 or shots + self.queries > n_per_class:
            raise ValueError(f"{shots} shots + {self.queries} queries exceed the {n_per_class} images per class")
        if rotate and height != width:
            raise ValueError("rotation by 90 degrees needs square images")
        self.generator = torch.Generator().manual_seed(seed)

    def sample(self) -> Task:
        """One task: support (N*K, C, H, W), labels (N*K,), query (N*Q, C, H, W), labels (N*Q,)."""
        return Task(*(field[0] for field in self.sample_batch(1)))

    def sample_batch(self, n_tasks: int) -> Task:
        """`n_tasks` independent tasks stacked on a leading axis, for training vectorised over tasks."""
        return self.materialise(self.draw(n_tasks))

    def draw(self, n_tasks: int) -> tuple[Tensor, Tensor, Tensor | None]:
        """The random part of `sample_batch` alone: classes (T, N), image picks (T, N, K+Q) and, with
        `rotate`, quarter turns (T, N). Materialising slices of it lets evaluation draw a block of tasks
        (fixing which tasks a seed gives) without holding the whole block as float images."""
        g = self.generator
        n_classes, n_per_class = self.images.shape[:2]
        classes = torch.rand(n_tasks, n_classes, generator=g).argsort(dim=1)[:, : self.ways]
        picks = torch.rand(n_tasks, self.ways, n_per_class, generator=g).argsort(dim=2)
        picks = picks[..., : self.shots + self.queries]
        turns = torch.randint(0, 4, (n_tasks, self.ways), generator=g) if self.rotate else None
        return classes, picks, turns

    def materialise(self, drawn: tuple[Tensor, Tensor, Tensor | None]) -> Task:
        """Tasks (support, labels, query, labels) from `draw`'s indices, or from a slice of them."""
        classes, picks, turns = drawn
        images, ways, shots = self.images, self.ways, self.shots
        x = images[classes[..., None].to(images.device), picks.to(images.device)]  # (T, N, K+Q, C, H, W)
        x = self._to_float(x, turns)
        n_tasks = len(classes)
        labels = torch.arange(ways, device=images.device)[:, None]
        return Task(
            x[:, :, :shots].flatten(1, 2),
            labels.expand(ways, shots).flatten().repeat(n_tasks, 1),
            x[:, :, shots:].flatten(1, 2),
            labels.expand(ways, self.queries).flatten().repeat(n_tasks, 1),
        )

    def sample_labelled(self, n: int) -> tuple[Tensor, Tensor]:
        """`n` images drawn uniformly over all classes with their class index as label (standard
        supervised batches for the multiclass baseline); `rotate` turns each image independently."""
        g, images = self.generator, self.images
        n_classes, n_per_class = images.shape[:2]
        cls = torch.randint(0, n_classes, (n,), generator=g)
        idx = torch.randint(0, n_per_class, (n,), generator=g)
        x = images[cls.to(images.device), idx.to(images.device)]
        turns = torch.randint(0, 4, (n,), generator=g) if self.rotate else None
        return self._to_float(x, turns), cls.to(images.device)

    @staticmethod
    def _to_float(x: Tensor, turns: Tensor | None) -> Tensor:
        """uint8 images to float in [0, 1]; `turns` (one per entry of x's leading axes: a class of a
        task, or one image) turns each by its own multiple of 90 degrees."""
        if turns is not None:
            turns = turns.to(x.device)
            for k in (1, 2, 3):
                x[turns == k] = torch.rot90(x[turns == k], k, dims=(-2, -1))
        return x.float().div_(255)

    def state_dict(self) -> dict:
        """The generator state, so that resumed training draws the same tasks as an uninterrupted run."""
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
