"""The ``csrm`` label source: the five losses, the EMA schedule, ClassMix and the contrast
selection on small tensors; the network against mmseg's head; training, labels, resume,
checkpoints and torchrun through the CLI on synthetic scenes, scored against CAM."""
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from plabel_kit import LabelSet, open_dataset
from plabel_kit.registry import load_config
from plabel_kit.synth import make_scenes
from tests.conftest import REPO, interrupt_training, run_plabel, same_weights

CSRM_CONFIG = REPO / "configs" / "sources" / "csrm_cpu.py"
CAM_CONFIG = REPO / "configs" / "sources" / "cam_resnet18_cpu.py"


# ---- losses ----------------------------------------------------------------------------

def test_classification_loss_label_smoothing_by_hand():
    from plabel_csrm.losses import classification_loss, smooth_tags

    tags = torch.tensor([[1.0, 0.0]])
    assert smooth_tags(tags, 0.1)[0].tolist() == pytest.approx([0.95, 0.05])
    logits = torch.tensor([[2.0, -1.0]])

    def bce(y, x):
        p = 1 / (1 + math.exp(-x))
        return -(y * math.log(p) + (1 - y) * math.log(1 - p))

    expected = (bce(0.95, 2.0) + bce(0.05, -1.0)) / 2
    assert float(classification_loss(logits, tags, 0.1)) == pytest.approx(expected, rel=1e-6)
    assert float(classification_loss(logits, tags, 0.0)) == pytest.approx((bce(1, 2.0) + bce(0, -1.0)) / 2, rel=1e-6)


def test_c2s_skips_background_only_images_and_the_band():
    from plabel_csrm.losses import class_to_segmentation_loss

    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 4)
    masks = torch.zeros(2, 4, 4, dtype=torch.long)
    masks[0, :2] = 2
    masks[0, 3] = 255
    masks[1, 0] = 255  # image 1: background and band only
    loss = class_to_segmentation_loss(logits, masks, smoothing=0.1)
    kept = masks[0] != 255
    expected = F.cross_entropy(logits[0].permute(1, 2, 0)[kept], masks[0][kept], label_smoothing=0.1)
    assert float(loss) == pytest.approx(float(expected), rel=1e-6)
    changed = logits.clone()
    changed[1] += 5 * torch.randn(3, 4, 4)
    changed[0, :, 3] += 5  # band pixels
    assert float(class_to_segmentation_loss(changed, masks, 0.1)) == pytest.approx(float(loss), rel=1e-6)
    empty = logits.clone().requires_grad_()
    nothing = class_to_segmentation_loss(empty, torch.zeros(2, 4, 4, dtype=torch.long))
    assert nothing.requires_grad and float(nothing.detach()) == 0


def test_s2c_ignores_pixels_below_the_confidence_threshold():
    from plabel_csrm.losses import segmentation_to_class_loss

    torch.manual_seed(1)
    cams = torch.randn(1, 2, 3, 3, requires_grad=True)
    background = torch.randn(1, 1, 3, 3, requires_grad=True)
    probs = torch.full((1, 3, 3, 3), 1 / 3)
    probs[0, :, 0, :] = torch.tensor([0.1, 0.8, 0.1])[:, None]  # row 0 confident: class 1
    probs[0, :, 1, :] = torch.tensor([0.5, 0.25, 0.25])[:, None]  # exactly 0.5: not above it
    loss = segmentation_to_class_loss(cams, background, probs, confidence=0.5, smoothing=0.0)
    logits = torch.cat([background, cams], 1)[0, :, 0, :].T
    assert float(loss) == pytest.approx(float(F.cross_entropy(logits, torch.ones(3, dtype=torch.long))), rel=1e-6)
    loss.backward()
    assert background.grad is None  # the segmentation background is a target here, not trained
    assert cams.grad[0, :, 1:].abs().sum() == 0 and cams.grad[0, :, 0].abs().sum() > 0
    valid = torch.zeros(1, 3, 3, dtype=torch.bool)
    assert float(segmentation_to_class_loss(cams, background, probs, 0.5, valid)) == 0


