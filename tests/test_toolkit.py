"""The shared pieces of ``plabel_kit.toolkit``: the seeded crop augmentation gives what the
copies it replaced gave (CAM's, CSRM's strong and weak views, IRN's image + label pairs),
draw for draw; the epoch loop's hooks (parts, extra state, per-step hook) and its resume."""
import cv2
import numpy as np
import pytest
import torch

from plabel_kit.toolkit.augment import (random_crop_window, random_resize_flip, random_resize_flip_crop,
                                        random_resize_flip_crop_pair)
from plabel_kit.toolkit.inference import normalise

# ---- frozen copies of the augmentations before they shared plabel_kit.toolkit.augment -----


def old_cam_crop(image, rng, resize_long, crop):
    height, width = image.shape[:2]
    target = rng.integers(resize_long[0], resize_long[1] + 1)
    scale = target / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    image = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
    if rng.random() < 0.5:
        image = image[:, ::-1]
    tensor = normalise(np.ascontiguousarray(image))
    _, h, w = tensor.shape
    out = torch.zeros(3, crop, crop)
    top = rng.integers(0, max(h - crop, 0) + 1)
    left = rng.integers(0, max(w - crop, 0) + 1)
    dst_top = rng.integers(0, max(crop - h, 0) + 1)
    dst_left = rng.integers(0, max(crop - w, 0) + 1)
    ch, cw = min(crop, h), min(crop, w)
    out[:, dst_top:dst_top + ch, dst_left:dst_left + cw] = tensor[:, top:top + ch, left:left + cw]
    return out


def old_csrm_crop(image, rng, crop, photometric):
    from plabel_csrm.train import photometric_jitter

    height, width = image.shape[:2]
    top, left = rng.integers(0, max(height - crop, 0) + 1), rng.integers(0, max(width - crop, 0) + 1)
    dst_top, dst_left = rng.integers(0, max(crop - height, 0) + 1), rng.integers(0, max(crop - width, 0) + 1)
    ch, cw = min(crop, height), min(crop, width)
    pixels = np.ascontiguousarray(image[top:top + ch, left:left + cw])
    if photometric:
        pixels = photometric_jitter(pixels, rng)
    out, valid = torch.zeros(3, crop, crop), torch.zeros(crop, crop, dtype=torch.bool)
    out[:, dst_top:dst_top + ch, dst_left:dst_left + cw] = normalise(pixels)
    valid[dst_top:dst_top + ch, dst_left:dst_left + cw] = True
    return out, valid


def old_csrm_strong(image, rng, resize_long, crop, photometric=True):
    height, width = image.shape[:2]
    scale = rng.integers(resize_long[0], resize_long[1] + 1) / max(height, width)
    image = cv2.resize(image, (max(1, round(width * scale)), max(1, round(height * scale))),
                       interpolation=cv2.INTER_LINEAR)
    if rng.random() < 0.5:
        image = image[:, ::-1]
    return old_csrm_crop(image, rng, crop, photometric)


def old_irn_pair(image, label, rng, resize_long, crop, *, fill=255, interpolation=None):
    height, width = image.shape[:2]
    scale = rng.integers(resize_long[0], resize_long[1] + 1) / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    image = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
    resized = cv2.resize(label, size, interpolation=cv2.INTER_NEAREST_EXACT if interpolation is None else interpolation)
    label = resized.reshape(resized.shape[:2] + label.shape[2:])
    if rng.random() < 0.5:
        image, label = image[:, ::-1], label[:, ::-1]
    tensor = normalise(np.ascontiguousarray(image))
    h, w = label.shape[:2]
    out_image, out_label = torch.zeros(3, crop, crop), np.full((crop, crop) + label.shape[2:], fill, label.dtype)
    top, left = rng.integers(0, max(h - crop, 0) + 1), rng.integers(0, max(w - crop, 0) + 1)
    dst_top, dst_left = rng.integers(0, max(crop - h, 0) + 1), rng.integers(0, max(crop - w, 0) + 1)
    ch, cw = min(crop, h), min(crop, w)
    out_image[:, dst_top:dst_top + ch, dst_left:dst_left + cw] = tensor[:, top:top + ch, left:left + cw]
    out_label[dst_top:dst_top + ch, dst_left:dst_left + cw] = label[top:top + ch, left:left + cw]
    return out_image, out_label


SIZES = [(20, 30), (37, 53), (64, 64), (90, 41), (9, 120)]
SETTINGS = [((24, 40), 16), ((48, 80), 64), ((60, 60), 32), ((10, 200), 48)]


def _cases():
    for seed in range(6):
        for (height, width) in SIZES:
            for resize_long, crop in SETTINGS:
                image = np.random.default_rng([seed, height, width]).integers(0, 256, (height, width, 3), np.uint8)
                yield seed, image, resize_long, crop


def _tail(rng):
    """A few draws after the augmentation: a caller's stream continues where it did."""
    return rng.integers(0, 2 ** 31, 4).tolist()


