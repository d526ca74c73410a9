"""Image folders.

Two layouts are read:

* **labelled**: ``root/<class>/.../<image>`` — every sub-folder of ``root`` is a class (class
  index = position in the sorted folder names); images may be nested at any depth below their class
  folder. A class folder without images is kept as a class (so train and test folders agree on
  class indices) and a warning names it.
* **unlabelled**: ``root/<image>`` — image files directly in ``root``, no sub-folders with images;
  labels are -1 and ``classes`` is empty.

Both at once (class folders *and* loose images in ``root``) is an error. Image files are those with
the extensions in :data:`IMAGE_EXTENSIONS` (case-insensitive); names starting with ``.`` (files and
folders) are ignored, as are other files. Items are ordered by class, then by relative path.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from clusterfit.data.filelist import FileList
from clusterfit.errors import DataError

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"}
)


def is_image_file(name: str) -> bool:
    """True for a non-hidden file name with an image extension (case-insensitive)."""
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _walk_images(folder: Path, extensions: frozenset[str] = IMAGE_EXTENSIONS) -> list[str]:
    """All files with ``extensions`` below ``folder`` (any depth, hidden entries skipped), sorted
    by path."""
    top = str(folder)
    found: list[tuple[str, str]] = []  # (relative name with "/", absolute path)
    for dirpath, dirnames, filenames in os.walk(top, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        rel = os.path.relpath(dirpath, top).replace(os.sep, "/")
        rel = "" if rel == "." else rel + "/"
        found.extend(
            (rel + f, os.path.join(dirpath, f))
            for f in filenames
            if not f.startswith(".") and os.path.splitext(f)[1].lower() in extensions
        )
    found.sort()
    return [p for _, p in found]


def resolve_split_folder(root: Path, split: str | None) -> Path:
    """``root/split`` when ``split`` is given (it must be a folder), else ``root``."""
    if split is None:
        return root
    candidate = root / split
    if candidate.is_dir():
        return candidate
    subs = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    raise DataError(
        f"unknown split {split!r} for image folder {root}: {candidate} is not a folder "
        f"(sub-folders: {subs[:20]}{' ...' if len(subs) > 20 else ''}). Pass one of the split "
        "folders, or split=None to read the folder itself."
    )


def list_image_folder(
    source: Path,
    split: str | None = None,
    *,
    extensions: frozenset[str] = IMAGE_EXTENSIONS,
    what: str = "images",
) -> FileList:
    """List the images of a folder (layouts in the module docstring) as a :class:`FileList`.

    ``extensions`` / ``what``: the files to list and their name in messages (video folders pass
    :data:`clusterfit.data.video.VIDEO_EXTENSIONS` and ``"videos"``).

    Raises DataError when the folder or the split folder does not exist, holds no images, or mixes
    class folders with loose images.
    """
    source = Path(source)
    if not source.is_dir():
        raise DataError(f"image folder {source} does not exist or is not a folder.")
    root = resolve_split_folder(source, split)

    loose: list[str] = []
    class_dirs: list[str] = []
    with os.scandir(root) as it:
        for entry in it:
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                class_dirs.append(entry.name)
            elif (
                entry.is_file()
                and not entry.name.startswith(".")
                and os.path.splitext(entry.name)[1].lower() in extensions
            ):
                loose.append(os.path.join(str(root), entry.name))
    class_dirs.sort()
    per_class = {c: _walk_images(root / c, extensions) for c in class_dirs}
    empty = [c for c in class_dirs if not per_class[c]]
    labelled = len(empty) < len(class_dirs)

    if labelled and loose:
        raise DataError(
            f"image folder {root} has both class sub-folders and images directly in it (e.g. "
            f"{os.path.basename(loose[0])}). Move the loose images into a class folder, or into "
            "a folder of their own to read them as unlabelled."
        )
    if not labelled and not loose:
        raise DataError(
            f"no {what} found in {root} (looked for {', '.join(sorted(extensions))}, "
            "directly in it or in class sub-folders). Check the path"
            + (" and the split" if split else "")
            + "."
        )

    if not labelled:
        loose.sort()
        labels = np.full(len(loose), -1, dtype=np.int64)
        return FileList(paths=loose, labels=labels, classes=[], root=root, source=f"folder {root}")

    if empty:
        warnings.warn(
            f"class folder(s) without {what} in {root}: {empty[:10]}; they are kept as classes "
            "with no items.",
            stacklevel=3,
        )
    paths: list[str] = []
    labels_list: list[int] = []
    for i, c in enumerate(class_dirs):
        paths.extend(per_class[c])
        labels_list.extend([i] * len(per_class[c]))
    return FileList(
        paths=paths,
        labels=np.array(labels_list, dtype=np.int64),
        classes=class_dirs,
        root=root,
        source=f"folder {root}",
        empty_classes=empty,
    )