def test_entropy_drop_loss_leaves_out_the_most_uncertain_pixels():
    from plabel_csrm.losses import entropy, entropy_drop_loss

    teacher = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.5, 0.5], [0.2, 0.8]]).T.reshape(1, 2, 2, 2)
    assert entropy(teacher).flatten().argmax() == 2  # the 50/50 pixel
    torch.manual_seed(2)
    student = torch.randn(1, 2, 2, 2)
    loss = entropy_drop_loss(student, teacher, drop_percent=25.0)
    flat_logits = student.flatten(2)[0].T
    target = teacher.flatten(2)[0].argmax(0)
    keep = torch.tensor([True, True, False, True])
    expected = F.cross_entropy(flat_logits[keep], target[keep]) * 4 / 3  # U2PL's valid / kept scale
    assert float(loss) == pytest.approx(float(expected), rel=1e-6)
    changed = student.clone()
    changed[0, :, 1, 0] += torch.tensor([9.0, -9.0])  # the dropped pixel
    assert float(entropy_drop_loss(changed, teacher, 25.0)) == pytest.approx(float(loss), rel=1e-6)
    valid = torch.tensor([[[True, False], [True, True]]])
    assert float(entropy_drop_loss(student, teacher, 0.0, valid)) == pytest.approx(
        float(F.cross_entropy(flat_logits[[0, 2, 3]], target[[0, 2, 3]])), rel=1e-6)


def _orthogonal(n, dim, avoid):
    """n random unit vectors orthogonal to the rows of ``avoid``."""
    vectors = torch.randn(n, dim)
    basis = torch.linalg.qr(avoid.T).Q
    vectors = vectors - vectors @ basis @ basis.T
    return F.normalize(vectors, dim=1)


def test_pixel_contrast_known_value_and_falls_when_positives_are_pulled_together():
    from plabel_csrm.losses import pixel_contrast_loss

    torch.manual_seed(3)
    dim, temperature, n_neg = 16, 0.5, 50
    prototypes = F.normalize(torch.randn(2, dim), dim=1)
    masks = torch.zeros(1, 2, 4, 4, dtype=torch.bool)
    masks[0, 0, :2], masks[0, 1, 2:] = True, True
    negatives = [_orthogonal(30, dim, prototypes) for _ in range(2)]
    rep = torch.zeros(1, dim, 4, 4)
    rep[0, :, :2] = prototypes[0][:, None, None]
    rep[0, :, 2:] = prototypes[1][:, None, None]
    exact = pixel_contrast_loss(rep, masks, prototypes, negatives, 32, n_neg, temperature)
    assert float(exact) == pytest.approx(math.log(1 + n_neg * math.exp(-1 / temperature)), rel=1e-4)

    scattered = torch.randn(1, dim, 4, 4, requires_grad=True)
    generator = torch.Generator().manual_seed(0)
    before = pixel_contrast_loss(scattered, masks, prototypes, negatives, 32, n_neg, temperature, generator)
    before.backward()
    pulled = (scattered - 0.5 * scattered.grad / scattered.grad.norm()).detach()
    after = pixel_contrast_loss(pulled, masks, prototypes, negatives, 32, n_neg, temperature,
                                torch.Generator().manual_seed(0))
    assert float(after) < float(before)
    closer = 0.5 * scattered.detach() + 0.5 * rep  # halfway to the prototypes
    assert float(pixel_contrast_loss(closer, masks, prototypes, negatives, 32, n_neg, temperature,
                                     torch.Generator().manual_seed(0))) < float(before)


def test_pixel_contrast_pairs_every_class_with_its_own_bank():
    """CSRM's reference indexes banks by the position among present classes; with class 1
    absent, class 2's anchors would meet class 1's bank (here: copies of class 2's prototype)."""
    from plabel_csrm.losses import pixel_contrast_loss

    torch.manual_seed(4)
    dim, temperature = 8, 0.5
    prototypes = F.normalize(torch.randn(3, dim), dim=1)
    masks = torch.zeros(1, 3, 2, 2, dtype=torch.bool)
    masks[0, 0, 0], masks[0, 2, 1] = True, True
    rep = torch.zeros(1, dim, 2, 2)
    rep[0, :, 0], rep[0, :, 1] = prototypes[0][:, None], prototypes[2][:, None]
    banks = [_orthogonal(10, dim, prototypes), prototypes[2].repeat(10, 1), _orthogonal(10, dim, prototypes)]
    loss = pixel_contrast_loss(rep, masks, prototypes, banks, 16, 5, temperature)
    assert float(loss) == pytest.approx(math.log(1 + 5 * math.exp(-1 / temperature)), rel=1e-4)
    one_class = masks.clone()
    one_class[0, 2] = False
    alone = pixel_contrast_loss(rep.requires_grad_(), one_class, prototypes, banks)
    assert alone.requires_grad and float(alone.detach()) == 0