def test_cam_crop_is_the_old_crop_draw_for_draw():
    for seed, image, resize_long, crop in _cases():
        old_rng, new_rng = np.random.default_rng(seed), np.random.default_rng(seed)
        assert torch.equal(old_cam_crop(image, old_rng, resize_long, crop),
                           random_resize_flip_crop(image, new_rng, resize_long, crop))
        assert _tail(old_rng) == _tail(new_rng)


def test_csrm_views_are_the_old_views_draw_for_draw():
    from plabel_csrm.train import augment, weak_view

    for seed, image, resize_long, crop in _cases():
        for photometric in (True, False):
            old_rng, new_rng = np.random.default_rng(seed), np.random.default_rng(seed)
            old = old_csrm_strong(image, old_rng, resize_long, crop, photometric)
            new = augment(image, new_rng, resize_long, crop, photometric)
            assert torch.equal(old[0], new[0]) and torch.equal(old[1], new[1])
            old, new = old_csrm_crop(image, old_rng, crop, False), weak_view(image, new_rng, crop)
            assert torch.equal(old[0], new[0]) and torch.equal(old[1], new[1])
            assert _tail(old_rng) == _tail(new_rng)


def test_irn_pairs_are_the_old_pairs_draw_for_draw():
    for seed, image, resize_long, crop in _cases():
        height, width = image.shape[:2]
        label = np.random.default_rng(seed + 100).integers(0, 5, (height, width)).astype(np.uint8)
        planes = np.random.default_rng(seed + 200).random((height, width, 3), dtype=np.float32)
        cases = [(label, 255, None), (planes, 0.0, cv2.INTER_LINEAR), (planes[..., :1], 0.0, cv2.INTER_LINEAR)]
        for target, fill, interpolation in cases:
            old_rng, new_rng = np.random.default_rng(seed), np.random.default_rng(seed)
            old = old_irn_pair(image, target, old_rng, resize_long, crop, fill=fill, interpolation=interpolation)
            new = random_resize_flip_crop_pair(image, target, new_rng, resize_long, crop, fill=fill,
                                               label_interpolation=interpolation)
            assert torch.equal(old[0], new[0])
            assert old[1].dtype == new[1].dtype and old[1].shape == new[1].shape and np.array_equal(old[1], new[1])
            assert _tail(old_rng) == _tail(new_rng)


def test_crop_window_pads_and_marks_the_image_pixels():
    window = random_crop_window(np.random.default_rng(0), 5, 12, 8)
    assert (window.height, window.width, window.top, window.dst_left) == (5, 8, 0, 0)
    image = np.arange(5 * 12 * 3, dtype=np.uint8).reshape(5, 12, 3)
    valid = window.valid()
    assert int(valid.sum()) == 5 * 8 and valid[window.dst_top:window.dst_top + 5].all()
    pasted = window.paste(window.cut(image[..., 0]), fill=255)
    assert pasted.shape == (8, 8) and (pasted[~valid.numpy()] == 255).all()
    tensor = window.paste_image(window.cut(image))
    assert torch.equal(tensor[:, valid], normalise(window.cut(image)).flatten(1))
    assert (tensor[:, ~valid] == 0).all()
    flipped, none = random_resize_flip(image, np.random.default_rng(1), (12, 12))
    assert none is None and flipped.shape == (5, 12, 3)


# ---- the epoch loop ----------------------------------------------------------------------


class _Points(torch.utils.data.Dataset):
    """(x [2], y [1]) pairs whose noise depends on (epoch, index), as the trainers' crops."""

    def __init__(self, n=12):
        self.n, self.epoch = n, 0

    def __len__(self):
        return self.n

    def __getitem__(self, index):
        rng = np.random.default_rng([self.epoch, index])
        x = torch.tensor([index / self.n, rng.random()], dtype=torch.float32)
        return x, x.sum(0, keepdim=True) * 2 + 1


class _Killed(Exception):
    pass


def _train(workdir, epochs, log=lambda *_: None, kill_at=None):
    """A linear model with dropout through run_epochs with every hook, killed after step
    ``kill_at``; (model, EMA copy, epoch records, steps taken)."""
    from plabel_kit.toolkit.training import run_epochs

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Dropout(0.2), torch.nn.Linear(2, 1))
    ema = torch.nn.Linear(2, 1)
    ema.load_state_dict(model[1].state_dict())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    records, steps = [], []

    def loss_of(net, batch, step, epoch):
        x, y = batch
        error = net(x) - y
        return (error ** 2).mean(), {"abs": float(error.abs().mean().detach()), "step": float(step)}

    def after_step(step):
        if step == kill_at:
            raise _Killed
        steps.append(step)
        with torch.no_grad():
            for e, p in zip(ema.parameters(), model[1].parameters()):
                e.mul_(0.5).add_(0.5 * p)

    def optimise(loss):
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    run_epochs(model, _Points(), optimizer, loss_of, epochs=epochs, batch_size=4, poly_power=0.9, seed=3,
               num_workers=0, workdir=workdir, device=torch.device("cpu"), label="T", what="test", log=log,
               loss_takes_step=True, optimiser_step=optimise, after_step=after_step,
               extra_state=(lambda: {"ema": ema.state_dict(), "records": list(records)},
                            lambda state: (ema.load_state_dict(state["ema"]), records.extend(state["records"]))),
               reseed_every_epoch=True, on_epoch=records.append,
               describe=lambda record: f"loss {record['loss']:.4f} (abs {record['abs']:.4f})")
    return model, ema, records, steps


