"""`datasets` source: a hub dataset (``load_dataset(name, config, split=...)``) or a local ``save_to_disk`` folder.

The image column is cast to ``Image(decode=False)`` so we decode with PIL ourselves and can catch,
count and skip corrupt images (with decoding inside `datasets` a single bad image raises from
``ds[i]``). A caption column holding a list of captions (COCO style) yields one caption at random per
item. The first :data:`PROBE_SIZE` items are decoded up front so a broken dataset fails early.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PIL import Image

from distill_diffusion.data.base import BadImageBudget, CaptionedImageDataset
from distill_diffusion.data.imagefolder import subsample
from distill_diffusion.data.transforms import ImageTransform, open_image
from distill_diffusion.errors import UserError, require

PROBE_SIZE = 32


def _is_saved_to_disk(path: Path) -> bool:
    return (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()


def load_hf_dataset(name: str, config_name: str | None = None, split: str = "train") -> Any:
    """Load one split of a `datasets` dataset by hub name, local script/data folder or ``save_to_disk`` folder."""
    import datasets

    path = Path(name).expanduser()
    looks_local = name.startswith(("/", ".", "~")) or path.exists()
    require(not looks_local or path.exists(), f"data.dataset_name {name}: no such local path; pass an existing "
            "dataset folder or a hub dataset id like 'owner/name'")
    if path.is_dir() and _is_saved_to_disk(path):
        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.DatasetDict):
            require(split in loaded, f"data.dataset_split={split!r} is not in {path} (splits: {', '.join(loaded)}); "
                    "set data.dataset_split to one of them")
            loaded = loaded[split]
        return loaded
    try:
        return datasets.load_dataset(name, config_name, split=split)
    except (FileNotFoundError, ValueError) as exc:
        first = (str(exc).splitlines() or ["not found"])[0][:300]
        raise UserError(f"data.dataset_name={name!r} could not be loaded ({first}); pass a hub dataset id, "
                        "a local dataset folder or a save_to_disk folder, and check data.dataset_config_name/"
                        "data.dataset_split") from None


def _require_columns(ds: Any, image_column: str, caption_column: str, name: str) -> None:
    columns = list(ds.column_names)
    for option, column in (("image_column", image_column), ("caption_column", caption_column)):
        require(column in columns, f"dataset {name} has no column {column!r} (columns: {', '.join(columns)}); "
                f"set data.{option} to one of them")


class HFImageDataset(CaptionedImageDataset):
    """Map-style dataset over one split of a `datasets` dataset."""

    def __init__(
        self,
        ds: Any,
        transform: ImageTransform,
        image_column: str = "image",
        caption_column: str = "text",
        proportion_empty_prompts: float = 0.0,
        max_bad_fraction: float = 0.05,
        max_train_samples: int | None = None,
        seed: int = 0,
        name: str = "dataset",
        probe_size: int = PROBE_SIZE,
    ) -> None:
        import datasets

        _require_columns(ds, image_column, caption_column, name)
        require(len(ds) > 0, f"dataset {name} is empty; check data.dataset_split")
        if isinstance(ds.features[image_column], datasets.Image):
            ds = ds.cast_column(image_column, datasets.Image(decode=False))
        self.ds = ds.select_columns([image_column, caption_column])
        self.indices = subsample(len(ds), max_train_samples, seed)
        self.image_column, self.caption_column = image_column, caption_column
        budget = BadImageBudget(len(self.indices), max_bad_fraction, f"dataset {name}")
        super().__init__(transform, proportion_empty_prompts, budget, seed)
        self.probe(probe_size)

    def __len__(self) -> int:
        return len(self.indices)

    def load(self, index: int) -> tuple[Image.Image, Any]:
        """Open the row's image (path, bytes or PIL) and return it with the raw caption value."""
        row = self.ds[self.indices[index]]
        return open_image(row[self.image_column]), row[self.caption_column]

    def raw_caption(self, index: int) -> Any:
        return self.ds[self.indices[index]][self.caption_column]