def test_loss_schedules():
    from plabel_csrm.losses import s2c_weight, unreliable_percent

    assert s2c_weight(9, 10, 110) == 0
    assert s2c_weight(10, 10, 110) == pytest.approx(0.1)
    assert s2c_weight(60, 10, 110) == pytest.approx(0.55)
    assert s2c_weight(110, 10, 110) == pytest.approx(1.0)
    assert [unreliable_percent(e, 15) for e in (0, 5, 14)] == pytest.approx([20, 20 * 2 / 3, 20 / 15])


# ---- EMA teacher, ClassMix, contrast selection, memory bank ------------------------------

def test_ema_decay_schedule_and_update():
    from plabel_csrm.ema import ema_decay, make_teacher, update_teacher

    assert [ema_decay(s, 10) for s in (0, 9, 10, 11, 12, 19)] == pytest.approx([0, 0, 0, 1 / 2, 2 / 3, 0.9])
    assert ema_decay(500, 10) == 0.99 and ema_decay(109, 10) == 0.99 and ema_decay(108, 10) < 0.99
    student = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    teacher = make_teacher(student)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    before = teacher[0].weight.clone()
    with torch.no_grad():
        student[0].weight.add_(1.0)
        student[1].running_mean.fill_(2.0)
    student[1].num_batches_tracked += 3
    update_teacher(teacher, student, 0.75)
    assert torch.allclose(teacher[0].weight, 0.75 * before + 0.25 * student[0].weight)
    assert torch.allclose(teacher[1].running_mean, torch.full((2,), 0.5))
    assert int(teacher[1].num_batches_tracked) == 3
    update_teacher(teacher, student, 0.0)
    assert torch.equal(teacher[0].weight, student[0].weight)


def test_classmix_pastes_whole_classes_and_tags_them():
    from plabel_csrm.classmix import classmix

    torch.manual_seed(5)
    batch, size = 4, 8
    images = torch.randn(batch, 3, size, size)
    valid = torch.ones(batch, size, size, dtype=torch.bool)
    valid[:, :, -1] = False
    masks = torch.zeros(batch, size, size, dtype=torch.long)
    tags = torch.zeros(batch, 5)
    for b in range(batch):
        for j, c in enumerate((b + 1, (b + 2) % 5 + 1)):
            masks[b, j * 4:j * 4 + 3, :5] = c
            tags[b, c - 1] = 1
    masks[:, 3, :] = 255
    mixed = classmix(images, valid, masks, tags, torch.Generator().manual_seed(0))
    assert (mixed.partner != torch.arange(batch)).all()
    for a in range(batch):
        b = int(mixed.partner[a])
        pasted = mixed.pasted[a]
        assert pasted.any()
        chosen = torch.unique(masks[b][pasted])
        assert len(chosen) == 1 and 0 not in chosen and 255 not in chosen  # half of two classes
        assert torch.equal(pasted, (masks[b] == chosen[0]) & valid[b])  # the whole class, never padding
        assert torch.equal(mixed.images[a][:, pasted], images[b][:, pasted])
        assert torch.equal(mixed.images[a][:, ~pasted], images[a][:, ~pasted])
        assert torch.equal(mixed.masks[a], torch.where(pasted, masks[b], masks[a]))
        present = torch.unique(mixed.masks[a])
        assert all(mixed.tags[a, int(c) - 1] == 1 for c in present if 0 < c < 255)
        assert (mixed.tags[a] >= tags[a]).all()
    assert torch.equal(masks[0, 3], torch.full((size,), 255))  # inputs untouched
    single = classmix(images[:1], valid[:1], masks[:1], tags[:1])
    assert single.images is images[:1] or torch.equal(single.images, images[:1])


