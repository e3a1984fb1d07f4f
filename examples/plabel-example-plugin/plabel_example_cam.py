"""``lse_cam``: a CAM trained through log-sum-exp pooling, on plabel_kit alone (torch inside methods)."""
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from plabel_kit import LabelSource, PseudoLabel
from plabel_kit.arrays import scores_to_labels
from plabel_kit.datasets import load_image
from plabel_kit.stages import train_once
from plabel_kit.toolkit.checkpoints import check_classes
from plabel_kit.toolkit.runtime import is_main_process, log, pick_device


@dataclass
class LseCam(LabelSource):
    """Reads images and image-level tags; writes CAMs (a plane per tagged class, 0..1) and labels
    (background where all CAMs < ``threshold``). A class's image score is (1/r) log mean exp(r *
    its map), not CAM's mean (Pinheiro & Collobert, CVPR 2015; r -> 0: average, r -> inf: max
    pooling); the rest follows IRN (Ahn et al., CVPR 2019)."""

    inputs = ("checkpoint",)  # parameters naming files: a --checkpoint option (skips training)
    r: float = 5.0
    backbone: str = "resnet50_v1c"  # resnet18_small: the CPU-sized preset
    output_stride: int = 16
    checkpoint: str | None = None
    epochs: int = 5
    train_batch_size: int = 16
    crop_size: int = 512
    resize_long: tuple[int, int] = (320, 640)
    lr: float = 0.01
    seed: int = 0
    scales: tuple[float, ...] = (1.0, 0.5, 1.5, 2.0)
    threshold: float = 0.15
    device: str = "auto"

    def fit(self, dataset, workdir):
        from plabel_kit.toolkit.cam import load_cam_checkpoint
        final = Path(workdir) / "lse_cam.pth"  # trained once; an interrupted training resumes
        path = train_once(self.checkpoint, final, lambda: self.train(dataset, Path(workdir), final))
        self.model, architecture = load_cam_checkpoint(path, pick_device(self.device))
        check_classes(path, architecture, dataset.classes)  # a checkpoint of other classes: an error

    def train(self, dataset, workdir, final):
        import torch
        from plabel_kit.toolkit.cam import CamNet, save_cam_checkpoint
        from plabel_kit.toolkit.training import run_epochs

        class LseCamNet(CamNet):  # only the pooling differs: CAMs and checkpoints are CamNet's
            r = self.r

            def forward(self, images):
                maps = self.classifier(self.features(images)).flatten(2)  # [B, classes, h*w]
                return (torch.logsumexp(self.r * maps, 2) - math.log(maps.shape[2])) / self.r
        device = pick_device(self.device)
        torch.manual_seed(self.seed)
        model = LseCamNet(self.backbone, dataset.num_classes - 1, self.output_stride).to(device)
        optimizer = torch.optim.SGD(model.parameters(), lr=self.lr, momentum=0.9, weight_decay=1e-4)

        def loss_of(net, batch):
            crops, tags = (t.to(device) for t in batch)
            return torch.nn.functional.multilabel_soft_margin_loss(net(crops), tags)
        run_epochs(model, Crops(dataset, self), optimizer, loss_of, epochs=self.epochs,
                   batch_size=self.train_batch_size, poly_power=0.9, seed=self.seed, num_workers=0,
                   workdir=workdir, device=device, label="LSE-CAM", what="LSE-CAM", log=log)
        if is_main_process():  # under torchrun rank 0 writes; train_once makes the others wait
            save_cam_checkpoint(model, dict(backbone=self.backbone, output_stride=self.output_stride,
                                            classes=dataset.classes), final)

    def predict(self, samples):
        from plabel_kit.toolkit.inference import multiscale_cam, normalise
        out = []
        for sample in samples:
            keys = np.asarray(sample.classes, np.int64)
            cams = np.zeros((0, *sample.image.shape[:2]), np.float32)
            if len(keys):
                image = normalise(sample.image).to(next(self.model.parameters()).device)
                cams = multiscale_cam(self.model, image, (keys - 1).tolist(), self.scales,
                                      output_stride=self.output_stride).cpu().numpy()
            out.append(PseudoLabel(scores_to_labels(cams, keys, self.threshold), cams, keys))
        return out


class Crops:
    """(crop, multi-hot tags) per image, drawn from (seed, epoch, index): a resume repeats it."""

    def __init__(self, dataset, source):
        self.dataset, self.source, self.epoch = dataset, source, 0

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        from plabel_kit.toolkit.augment import random_resize_flip_crop
        sample, s = self.dataset[index], self.source
        rng = np.random.default_rng([s.seed, self.epoch, index])
        tags = np.isin(np.arange(1, self.dataset.num_classes), sample.classes).astype(np.float32)
        return random_resize_flip_crop(load_image(sample.image_path), rng, s.resize_long, s.crop_size), tags
