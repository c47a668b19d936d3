"""``python -m sw infer``: run a container's integer program (docs/INFERENCE.md) on images.

Prints one line per image (index, predicted class, label when known) and the integer accuracy
beside the float accuracy of the same decoded weights; ``--report`` writes them as JSON and
``--dump`` every operation's output, the figures an RTL simulation is compared with.
"""

import json
import time
import zipfile
from pathlib import Path

import numpy as np

from sw.cli.files import read_file, read_with_progress


def add_arguments(parser):
    parser.add_argument("input", metavar="MODEL.sbit")
    parser.add_argument("--images", metavar="FILE.npz",
                        help="images to classify: 'images' (count x C x H x W, the model's float "
                             "input) and optionally 'labels'; default: the 450 held-out digits")
    parser.add_argument("--limit", type=int, metavar="N", help="classify only the first N images")
    parser.add_argument("--report", metavar="FILE.json", help="write accuracies and predictions")
    parser.add_argument("--dump", metavar="FILE.npz",
                        help="write every operation's integer output (op0, op1, ...) and the "
                             "quantized input")
    parser.add_argument("--quiet", action="store_true", help="no line per image")


def load_images(path) -> tuple:
    """``(images, labels or None)`` from an .npz with ``images`` and optionally ``labels``."""
    from sw.io.tensors import checked_input
    path = checked_input(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            if "images" not in archive.files:
                raise ValueError(f"{path}: no 'images' array (it holds "
                                 f"{', '.join(archive.files) or 'nothing'})")
            images = archive["images"]
            labels = archive["labels"] if "labels" in archive.files else None
    except (zipfile.BadZipFile, EOFError, OSError) as error:
        raise ValueError(f"{path}: not a readable .npz file ({error})") from None
    if images.dtype.kind not in "fiub":
        raise ValueError(f"{path}: images of dtype {images.dtype} are not numbers")
    if labels is not None and (labels.shape != (len(images),) or labels.dtype.kind not in "iu"):
        raise ValueError(f"{path}: 'labels' must be one integer per image")
    return images.astype(np.float64), labels


def run(args) -> int:
    from sw.network.engine import BoundNetwork, infer, infer_float, quantize_images

    container = read_with_progress(read_file(args.input), "infer")
    if container.program is None:
        raise ValueError(f"{args.input} holds no program (docs/INFERENCE.md): write it with "
                         f"'python -m sw train' or 'compress --eval-model'")
    network = BoundNetwork.from_container(container)
    program = network.program
    if args.images:
        images, labels = load_images(args.images)
        source = args.images
    else:
        from sw.data import digits
        _, _, x_test, y_test = digits()
        images, labels, source = x_test.numpy(), y_test.numpy(), "the 450 held-out digits"
    if args.limit is not None:
        if args.limit < 1:
            raise ValueError(f"--limit must be positive, not {args.limit}")
        images = images[:args.limit]
        labels = labels[:args.limit] if labels is not None else None
    if images.ndim < 2 or images[0].size != program.input_size:
        raise ValueError(f"images of shape {images.shape[1:]} do not fit the program's input "
                         f"{program.input_shape}")
    images = images.reshape(len(images), *program.input_shape)
    started = time.perf_counter()
    result = infer(network, images, dump=bool(args.dump))
    seconds = time.perf_counter() - started
    floats = infer_float(network, images).argmax(axis=1)
    if not args.quiet:
        for index, predicted in enumerate(result.predictions):
            label = f" label {labels[index]}" if labels is not None else ""
            print(f"image {index}: class {predicted}{label}")
    report = {"container": args.input, "images": source, "count": len(images),
              "operations": len(program.ops),
              "multiply_accumulates_per_image": program.multiply_accumulates,
              "memory_words": program.memory_words,
              "program_bytes": container.program_section.size,
              "predictions": result.predictions.tolist(), "seconds": seconds}
    if labels is not None:
        accuracy_int = 100.0 * float((result.predictions == labels).mean())
        accuracy_float = 100.0 * float((floats == labels).mean())
        report.update(accuracy_int=accuracy_int, accuracy_float=accuracy_float,
                      labels=labels.tolist())
        print(f"{args.input}: integer accuracy {accuracy_int:.2f} % on {len(images)} images "
              f"({source}); float on the same weights {accuracy_float:.2f} %; "
              f"{int((result.predictions == floats).sum())} of {len(images)} predictions agree")
    else:
        print(f"{args.input}: {len(images)} images classified ({source}); "
              f"{int((result.predictions == floats).sum())} agree with float on the same weights")
    if args.report:
        Path(args.report).parent.mkdir(parents=True, exist_ok=True)
        Path(args.report).write_text(json.dumps(report, indent=1) + "\n")
    if args.dump:
        arrays = {"input": quantize_images(program, images)}
        arrays.update({f"op{i}": layer for i, layer in enumerate(result.layers)})
        np.savez(args.dump, **arrays)
    return 0