def test_contrast_selection_rules():
    from plabel_csrm.targets import contrast_selection, masked_means, restrict_to_tags

    # 4 pixels, K = 4 (background + 3); the image is tagged with class 1 only
    probs = torch.tensor([
        [0.05, 0.90, 0.03, 0.02],  # confident class 1: prototype + anchor
        [0.50, 0.06, 0.40, 0.04],  # class 2 likely but untagged
        [0.30, 0.28, 0.22, 0.20],  # flat: the most uncertain
        [0.70, 0.10, 0.10, 0.10],
    ]).T.reshape(1, 4, 2, 2)
    tags = torch.tensor([[1.0, 0.0, 0.0]])
    labels = restrict_to_tags(probs, tags).argmax(1)
    valid = torch.ones(1, 2, 2, dtype=torch.bool)
    prototype, anchors, negatives = contrast_selection(probs, labels, tags, valid, percent=50, low_rank=2,
                                                       high_rank=3)
    assert prototype[0, 1, 0, 0] and anchors[0, 1, 0, 0] and prototype[0, 0, 1, 1]
    assert prototype.sum() == 2  # the two lowest entropies
    high = {(1, 0), (0, 1)}  # the two highest entropies
    assert {tuple(p) for p in negatives[0].any(0).nonzero().tolist()} <= high
    assert negatives[0, 2, 0, 1]  # class 2 ranks 2nd at pixel (0, 1) and is not tagged
    assert negatives[0, 1, 0, 1]  # class 1 ranks 3rd there: a hard negative (ranks low_rank..high_rank-1)
    assert not negatives[0, 3, 0, 1]  # class 3 ranks 4th (>= high_rank)
    assert negatives[0, 2, 1, 0] and not negatives[0, 1, 1, 0]  # tagged class 1 ranks 2nd: not negative
    assert not negatives[0, 0].any()  # background is tagged and always ranks in the top 2 here
    rep = torch.arange(8.0).reshape(1, 2, 2, 2)
    means = masked_means(rep, prototype)
    assert means[1].tolist() == [0.0, 4.0] and means[0].tolist() == [3.0, 7.0] and means[3].tolist() == [0, 0]


def test_labelled_role_takes_anchors_from_the_c2s_mask_for_every_class():
    """On the strong ("labelled") views the class->segmentation mask decides, not the teacher's
    entropy: every class of the mask holds prototypes, and anchors where the teacher gives it
    > 0.3, however uncertain the pixel; negatives: labelled pixels of another class where the
    class ranks in the teacher's top low_rank."""
    from plabel_csrm.targets import labelled_contrast_selection

    # 4 pixels, K = 4; the teacher is sure of background only
    probs = torch.tensor([
        [0.97, 0.01, 0.01, 0.01],  # background, confident
        [0.30, 0.40, 0.20, 0.10],  # class 1 in the mask, uncertain teacher
        [0.25, 0.15, 0.35, 0.25],  # class 2 in the mask, uncertain teacher
        [0.40, 0.35, 0.15, 0.10],  # the band (255)
    ]).T.reshape(1, 4, 2, 2)
    pseudo = torch.tensor([[[0, 1], [2, 255]]])
    prototype, anchors, negatives = labelled_contrast_selection(probs, pseudo, class_threshold=0.3, low_rank=2)
    assert prototype[0, :, 0, 0].tolist() == [True, False, False, False]
    assert prototype[0, :, 0, 1].tolist() == [False, True, False, False]
    assert prototype[0, :, 1, 0].tolist() == [False, False, True, False]
    assert not prototype[0, :, 1, 1].any() and not negatives[0, :, 1, 1].any()  # the band serves nothing
    assert anchors.flatten(2).any(2)[0].tolist() == [True, True, True, False]  # background and both classes
    # negatives: top-2 classes that are not the pixel's label
    assert negatives[0, :, 0, 0].tolist() == [False, True, False, False]  # class 1 ranks 2nd (tie broken by order)
    assert negatives[0, :, 0, 1].tolist() == [True, False, False, False]
    assert negatives[0, :, 1, 0].tolist() == [True, False, False, False] or \
        negatives[0, :, 1, 0].tolist() == [False, False, False, True]  # background and class 3 tie at 0.25
    low_anchor = labelled_contrast_selection(probs, pseudo, class_threshold=0.5)[1]
    assert low_anchor.flatten(2).any(2)[0].tolist() == [True, False, False, False]


def test_contrast_targets_split_the_roles_between_strong_and_weak_views():
    """The first crops (strong views) select from their c2s masks; the rest (weak views) by
    U2PL's entropy rule on the teacher (today's background-only low-entropy case: the weak
    views alone would leave one class with anchors and a zero loss)."""
    from types import SimpleNamespace

    from plabel_csrm.targets import contrast_selection, labelled_contrast_selection, restrict_to_tags
    from plabel_csrm.train import contrast_targets

    params = SimpleNamespace(contrast_class_threshold=0.3, contrast_low_rank=3, contrast_high_rank=20)
    torch.manual_seed(7)
    size, k = 8, 4
    logits = torch.randn(4, k, size, size)
    logits[:, 0, :4] += 6  # confident background at the top of every crop, uncertain below
    probs = torch.softmax(logits, dim=1)
    pseudo = torch.zeros(4, size, size, dtype=torch.long)
    pseudo[:, 4:, :4], pseudo[:, 4:, 4:] = 1, 2
    pseudo[:, 3] = 255
    tags = torch.tensor([[1.0, 1.0, 0.0]] * 4)
    valid = torch.ones(4, size, size, dtype=torch.bool)
    prototype, anchors, negatives = contrast_targets(probs, pseudo, tags, valid, 2, 20.0, params)
    strong = labelled_contrast_selection(probs[:2], pseudo[:2], 0.3, 3)
    weak = contrast_selection(probs[2:], restrict_to_tags(probs[2:], tags[2:]).argmax(1), tags[2:], valid[2:], 20.0)
    for got, l_part, u_part in zip((prototype, anchors, negatives), strong, weak):
        assert torch.equal(got[:2], l_part) and torch.equal(got[2:], u_part)
    # the strong views: every class of the mask; the weak views' low-entropy share: background only
    assert prototype[:2].flatten(2).any(2).any(0).tolist() == [True, True, True, False]
    assert prototype[2:].flatten(2).any(2).any(0).tolist() == [True, False, False, False]
    assert prototype[2:, :, 4:].sum() == 0  # no weak-view prototype in the uncertain half


