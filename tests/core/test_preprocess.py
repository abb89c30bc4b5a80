import numpy as np
import pytest

from cxr.decode.image import decode_pixels
from cxr.preprocess import IMAGENET_MEAN, PreprocessConfig, letterbox, preprocess, preprocess_batch


def test_output_shape_dtype_and_normalisation():
    cfg = PreprocessConfig(size=64)
    x, rec = preprocess(np.full((128, 128), 0.5, np.float32), cfg)
    assert x.shape == (3, 64, 64) and x.dtype == np.float32
    for c in range(3):
        np.testing.assert_allclose(x[c], (0.5 - cfg.mean[c]) / cfg.std[c], rtol=1e-6)
    assert rec.scale == 0.5 and rec.pad_x == rec.pad_y == 0


def test_letterbox_pads_with_black_and_centres():
    canvas, rec = letterbox(np.ones((100, 50), np.float32), 64)
    assert rec.resized_shape == (64, 32) and rec.pad_x == 16
    assert canvas[:, :16].max() == 0 and canvas[:, 48:].max() == 0
    np.testing.assert_allclose(canvas[:, 16:48], 1.0, atol=1e-6)


def test_box_in_original_lands_on_the_same_content_in_the_letterbox():
    img = np.zeros((400, 300), np.float32)
    img[100:200, 50:150] = 1.0  # a bright square, xyxy (50, 100, 150, 200)
    canvas, rec = letterbox(img, 128)
    x1, y1, x2, y2 = rec.to_letterbox([[50, 100, 150, 200]])[0]
    # antialiasing blurs the edge by a pixel; the interior is the square
    inside = canvas[int(np.ceil(y1)) + 1 : int(y2) - 1, int(np.ceil(x1)) + 1 : int(x2) - 1]
    assert inside.min() > 0.9
    ys, xs = np.nonzero(canvas > 0.5)
    assert abs(xs.min() - x1) <= 1 and abs(xs.max() + 1 - x2) <= 1
    assert abs(ys.min() - y1) <= 1 and abs(ys.max() + 1 - y2) <= 1


def test_spacing_carried_into_the_record():
    img = decode_pixels(np.zeros((64, 64), np.uint8), spacing_mm=(0.143, 0.143))
    _, rec = preprocess(img, PreprocessConfig(size=32))
    assert rec.spacing_mm == (0.143, 0.143)


def test_single_channel_config():
    cfg = PreprocessConfig(size=32, channels=1, mean=(0.5,), std=(0.25,))
    x, _ = preprocess(np.ones((32, 32), np.float32), cfg)
    assert x.shape == (1, 32, 32)
    np.testing.assert_allclose(x, 2.0)


def test_batch_and_empty_batch():
    cfg = PreprocessConfig(size=32)
    batch, recs = preprocess_batch([np.zeros((50, 40), np.float32), np.ones((20, 90), np.float32)], cfg)
    assert batch.shape == (2, 3, 32, 32) and len(recs) == 2
    empty, recs = preprocess_batch([], cfg)
    assert empty.shape == (0, 3, 32, 32) and recs == []



def test_config_round_trip_and_validation():
    cfg = PreprocessConfig(size=256)
    assert PreprocessConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.mean == IMAGENET_MEAN
    with pytest.raises(ValueError, match="need 1 values"):
        PreprocessConfig(channels=1)
    with pytest.raises(ValueError, match=">= 32"):
        PreprocessConfig(size=8)
