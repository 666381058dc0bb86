"""The CUDA paths: CAMs, the float32 "same" padding under float16 autocast, sliding-window
prediction and both training stages with float16 mixed precision on a GPU give what the CPU gives
(skipped cleanly without CUDA; the shuffle kernel's CUDA test is in test_shuffle.py)."""

import copy

import numpy as np
import pytest
import timm
import torch
from timm.layers import Conv2dSame

from cam import ShuffleTTA, cams_with_tta, create_cam
from segmix.cli import main
from segmix.models.factory import create_segmenter, load_classifier
from segmix.models.precision import depthwise_convs_in_float32
from segmix.runtime import setup_runtime
from segmix.models.sliding_window import sliding_window_predict

from synthetic import write_csv_dataset

pytestmark = pytest.mark.gpu


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual.double() - expected.double()).norm() / expected.double().norm())


@pytest.mark.parametrize("method", ["cam", "gradcam", "gradcam++", "layercam"])
def test_cams_on_cuda_equal_the_cpu_maps(method):
    torch.manual_seed(0)
    model = timm.create_model("test_efficientnet", num_classes=4).eval()
    images = torch.randn(3, 3, 64, 64)
    layers = None if method == "cam" else ["blocks.2", "conv_head"]
    shuffle = ShuffleTTA(patch_size=16, draws=2)
    on_cpu = cams_with_tta(create_cam(method, model, layers), images, flips=["horizontal"],
                           shuffle=shuffle, generator=torch.Generator().manual_seed(3))
    gpu_model = copy.deepcopy(model).cuda()
    on_gpu = cams_with_tta(create_cam(method, gpu_model, layers), images.cuda(),
                           flips=["horizontal"], shuffle=shuffle,
                           generator=torch.Generator().manual_seed(3))
    assert on_gpu.device.type == "cuda" and torch.isfinite(on_gpu).all()
    # cuDNN convolutions (TF32 allowed) against oneDNN: the same maps up to rounding
    assert relative_error(on_gpu.cpu(), on_cpu) < 1e-3


@pytest.mark.parametrize("size", [(9, 8), (224, 224)])
def test_same_padding_in_float32_under_float16_autocast(size):
    torch.manual_seed(0)
    conv = Conv2dSame(6, 6, 3, stride=2, groups=6).cuda()
    reference = copy.deepcopy(conv)
    depthwise_convs_in_float32(conv)
    x = torch.randn(2, 6, *size, device="cuda").half().requires_grad_()
    x_ref = x.detach().float().requires_grad_()
    with torch.autocast("cuda", dtype=torch.float16):
        out = conv(x)
    expected = reference(x_ref)
    assert out.dtype == torch.float16 and out.shape == expected.shape
    assert relative_error(out.float(), expected) < 1e-3
    grad = torch.randn(out.shape, device="cuda").half()
    out.backward(grad)
    expected.backward(grad.float())
    assert x.grad.dtype == torch.float16 and relative_error(x.grad.float(), x_ref.grad) < 1e-3


def test_sliding_window_prediction_on_cuda_equals_the_cpu():
    torch.manual_seed(0)
    model = create_segmenter("Unet", "resnet18", 3).eval()
    image = np.random.default_rng(0).integers(0, 256, (150, 200, 3), dtype=np.uint8)
    kwargs = dict(window=(64, 64), mean=(0.5,) * 3, std=(0.25,) * 3, overlap=0.25,
                  flips=["horizontal"], probabilities=True)
    mask_cpu, on_cpu = sliding_window_predict(model, image, device="cpu", **kwargs)
    mask_gpu, on_gpu = sliding_window_predict(copy.deepcopy(model).cuda(), image, device="cuda",
                                              **kwargs)
    assert on_gpu.shape == on_cpu.shape == (3, 150, 200)
    assert np.abs(on_gpu.astype(np.float32) - on_cpu.astype(np.float32)).max() < 2e-3  # float16
    assert (mask_gpu == mask_cpu).mean() > 0.999  # ties between near-equal classes may flip


@pytest.mark.parametrize("device", ["auto", "cuda", "cuda:0"])
def test_runtime_picks_an_indexed_cuda_device(device):
    runtime = setup_runtime(device)
    assert runtime.device == torch.device("cuda", 0) and torch.cuda.current_device() == 0


def test_a_cuda_device_the_machine_lacks_is_named():
    missing = f"cuda:{torch.cuda.device_count()}"
    with pytest.raises(ValueError, match=f"{missing}.*{torch.cuda.device_count()} CUDA device"):
        setup_runtime(missing)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_csv_dataset(tmp_path_factory.mktemp("tiles"), per_class=4, size=32)


def data_settings(csv_path, *extra):
    values = ["data.classes=[A, B, C]", f"data.train.path={csv_path}", f"data.val.path={csv_path}",
              "data.image_size=32", *extra]
    return [part for value in values for part in ("--set", value)]


def test_classifier_trains_on_cuda_with_float16_mixed_precision(dataset, tmp_path, capsys):
    out = tmp_path / "classifier"
    classifier = ["model.name=test_efficientnet", "model.weights=null", "train.epochs=2",
                  "train.batch_size=4", "train.num_workers=0", "train.device=cuda",
                  "augment.curriculum.patch_sizes=[16, 8]"]
    assert main(["train-cls", "--output-dir", str(out), *data_settings(dataset, *classifier)]) == 0
    assert "on cuda:0 (float16" in capsys.readouterr().out
    model, _ = load_classifier(out / "classifier.pt")
    assert all(torch.isfinite(v).all() for v in model.state_dict().values())


def test_segmenter_trains_on_cuda_with_float16_mixed_precision(dataset, tmp_path, capsys):
    out = tmp_path / "segmenter"
    seg = ["targets=ground_truth", "segmenter.encoder=resnet18", "segmenter.encoder_weights=null",
           "seg_train.epochs=2", "seg_train.batch_size=4", "seg_train.num_workers=0",
           "seg_train.device=cuda", "seg_augment.curriculum.patch_sizes=[16, 8]"]
    assert main(["train-seg", "--output-dir", str(out), *data_settings(dataset, *seg)]) == 0
    assert "on cuda:0 (float16" in capsys.readouterr().out
    assert (out / "segmenter.pt").is_file()