def test_step_feeds_each_loss_its_role(tmp_path, monkeypatch):
    """One training step after warm-up: class->segmentation reads the strong views and their
    c2s masks, the entropy-drop loss the weak views, the contrast both with the split at B."""
    import plabel_csrm.train as train
    from plabel_kit import get_registry
    from plabel_kit.synth import make_scenes

    dataset = open_dataset(make_scenes(tmp_path / "s", n=4, size=48, seed=2, progress=False))
    params = load_config(CSRM_CONFIG)
    params.update(crop_size=32, resize_long=(24, 40), train_batch_size=4, warmup_epochs=0, epochs=1, crf=False,
                  c2s_crf=False, classmix_prob=0.0, num_queries=4, memory_size=50, memory_size_background=50)
    source = get_registry().build("label_source", {"type": "csrm", **params})
    from plabel_csrm.model import CsrmNet

    model = CsrmNet(source.backbone, dataset.num_classes - 1, source.output_stride, source.decoder_channels,
                    source.skip_channels, tuple(source.aspp_dilations), source.representation_dim, source.dropout)
    trainer = train.Trainer(model, source, dataset, tmp_path / "w", torch.device("cpu"), True, log=lambda *_: None)
    seen = {}

    def record(name, function):
        def wrapped(*args, **kwargs):
            seen[name] = (args, function(*args, **kwargs))
            return seen[name][1]
        monkeypatch.setattr(train, name, wrapped)

    for name in ("class_to_segmentation_loss", "entropy_drop_loss", "contrast_targets", "c2s_masks"):
        record(name, getattr(train, name))
    batch = next(iter(torch.utils.data.DataLoader(trainer.crops, batch_size=4)))
    strong, strong_valid, weak, weak_valid, tags = batch
    stats = trainer.step(model.train(), batch, 0, 0, None)
    (images, _, c2s_tags, c2s_valid, _, _), pseudo = seen["c2s_masks"]
    assert torch.equal(images, torch.cat([strong, weak])) and torch.equal(c2s_tags, torch.cat([tags, tags]))
    assert torch.equal(c2s_valid, torch.cat([strong_valid, weak_valid]))
    (seg, masks, _), _ = seen["class_to_segmentation_loss"]
    assert seg.shape[0] == 4 and torch.equal(masks, pseudo[:4])  # strong views and their c2s masks only
    (seg_u, probs_u, _, valid_u), _ = seen["entropy_drop_loss"]
    assert seg_u.shape[0] == 4 and probs_u.shape[0] == 4 and torch.equal(valid_u, weak_valid)  # weak views only
    (probs, small, _, _, labelled, _, _), _ = seen["contrast_targets"]
    assert labelled == 4 and probs.shape[0] == 8
    assert torch.equal(small, train.shrink(pseudo, probs.shape[2:]))
    assert set(stats) >= {"contrast", "anchor_classes", "u", "c2s"}


