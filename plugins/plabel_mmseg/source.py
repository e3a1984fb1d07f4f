"""A trained segmenter as a label source: its predictions become the next round's labels."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from plabel_kit import DataError, LabelSource, PseudoLabel
from plabel_kit.toolkit.runtime import pick_device


@dataclass
class Segmenter(LabelSource):
    """Reads images; writes a trained MMSegmentation segmenter's argmax labels and, with
    ``scores``, its softmax scores for every class at 1/``scores_stride`` resolution.

    ``model_config`` and ``checkpoint`` are what ``plabel segment train`` used and wrote;
    the checkpoint's classes must be the dataset's. Self-training: a model trained on one
    round's pseudo labels labels the next. ``device``: auto (cuda:LOCAL_RANK or cpu)."""

    model_config: str
    checkpoint: str
    scores: bool = False
    scores_stride: int = 4
    device: str = "auto"

    inputs = ("model_config", "checkpoint")
    batch_size = 8

    def __post_init__(self):
        if self.scores_stride < 1:
            raise ValueError(f"scores_stride must be >= 1, got {self.scores_stride}")
        for what, path in (("model config", self.model_config), ("checkpoint", self.checkpoint)):
            if not Path(path).is_file():
                raise ValueError(f"{path}: {what} not found")
        self._model = None

    def fit(self, dataset, workdir):
        """Nothing to train: loads the model and checks it knows ``dataset``'s classes."""
        self._load(dataset.classes)

    def predict(self, samples):
        from mmseg.apis import inference_model

        model = self._model or self._load(None)
        labels = {}
        by_size = {}
        for sample in samples:  # mmseg batches only images of one size
            by_size.setdefault(sample.image.shape[:2], []).append(sample)
        for group in by_size.values():
            results = inference_model(model, [s.image_path for s in group])
            for sample, result in zip(group, results, strict=True):
                labels[sample.id] = self._pseudo_label(result)
        return [labels[s.id] for s in samples]

    def _pseudo_label(self, result) -> PseudoLabel:
        """uint8 label [H, W] and, with ``scores``, softmax [K, H/stride, W/stride] (area mean)."""
        import torch

        label = result.pred_sem_seg.data[0].cpu().numpy().astype(np.uint8)
        if not self.scores:
            return PseudoLabel(label)
        probs = torch.softmax(result.seg_logits.data.float(), dim=0)[None]
        height, width = label.shape
        size = (-(-height // self.scores_stride), -(-width // self.scores_stride))
        probs = torch.nn.functional.interpolate(probs, size=size, mode="area")[0]
        return PseudoLabel(label, probs.cpu().numpy(), np.arange(probs.shape[0]), self.scores_stride)

    def _load(self, classes):
        from mmengine.runner import load_state_dict
        from mmseg.apis import init_model

        from . import config as C
        from .api import import_mmseg_modules
        from .checkpoints import load_checkpoint_file

        import_mmseg_modules()
        checkpoint = load_checkpoint_file(self.checkpoint)
        trained_on = list(checkpoint.get("meta", {}).get("dataset_meta", {}).get("classes", []))
        if not trained_on:
            raise DataError("checkpoint records no classes (not written by mmengine's Runner?)",
                            path=self.checkpoint)
        if classes is not None and trained_on != list(classes):
            raise DataError(f"the model was trained for classes {trained_on}, the dataset has "
                            f"{list(classes)}", path=self.checkpoint)
        cfg = C.load(self.model_config)
        C.set_num_classes(cfg, len(trained_on))
        model = init_model(cfg, None, device=str(pick_device(self.device)))
        load_state_dict(model, checkpoint["state_dict"], strict=True)
        model.dataset_meta = checkpoint["meta"]["dataset_meta"]
        self._model = model
        return model
