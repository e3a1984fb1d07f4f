"""A plabel dataset as an mmseg dataset, with a label set (or ground truth) as ``seg_map``."""
from __future__ import annotations

from mmseg.datasets import BaseSegDataset
from mmseg.registry import DATASETS

from plabel_kit import DataError, LabelSet, open_dataset
from plabel_kit.types import IGNORE


@DATASETS.register_module()
class PlabelSegDataset(BaseSegDataset):
    """Images of a plabel dataset (CSV index or VOC root) with their segmentation maps.

    - ``data``: CSV index or VOC root (``split`` for VOC, default train).
    - ``labels``: a label set folder; each image's ``seg_map`` is its label PNG. None: the
      dataset's own ground-truth masks.
    - ``manual``: another dataset whose images all carry manual masks (seed 000's
      "manual labels"): they join with their masks and take precedence over ``data`` for
      ids in both, so Table 1's mixes are ``data`` + ``labels`` (pseudo) with ``manual``.

    Classes and palette come from the dataset; 255 is ignored, zero is a class
    (``reduce_zero_label=False``). Problems raise DataError naming the file and image id.
    """

    def __init__(self, data=None, labels=None, manual=None, split=None, manual_split=None,
                 **kwargs):
        if data is None:
            raise DataError("no dataset given: pass --data (plabel segment / tools) or set "
                            "the dataset's `data` in the config")
        for reserved in ("metainfo", "reduce_zero_label", "ignore_index"):
            if reserved in kwargs:
                raise DataError(f"PlabelSegDataset sets {reserved} itself (classes and palette "
                                f"come from the dataset, 255 is ignored)", path=data)
        dataset = open_dataset(data, split)
        manual_set = open_dataset(manual, manual_split) if manual is not None else None
        if manual_set is not None and manual_set.classes != dataset.classes:
            raise DataError(f"manual dataset classes {manual_set.classes} differ from "
                            f"{dataset.classes} of {dataset.source}", path=manual)
        manual_ids = set(manual_set.ids) if manual_set is not None else set()
        self._infos = _image_infos(dataset.subset(set(dataset.ids) - manual_ids), labels)
        if manual_set is not None:
            self._infos += _image_infos(manual_set, None, source="manual")
        metainfo = dict(classes=tuple(dataset.classes),
                        palette=dataset.palette[: dataset.num_classes].tolist())
        super().__init__(metainfo=metainfo, reduce_zero_label=False, ignore_index=IGNORE, **kwargs)

    def load_data_list(self):
        return [dict(info, label_map=None, reduce_zero_label=False, seg_fields=[])
                for info in self._infos]


def _image_infos(dataset, labels, source: str = "ground_truth") -> list[dict]:
    """One ``{id, img_path, seg_map_path, source}`` per image: its label-set PNG when
    ``labels`` is given (source "pseudo"), else its mask (``source``)."""
    if labels is None:
        missing = [s for s in dataset if s.mask_path is None]
        if missing:
            raise DataError(f"{len(missing)} image(s) have no ground-truth mask; pass a label set",
                            path=missing[0].image_path, image_id=missing[0].id)
        return [dict(id=s.id, img_path=s.image_path, seg_map_path=s.mask_path, source=source)
                for s in dataset]
    label_set = LabelSet(labels)
    if label_set.classes != dataset.classes:
        raise DataError(f"label set classes {label_set.classes} differ from the dataset's "
                        f"{dataset.classes}", path=labels)
    infos = []
    for sample in dataset:
        path = label_set.label_path(sample.id)
        if not path.is_file():
            raise DataError(f"no label for this image in {labels} (did its stage finish?)",
                            path=path, image_id=sample.id)
        infos.append(dict(id=sample.id, img_path=sample.image_path, seg_map_path=str(path),
                          source="pseudo"))
    return infos