def test_strong_and_weak_views():
    """The weak view is the image at its own size, cropped only; the strong view is resized,
    flipped, cropped, colour-jittered and blurred as CSRM's labelled batch; both reproducible
    from (seed, epoch, index)."""
    from plabel_kit.toolkit.inference import normalise
    from plabel_csrm.train import augment, photometric_jitter, shift_hue, weak_view

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    weak, valid = weak_view(image, np.random.default_rng(1), 16)
    assert valid.all()
    whole = normalise(image)
    found = [(t, l) for t in range(5) for l in range(15) if torch.equal(whole[:, t:t + 16, l:l + 16], weak)]
    assert len(found) == 1  # an unaltered crop of the image
    padded, valid = weak_view(image, np.random.default_rng(1), 32)
    assert int(valid.sum()) == 20 * 30 and torch.equal(padded[:, valid], whole.flatten(1))
    a = augment(image, np.random.default_rng(3), (24, 40), 16)
    b = augment(image, np.random.default_rng(3), (24, 40), 16)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    plain = augment(image, np.random.default_rng(3), (24, 40), 16, photometric=False)
    assert torch.equal(plain[1], a[1]) and not torch.equal(plain[0], a[0])  # same geometry, other colours
    flat = np.full((8, 8, 3), (200, 40, 40), np.uint8)
    jittered = [photometric_jitter(flat, np.random.default_rng(s)) for s in range(400)]
    assert all(j.shape == flat.shape and j.dtype == np.uint8 for j in jittered)
    changed = sum(not np.array_equal(j, flat) for j in jittered) / 400
    assert 0.7 < changed < 0.85  # colour jitter with probability 0.8 (blurring a flat image changes nothing)
    from PIL import Image

    red = Image.fromarray(flat)
    assert np.array_equal(np.asarray(shift_hue(red, 0.0)), np.asarray(red.convert("HSV").convert("RGB")))
    assert np.asarray(shift_hue(red, 1 / 3))[0, 0].argmax() == 1  # red turns green


def test_memory_bank_is_fifo_with_capacity():
    from plabel_csrm.memory import MemoryBank

    bank = MemoryBank([3, 2], dim=1)
    bank.push([torch.tensor([[1.0], [2.0]]), torch.zeros(0, 1)])
    bank.push([torch.tensor([[3.0], [4.0]]), torch.tensor([[5.0], [6.0], [7.0]])])
    assert bank[0].flatten().tolist() == [2, 3, 4] and bank[0].dtype == torch.float16
    assert len(bank[1]) == 2 and set(bank[1].flatten().tolist()) <= {5, 6, 7}
    again = MemoryBank([1, 1], dim=1)
    again.load_state_dict(bank.state_dict())
    assert torch.equal(again[0], bank[0]) and again.capacities == [3, 2]


# ---- the network -----------------------------------------------------------------------

def test_network_matches_mmseg_head_and_takes_cam_weights():
    from plabel_kit.toolkit.cam import CamNet
    from plabel_csrm.model import CsrmNet

    torch.manual_seed(6)
    net = CsrmNet("resnet18_small", 5, 8, decoder_channels=32, aspp_dilations=(1, 2), representation_dim=16).eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = net(images)
        low, high = net.backbone(images)
        assert torch.allclose(out.seg, net.decoder([low, high]), atol=1e-5)  # mmseg's own forward
        assert out.seg.shape == (2, 6, 16, 16) and out.rep.shape == (2, 16, 16, 16)
        assert torch.allclose(out.logits, net.classifier(high.mean((2, 3), keepdim=True)).flatten(1), atol=1e-5)
        assert torch.allclose(net.cams(images), F.relu(out.cam_logits))
    cam = CamNet("resnet18_small", 5, 8)
    missing = net.load_state_dict(cam.state_dict(), strict=False)
    assert missing.unexpected_keys == [] and not any(k.startswith(("backbone.", "classifier."))
                                                     for k in missing.missing_keys)


# ---- the source through the CLI ----------------------------------------------------------

def _miou(index, labels, *extra):
    out = Path(labels) / "eval.json"
    run_plabel("evaluate", "--data", index, "--labels", labels, "--json", out, *extra, check=True)
    return json.loads(out.read_text())


SCENES, SIZE = 96, 128  # the comparison's synthetic set: SCENES scenes of SIZE px
CAM_EPOCHS, MORE_EPOCHS = 16, 8  # from one CAM of CAM_EPOCHS: MORE_EPOCHS of CAM, or of CSRM (2 warm-up)


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    """One CAM trained CAM_EPOCHS epochs, then MORE_EPOCHS more epochs of CAM (its own resume,
    the schedule of the longer run) or of CSRM warm-started from it: same backbone, images
    and epochs; labels without CRF for both."""
    root = tmp_path_factory.mktemp("csrm")
    index = make_scenes(root / "scenes", n=SCENES, size=SIZE, seed=0, progress=False)
    seconds = {}

    def source(name, *args):
        start = time.perf_counter()
        result = run_plabel("source", *args, "--data", index, "--out", root / name, env={"PLABEL_QUIET": "0"},
                            check=True)
        seconds[name] = time.perf_counter() - start
        return result

    source("cam", "cam", "--config", CAM_CONFIG, "--set", f"epochs={CAM_EPOCHS}")
    (root / "cam_more" / "work").mkdir(parents=True)
    shutil.copy(root / "cam" / "work" / "latest.pth", root / "cam_more" / "work" / "latest.pth")
    more = source("cam_more", "cam", "--config", CAM_CONFIG, "--set", f"epochs={CAM_EPOCHS + MORE_EPOCHS}")
    assert f"resuming classifier training after epoch {CAM_EPOCHS}" in more.stderr
    csrm = source("csrm", "csrm", "--config", CSRM_CONFIG, "--set", f"epochs={MORE_EPOCHS}", "--set", "crf=false",
                  "--cam-checkpoint", root / "cam" / "work" / "cam_final.pth")
    return {"index": index, "root": root, "seconds": seconds, "stderr": csrm.stderr,
            "checkpoint": root / "csrm" / "work" / "csrm_final.pth"}