def test_run_epochs_hooks_and_resume_to_identical_state(tmp_path):
    lines = []
    model, ema, records, steps = _train(tmp_path / "whole", 3, log=lines.append)
    assert steps == list(range(9))  # 12 items in batches of 4: 3 steps an epoch
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert records[1]["step"] == pytest.approx(4.0)  # parts are averaged over the epoch's steps
    assert set(records[0]) == {"epoch", "seconds", "loss", "abs", "step"}
    assert lines[-1].startswith("T epoch 3/3: loss ") and "(abs " in lines[-1]
    state = torch.load(tmp_path / "whole" / "latest.pth", weights_only=False)
    assert state["epoch"] == 3 and len(state["records"]) == 3 and "ema" in state  # the extra state, after on_epoch

    with pytest.raises(_Killed):
        _train(tmp_path / "broken", 3, kill_at=4)  # in the second epoch
    lines = []
    resumed, resumed_ema, resumed_records, resumed_steps = _train(tmp_path / "broken", 3, log=lines.append)
    assert lines[0].startswith("resuming test training after epoch 1")
    assert resumed_steps == list(range(3, 9))
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in resumed_records] == \
        [{k: v for k, v in r.items() if k != "seconds"} for r in records]
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), resumed.state_dict().values()))
    assert all(torch.equal(a, b) for a, b in zip(ema.state_dict().values(), resumed_ema.state_dict().values()))


def test_run_epochs_plain_call_keeps_its_log_line(tmp_path):
    from plabel_kit.toolkit.training import run_epochs

    torch.manual_seed(0)
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    lines = []
    run_epochs(model, _Points(), optimizer, lambda net, batch: ((net(batch[0]) - batch[1]) ** 2).mean(), epochs=1,
               batch_size=4, poly_power=0.9, seed=0, num_workers=0, workdir=tmp_path, device=torch.device("cpu"),
               label="P", what="plain", log=lines.append)
    assert len(lines) == 1 and lines[0].startswith("P epoch 1/1: loss ") and "(" not in lines[0]
    assert set(torch.load(tmp_path / "latest.pth", weights_only=False)) == {"model", "optimizer", "epoch"}
    with pytest.raises(ValueError, match="12 images are fewer than one batch of 16"):
        run_epochs(model, _Points(), optimizer, lambda net, batch: 0, epochs=1, batch_size=16, poly_power=0.9,
                   seed=0, num_workers=0, workdir=tmp_path / "x", device=torch.device("cpu"), label="P",
                   what="plain")


def test_check_classes_names_the_checkpoint_and_both_class_lists():
    from plabel_kit.toolkit.checkpoints import check_classes

    check_classes("cam_final.pth", {"classes": ["background", "cat"]}, ("background", "cat"))
    with pytest.raises(ValueError, match=r"cam_final.pth was trained on classes \['background', 'cat'\], the "
                                         r"dataset has \['background', 'dog'\]"):
        check_classes("cam_final.pth", {"classes": ["background", "cat"]}, ["background", "dog"])


def test_multiscale_cam_of_no_class_is_empty_and_of_a_class_peaks_at_one():
    from plabel_kit.toolkit.cam import CamNet
    from plabel_kit.toolkit.inference import multiscale_cam

    torch.manual_seed(0)
    model = CamNet("resnet18_small", 3).eval()
    image = torch.randn(3, 40, 56)
    assert tuple(multiscale_cam(model, image, [], scales=(1.0, 0.5)).shape) == (0, 40, 56)
    cams = multiscale_cam(model, image, [0, 2], scales=(1.0, 0.5))
    assert tuple(cams.shape) == (2, 40, 56) and cams.dtype == torch.float32
    assert float(cams.min()) >= 0 and all(abs(float(c.max()) - 1) < 1e-3 or float(c.max()) == 0 for c in cams)


def test_every_public_toolkit_name_is_documented():
    """datasette-style meta-test: each public function or class of plabel_kit.toolkit appears in
    docs/toolkit.md (the third party's reference)."""
    import ast

    from tests.conftest import REPO

    docs = (REPO / "docs" / "toolkit.md").read_text()
    public = [(path.name, node.name) for path in sorted((REPO / "plabel_kit" / "toolkit").glob("*.py"))
              for node in ast.parse(path.read_text()).body
              if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith("_")]
    assert len(public) > 40
    assert [f"{module}: {name}" for module, name in public if f"`{name}" not in docs and f"{name}(" not in docs] == []