def test_csrm_labels_beat_cam_labels_with_the_same_budget(compared, capsys):
    index, root = compared["index"], compared["root"]
    start, cam = _miou(index, root / "cam", "--sweep"), _miou(index, root / "cam_more", "--sweep")
    csrm = _miou(index, root / "csrm", "--sweep")
    with capsys.disabled():
        print(f"\nsynthetic scenes n={SCENES} {SIZE}px, resnet18_small, no CRF; mIoU at the method's threshold "
              f"(best of the sweep): CAM {CAM_EPOCHS} epochs {100 * start['miou']:.1f} "
              f"({100 * start['sweep']['best_miou']:.1f}); + CAM {MORE_EPOCHS} epochs {100 * cam['miou']:.1f} "
              f"({100 * cam['sweep']['best_miou']:.1f} at {cam['sweep']['best_threshold']:.2f}); + CSRM "
              f"{MORE_EPOCHS} epochs {100 * csrm['miou']:.1f} ({100 * csrm['sweep']['best_miou']:.1f}); seconds "
              + ", ".join(f"{k} {v:.0f}" for k, v in compared["seconds"].items()))
    # CSRM at its fixed threshold 0.4 against CAM at the best threshold of the sweep
    assert csrm["miou"] > cam["sweep"]["best_miou"]


def test_training_log_manifest_and_scores(compared):
    index, root = compared["index"], compared["root"]
    assert "warm start from the CAM checkpoint" in compared["stderr"]
    assert f"CSRM epoch {MORE_EPOCHS}/{MORE_EPOCHS}: loss" in compared["stderr"]
    ls = LabelSet(root / "csrm")
    assert ls.manifest["counts"] == {"labels": SCENES, "scores": SCENES}
    summary = ls.manifest["summary"]
    assert summary["warm_start"] == "cam_checkpoint" and summary["epochs_trained"] == MORE_EPOCHS
    history = summary["history"]
    assert [h["epoch"] for h in history] == list(range(1, MORE_EPOCHS + 1))
    warmup = load_config(CSRM_CONFIG)["warmup_epochs"]
    assert all(h["s2c"] == h["u"] == h["contrast"] == 0 for h in history[:warmup])  # warm-up: c and c2s only
    assert all(h["s2c"] > 0 and h["u"] > 0 for h in history[warmup:])
    # the strong views' c2s masks keep foreground classes holding anchors after the low-entropy
    # share (the weak views') has shrunk to background: the contrast stays on every epoch
    assert all(h["contrast"] > 0 and h["anchor_classes"] >= 2 for h in history[warmup:]), history
    assert summary["contrast_per_epoch"] == [h["contrast"] for h in history]
    assert "classes with contrast anchors per step" in compared["stderr"]
    sample = open_dataset(index)[3]
    pseudo = ls.read(sample.id)
    assert pseudo.keys.tolist() == list(sample.classes)
    assert pseudo.scores.shape == (len(sample.classes), SIZE, SIZE)
    assert np.allclose(pseudo.scores.reshape(len(sample.classes), -1).max(1), 1.0, atol=1e-3)
    with np.load(ls.scores_path(sample.id)) as saved:
        assert saved["scores"].dtype == np.float16


def test_checkpoint_skips_training_and_segmentation_output(compared, tmp_path):
    index = compared["index"]
    result = run_plabel("source", "csrm", "--data", index, "--out", tmp_path / "seg", "--config", CSRM_CONFIG,
                        "--checkpoint", compared["checkpoint"], "--set", "output=seg", "--set", "scales=(1.0,)",
                        env={"PLABEL_QUIET": "0"}, check=True)
    assert "CSRM epoch" not in result.stderr
    ls = LabelSet(tmp_path / "seg")
    assert ls.manifest["summary"]["trained_here"] is False
    assert ls.manifest["summary"]["epochs_trained"] == MORE_EPOCHS  # read from the checkpoint
    for sample in open_dataset(index).samples[:5]:
        pseudo = ls.read(sample.id)
        assert pseudo.keys.tolist() == [0, *sample.classes]
        assert np.allclose(pseudo.scores.astype(np.float32).sum(0), 1.0, atol=1e-2)
        assert set(np.unique(pseudo.label)) <= {0, *sample.classes}  # the CRF keeps to the image's classes


TINY = ["--config", CSRM_CONFIG, "--set", "crop_size=64", "--set", "resize_long=(48,80)", "--set",
        "train_batch_size=8", "--set", "warmup_epochs=1", "--set", "scales=(1.0,)", "--set", "flip=false",
        "--set", "crf=false", "--set", "num_queries=16", "--set", "memory_size=200",
        "--set", "memory_size_background=200"]


@pytest.fixture(scope="module")
def tiny_scenes(tmp_path_factory):
    return make_scenes(tmp_path_factory.mktemp("tiny") / "s", n=16, size=64, seed=1, progress=False)


def _assert_no_process_mentions(path, wait=10.0):
    """No live process (Linux /proc) has ``path`` on its command line within ``wait`` seconds."""
    proc = Path("/proc")
    if not proc.is_dir():
        return
    needle = str(path).encode()
    deadline = time.monotonic() + wait
    while True:
        left = []
        for entry in proc.iterdir():
            try:
                if entry.name.isdigit() and needle in (entry / "cmdline").read_bytes():
                    left.append(entry.name)
            except OSError:
                pass
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert not left, f"processes {left} outlived the killed training"


def test_interrupted_training_resumes_to_identical_weights(tiny_scenes, tmp_path):
    args = ["source", "csrm", "--data", tiny_scenes, *TINY, "--set", "epochs=3"]
    run_plabel(*args, "--out", tmp_path / "whole", check=True)

    epoch = interrupt_training(args, tmp_path / "broken")
    assert not (tmp_path / "broken" / "work" / "csrm_final.pth").exists()
    _assert_no_process_mentions(tmp_path / "broken")  # the CRF pool's forked workers went with it
    result = run_plabel(*args, "--out", tmp_path / "broken", env={"PLABEL_QUIET": "0"}, check=True)
    assert f"resuming CSRM training after epoch {epoch}" in result.stderr
    assert same_weights(tmp_path / "whole" / "work" / "csrm_final.pth", tmp_path / "broken" / "work" / "csrm_final.pth")


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_ddp_training_two_processes(tiny_scenes, tmp_path):
    plabel = Path(sys.executable).parent / "plabel"
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                             "--master-port", str(_free_port()), str(plabel), "source", "csrm", "--data", str(tiny_scenes),
                             *map(str, TINY), "--set", "epochs=2", "--out", str(tmp_path / "ddp")],
                            capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1", PLABEL_QUIET="0"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count("CSRM epoch 2/2: loss") == 1  # only rank 0 logs
    state = torch.load(tmp_path / "ddp" / "work" / "latest.pth", weights_only=False)
    assert state["epoch"] == 2 and len(state["bank"]["queues"]) == 7
    assert (tmp_path / "ddp" / "work" / "csrm_final.pth").exists()
    assert json.loads((tmp_path / "ddp" / "manifest.json").read_text())["counts"]["labels"] == 16


def test_wrong_cam_checkpoint_and_missing_crf_fail_clearly(compared, tmp_path, monkeypatch):
    result = run_plabel("source", "csrm", "--data", compared["index"], "--out", tmp_path / "x", "--config",
                        CSRM_CONFIG, "--set", "output_stride=16", "--cam-checkpoint",
                        compared["root"] / "cam" / "work" / "cam_final.pth")
    assert result.returncode != 0
    assert "use --set backbone=resnet18_small --set output_stride=8" in result.stderr
    from plabel_kit import get_registry
    from plabel_kit.errors import RegistryError

    get_registry()  # plugins load first
    monkeypatch.setitem(sys.modules, "pydensecrf.densecrf", None)  # as if pydensecrf were not installed
    with pytest.raises(RegistryError, match=r"crf=true needs the dense CRF \(pydensecrf.*--set crf=false"):
        get_registry().build("label_source", {"type": "csrm", "c2s_crf": False})
    assert get_registry().build("label_source", {"type": "csrm", "crf": False, "c2s_crf": False}).output == "cam"
