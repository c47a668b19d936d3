"""``python -m sw train``: float baseline, entropy-constrained QAT, export, and evaluation.

The steps (docs/QUANT.md has the recipe and the measured results):

1. train the float model with BatchNorm (or load it with ``--baseline``) and measure its
   test accuracy;
2. fold every BatchNorm into its convolution (weights and a bias), replace each convolution
   and linear layer by its quantized version (:mod:`sw.quant.qat`) and train on: the loss is the
   task loss plus ``multiplier x`` the soft coded rate, the multiplier adapting until the coded
   rate of the whole file meets ``--target-bpw``; the last quarter of the epochs runs with the
   level counts fixed (until then they follow the learned steps);
3. write the container, read it back, load the decoded weights into a plain (unquantized) model
   and measure the accuracy of *that*: the figure covers the whole chain.

Runs under ``torchrun --nproc_per_node=N`` with DistributedDataParallel (gloo on CPU, nccl on
GPUs): every rank trains on its share of each batch, rank 0 writes and reports.
"""

import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from sw.codec.container import CodedTensor, program_section_size, read_container, write_container
from sw.data import digits, random_images, shift_augment
from sw.network.lower import lower, order_tensors, program_word_count, resnet_layers
from sw.params import CodecParams, add_params_arguments, params_from
from sw.quant import qat
from sw.quant.models import MODELS, build_model, fold_batchnorm, input_shape, weight_count

__all__ = ["add_arguments", "run", "train_float", "train_qat", "evaluate", "export",
           "file_rates", "Dist"]


def add_arguments(parser) -> None:
    parser.add_argument("--model", default="digits", choices=sorted(MODELS),
                        help="network (default %(default)s)")
    parser.add_argument("--target-bpw", type=float, default=0.8, metavar="B",
                        help="bits per weight of the whole container file (default %(default)s)")
    parser.add_argument("-o", "--out", metavar="FILE",
                        help="container to write (default build/MODEL.sbit)")
    parser.add_argument("--report", metavar="FILE.json", help="write the figures as JSON")
    parser.add_argument("--baseline", metavar="FILE",
                        help="load the float model (state dict with BatchNorm) instead of "
                             "training it")
    parser.add_argument("--save-baseline", metavar="FILE", help="save the float model here")
    parser.add_argument("--epochs", type=int, default=30, help="float epochs (default %(default)s)")
    parser.add_argument("--qat-epochs", type=int, default=40,
                        help="quantization-aware epochs (default %(default)s)")
    parser.add_argument("--batch-size", type=int, default=64,
                        help="global batch size, split over ranks (default %(default)s)")
    parser.add_argument("--lr", type=float, default=3e-3, help="float learning rate")
    parser.add_argument("--qat-lr", type=float, default=1e-3, help="QAT learning rate")
    parser.add_argument("--init-bits", type=float, default=4.0,
                        help="initial bit-width of every layer: its least-MSE step for "
                             "2 round((2**B - 1) / 2) + 1 levels (17 for 4); the level counts "
                             "then follow the learned steps (default %(default)s)")
    parser.add_argument("--per-channel", action="store_true",
                        help="one step per output channel instead of one per layer")
    parser.add_argument("--rate-lr", type=float, default=0.1,
                        help="adaptation speed of the rate multiplier (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="torch threads per process (default: 1 for the digits models, "
                             "whose small layers run faster on one thread than on two that "
                             "contend with anything else on the machine; torch's default "
                             "otherwise)")
    parser.add_argument("--image-size", type=int, default=None,
                        help="input size for random-data runs of resnet18/50 (default 224)")
    parser.add_argument("--random-samples", type=int, default=8,
                        help="random images per split for resnet18/50 without --data")
    parser.add_argument("--data", metavar="DIR",
                        help="ImageNet root with train/ and val/ (needs torchvision; GPU recipe "
                             "in docs/QUANT.md)")
    parser.add_argument("--workers", type=int, default=8, help="data loader workers (ImageNet)")
    add_params_arguments(parser)


# -- distributed --------------------------------------------------------------------------------

class Dist:
    """Rank, world size and helpers; a world of one when not started by torchrun."""

    def __init__(self, from_environment: bool = True):
        self.world = int(os.environ.get("WORLD_SIZE", "1")) if from_environment else 1
        self.rank = int(os.environ.get("RANK", "0")) if from_environment else 0
        self.active = self.world > 1
        if self.active and not torch.distributed.is_initialized():
            backend = "nccl" if torch.cuda.is_available() else "gloo"
            torch.distributed.init_process_group(backend)
        self.device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
                                   if torch.cuda.is_available() else "cpu")
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def wrap(self, model: nn.Module) -> nn.Module:
        if not self.active:
            return model
        return nn.parallel.DistributedDataParallel(
            model, device_ids=[self.device] if self.device.type == "cuda" else None)

    def barrier(self) -> None:
        if self.active:
            torch.distributed.barrier()

    def mean(self, value: float) -> float:
        if not self.active:
            return value
        tensor = torch.tensor([float(value)], dtype=torch.float64)
        torch.distributed.all_reduce(tensor)
        return float(tensor) / self.world

    def close(self) -> None:
        if self.active and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


# -- data ----------------------------------------------------------------------------------------

class TensorData:
    """A labelled set held in memory; each epoch a seeded permutation shared by all ranks."""

    def __init__(self, x, y, augment=False):
        self.x, self.y, self.augment = x, y, augment

    def batches(self, batch_size, epoch, seed, dist: Dist):
        generator = torch.Generator().manual_seed(seed * 100003 + epoch)
        order = torch.randperm(len(self.x), generator=generator)
        local = max(1, batch_size // dist.world)
        count = len(order) // (local * dist.world)  # every rank takes the same number of steps
        for step in range(max(count, 1)):
            chunk = order[step * local * dist.world:(step + 1) * local * dist.world]
            index = chunk[dist.rank::dist.world]
            x = self.x[index]
            if self.augment:
                x = shift_augment(x, generator)
            yield x, self.y[index]

    def __len__(self):
        return len(self.x)


class ImageFolderData:
    """ImageNet through torchvision (only on the machines of the GPU recipe)."""

    def __init__(self, root, train, workers):
        import torchvision.datasets as datasets
        import torchvision.transforms as T
        normalize = T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
        transform = T.Compose([T.RandomResizedCrop(224), T.RandomHorizontalFlip(), T.ToTensor(),
                               normalize]) if train else \
            T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), normalize])
        self.set = datasets.ImageFolder(os.path.join(root, "train" if train else "val"), transform)
        self.train, self.workers = train, workers

    def batches(self, batch_size, epoch, seed, dist: Dist):
        sampler = torch.utils.data.distributed.DistributedSampler(
            self.set, dist.world, dist.rank, shuffle=self.train, seed=seed) \
            if dist.active else None
        if sampler is not None:
            sampler.set_epoch(epoch)
        loader = torch.utils.data.DataLoader(
            self.set, batch_size=max(1, batch_size // dist.world), sampler=sampler,
            shuffle=self.train and sampler is None, num_workers=self.workers, pin_memory=True,
            drop_last=self.train)
        yield from loader

    def __len__(self):
        return len(self.set)


def load_data(args):
    """``(train, test)`` data sets for ``args.model``."""
    if args.model.startswith("digits"):
        x_train, y_train, x_test, y_test = digits()
        return TensorData(x_train, y_train, augment=True), TensorData(x_test, y_test)
    if args.model == "mnist1d":
        from sw.data import mnist1d
        x_train, y_train, x_test, y_test = mnist1d()
        return TensorData(x_train, y_train), TensorData(x_test, y_test)
    if args.data:
        return (ImageFolderData(args.data, True, args.workers),
                ImageFolderData(args.data, False, args.workers))
    channels, size, _ = input_shape(args.model)
    size = args.image_size or size
    classes = MODELS[args.model][2]
    return (TensorData(*random_images(args.random_samples, channels, size, classes, args.seed)),
            TensorData(*random_images(args.random_samples, channels, size, classes,
                                      args.seed + 1)))


# -- training ------------------------------------------------------------------------------------

def steps_per_epoch(data, batch_size, dist) -> int:
    if isinstance(data, TensorData):
        local = max(1, batch_size // dist.world)
        return max(1, len(data) // (local * dist.world))
    return len(data) // batch_size


@torch.no_grad()
def evaluate(model: nn.Module, data, dist: Dist = None, batch_size: int = 500) -> float:
    """Top-1 accuracy in percent over the whole of ``data`` (on this process)."""
    dist = dist or Dist(False)
    model.eval()
    correct = total = 0
    if isinstance(data, TensorData):
        for start in range(0, len(data), batch_size):
            x = data.x[start:start + batch_size].to(dist.device)
            y = data.y[start:start + batch_size].to(dist.device)
            correct += int((model(x).argmax(1) == y).sum())
            total += len(y)
    else:
        for x, y in data.batches(batch_size, 0, 0, Dist(False)):
            correct += int((model(x.to(dist.device)).argmax(1) == y.to(dist.device)).sum())
            total += len(y)
    return 100.0 * correct / max(total, 1)


def train_float(model, data, epochs, lr, batch_size, seed, dist: Dist, progress=True):
    """Train the float model: AdamW, one-cycle learning rate, cross-entropy."""
    model.to(dist.device)
    wrapped = dist.wrap(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=5e-4)
    steps = steps_per_epoch(data, batch_size, dist)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=epochs * steps)
    bar = tqdm(range(epochs), desc="float", unit="epoch", disable=not (progress and dist.main),
               file=sys.stderr, leave=False)
    for epoch in bar:
        wrapped.train()
        for step, (x, y) in enumerate(data.batches(batch_size, epoch, seed, dist)):
            if step >= steps:
                break
            loss = nn.functional.cross_entropy(wrapped(x.to(dist.device)), y.to(dist.device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    return model


def train_qat(qmodel, data, target_rate, epochs, lr, batch_size, seed, dist: Dist,
              rate_lr=0.1, overhead_bits=None, progress=True, log=None):
    """Entropy-constrained QAT of a quantized model (:func:`sw.quant.qat.quantize_model`).

    Parameters
    ----------
    qmodel : nn.Module
    target_rate : float
        Bits per weight of the whole container.
    overhead_bits : callable, optional
        ``overhead_bits(qmodel) -> float``: bits of the file other than the weights' entropy
        (headers, tables, biases). Measured each epoch by a real export when not given.
    log : list, optional
        Receives one dict per epoch (rate, multiplier, loss).

    Returns the model, with level counts frozen for the last quarter of the epochs.
    """
    qmodel.to(dist.device)
    weights = weight_count(qmodel)
    overhead_bits = overhead_bits or measured_overhead_bits
    # Weights and steps: the steps set each layer's precision, and its level count follows them
    # (sw.quant.qat.ZeroPointQuantizer.cover).
    optimizer = torch.optim.Adam(qmodel.parameters(), lr=lr)
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    steps = steps_per_epoch(data, batch_size, dist)
    # The last quarter (at least one epoch when there are two) trains at the exported levels.
    freeze_epoch = min(epochs - 1, max(1, int(round(0.75 * epochs)))) if epochs > 1 else epochs
    constraint = None
    start_rate = qat.hard_bits(qmodel) / weights
    ramp_epochs = max(1, epochs // 2)
    wrapped = dist.wrap(qmodel)
    bar = tqdm(range(epochs), desc="QAT", unit="epoch", disable=not (progress and dist.main),
               file=sys.stderr, leave=False)
    total_steps, done = epochs * steps, 0
    for epoch in bar:
        if epoch == freeze_epoch:
            freeze_covering(qmodel)
        # The target is for the whole file: take off what is not the weights' entropy. Every
        # rank measures the same (identical weights), so the budgets agree without talking.
        budget = (target_rate * weights - overhead_bits(qmodel)) / weights
        if budget <= 0:
            raise ValueError(f"target {target_rate} bits/weight is below the file's fixed "
                             f"overhead ({overhead_bits(qmodel) / weights:.3f} bits/weight)")
        budget *= 0.99  # a margin for the coder's last fraction of a percent
        if constraint is None:
            constraint = qat.RateConstraint(budget, rate_lr)
        # The target falls geometrically from the starting rate to the budget over the first
        # half: a multiplier chasing a far target at once winds up and overshoots far below it
        # (weights once at zero stay there), a gliding target keeps it small and on track.
        wrapped.train()
        for step, (x, y) in enumerate(data.batches(batch_size, epoch, seed, dist)):
            if step >= steps:
                break
            # cosine decay of every group, down to 5 % at the end
            factor = 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * done / total_steps))
            glide = min(1.0, done / (ramp_epochs * steps))
            constraint.target = budget if start_rate <= budget else \
                math.exp(math.log(start_rate) + glide * (math.log(budget) - math.log(start_rate)))
            for group, base in zip(optimizer.param_groups, base_lrs):
                group["lr"] = base * factor
            task = nn.functional.cross_entropy(wrapped(x.to(dist.device)), y.to(dist.device))
            estimate = qat.soft_bits(qmodel) / weights
            loss = task + constraint.penalty(estimate)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            rate = qat.hard_bits(qmodel) / weights
            constraint.update(rate)
            done += 1
        entry = {"epoch": epoch, "task_loss": task.item(), "rate": rate,
                 "budget": constraint.target, "multiplier": constraint.multiplier}
        if log is not None:
            log.append(entry)
        bar.set_postfix(loss=f"{task.item():.3f}", bpw=f"{rate:.3f}",
                        budget=f"{constraint.target:.3f}", lam=f"{constraint.multiplier:.2f}")
    if epochs <= 1:
        freeze_covering(qmodel)
    return qmodel


def freeze_covering(qmodel) -> None:
    """Fix the level counts that cover the weights as they are now: the last optimiser step
    came after the last forward set them, and may have carried a weight past the outer level."""
    for _, module in qat.quantized_modules(qmodel):
        module.quantizer.cover(module.weight)
    qat.freeze_levels(qmodel)


def parameters_agree(model: nn.Module, dist: Dist) -> bool:
    """Whether every rank holds bit-identical parameters and buffers (always, on one process)."""
    if not dist.active:
        return True
    flat = torch.cat([t.detach().double().reshape(-1).cpu() for t in model.state_dict().values()])
    low, high = flat.clone(), flat.clone()
    torch.distributed.all_reduce(low, op=torch.distributed.ReduceOp.MIN)
    torch.distributed.all_reduce(high, op=torch.distributed.ReduceOp.MAX)
    return bool(torch.equal(low, high))


def measured_overhead_bits(qmodel) -> float:
    """File bits minus the weights' exact entropy: header, tables, scales, biases, program,
    coder slack."""
    tensors = qat.export_tensors(qmodel)
    data = write_container(tensors)
    layers = program_layers(qmodel)
    program = 0 if layers is None else program_section_size(
        program_word_count(layers, {t.name: t for t in tensors}))
    return 8 * (len(data) + program) - qat.hard_bits(qmodel)


# -- export and measurement ------------------------------------------------------------------------

def program_layers(model):
    """The layers :func:`sw.network.lower.lower` takes for ``model`` (a ResNet of
    sw.quant.models, quantized or plain), or ``None`` when it has a part integer inference
    lacks (the ImageNet stem's max pool)."""
    try:
        return resnet_layers(model)
    except ValueError:
        return None


def export(qmodel, path, params: CodecParams = CodecParams(), images=None) -> bytes:
    """Write the container of ``qmodel`` to ``path``; return its bytes.

    With calibration ``images`` (float NCHW) the container carries the integer program
    (docs/INFERENCE.md) when the network lowers to one, its coded sections in program order.
    """
    qmodel = qmodel.cpu()
    tensors = qat.export_tensors(qmodel)
    layers = program_layers(qmodel) if images is not None else None
    program = None
    if layers is not None:
        lowered = lower(layers, {t.name: t for t in tensors}, np.asarray(images))
        tensors, program = order_tensors(tensors, lowered.tensor_order), lowered.program
    data = write_container(tensors, params, program=program)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


def integer_accuracy(container, data) -> float:
    """Top-1 percent of the container's integer program (sw.network.engine) on a labelled set."""
    from sw.network.engine import BoundNetwork, infer
    result = infer(BoundNetwork.from_container(container), data.x.numpy())
    return 100.0 * float((result.predictions == data.y.numpy()).mean())


def is_weight_section(info, tensor) -> bool:
    """A coded convolution or linear weight (not a bias, not a raw tensor)."""
    return isinstance(tensor, CodedTensor) and tensor.symbols.ndim >= 2


def file_rates(container) -> dict:
    """Bits per weight of a read container, measured from its bytes.

    ``bits_per_weight``: every byte of the file x 8 / number of weights (the coded tensors of
    two or more dimensions). ``bits_per_weight_weights_only``: the file header plus the sections
    of those weight tensors, x 8 / the same number; biases and raw tensors left out.
    """
    weight_sections = [(info, t) for info, t in zip(container.sections, container.tensors)
                       if is_weight_section(info, t)]
    weights = sum(t.symbols.size for _, t in weight_sections)
    weight_bytes = container.file_header_bytes + sum(info.size for info, _ in weight_sections)
    return {
        "bytes": container.size,
        "weights": weights,
        "bits_per_weight": 8 * container.size / weights,
        "bits_per_weight_weights_only": 8 * weight_bytes / weights,
    }


def plain_model(name: str) -> nn.Module:
    """The deployed network: BatchNorm folded, plain convolutions with biases, no quantizers."""
    return fold_batchnorm(build_model(name))


def load_decoded(name: str, data: bytes):
    """``(model, container)``: the plain model holding the weights decoded from ``data``."""
    container = read_container(data)
    model = plain_model(name)
    model.load_state_dict(qat.state_dict_from_container(container))
    return model, container


def layer_table(qmodel) -> list:
    rows = []
    for name, module in qat.quantized_modules(qmodel):
        n = module.weight.numel()
        rows.append({"name": name, "weights": n, "levels": module.quantizer.levels(),
                     "step": float(module.quantizer.positive_step().detach().mean()),
                     "entropy_bits_per_weight": module.quantizer.hard_bits(module.weight) / n,
                     "zero_fraction": float((module.quantizer.integers(module.weight) == 0)
                                            .float().mean())})
    return rows


def run(args) -> int:
    if args.target_bpw <= 0:
        raise ValueError(f"--target-bpw must be positive, not {args.target_bpw}")
    if args.epochs < 0 or args.qat_epochs < 1:
        raise ValueError("--epochs must be >= 0 and --qat-epochs >= 1")
    if args.baseline and not Path(args.baseline).is_file():
        raise FileNotFoundError(2, "no such file", args.baseline)
    params = params_from(args)
    threads = args.threads or (1 if args.model.startswith("digits") else None)
    if threads:
        if threads < 1:
            raise ValueError(f"--threads must be positive, not {threads}")
        torch.set_num_threads(threads)
    dist = Dist()
    out = Path(args.out or f"build/{args.model}.sbit")
    try:
        torch.manual_seed(args.seed)
        started = time.perf_counter()
        train_set, test_set = load_data(args)
        model = build_model(args.model, args.seed)
        # Refuse an impossible target before spending the training time on it.
        probe = qat.quantize_model(fold_batchnorm(model), args.per_channel, args.init_bits)
        fixed = (measured_overhead_bits(probe) - sum(
            qat.TABLE_BITS_PER_LEVEL * m.quantizer.levels()
            for _, m in qat.quantized_modules(probe))) / weight_count(probe)
        if fixed >= args.target_bpw:
            raise ValueError(f"target {args.target_bpw} bits/weight is below the fixed overhead "
                             f"of {args.model}'s file ({fixed:.3f} bits/weight)")
        del probe
        if args.baseline:
            model.load_state_dict(torch.load(args.baseline, map_location="cpu", weights_only=True))
            model.to(dist.device)
        else:
            train_float(model, train_set, args.epochs, args.lr, args.batch_size, args.seed, dist)
        if args.save_baseline and dist.main:
            Path(args.save_baseline).parent.mkdir(parents=True, exist_ok=True)
            torch.save(model.cpu().state_dict(), args.save_baseline)
            model.to(dist.device)
        float_accuracy = evaluate(model, test_set, dist)
        float_seconds = time.perf_counter() - started
        if dist.main:
            print(f"float baseline: {float_accuracy:.2f} % top-1 on {len(test_set)} test images "
                  f"({weight_count(model)} weights)")

        qmodel = qat.quantize_model(fold_batchnorm(model.cpu()), args.per_channel,
                                      args.init_bits)
        log = []
        train_qat(qmodel, train_set, args.target_bpw, args.qat_epochs, args.qat_lr,
                  args.batch_size, args.seed + 1, dist, args.rate_lr, log=log)
        qat_accuracy = evaluate(qmodel, test_set, dist)
        agree = parameters_agree(qmodel, dist)
        seconds = time.perf_counter() - started
        if dist.main:
            # calibrate the program's activation scales on the training images (in memory)
            calibration = train_set.x.numpy() if isinstance(train_set, TensorData) and \
                args.model.startswith("digits") else None
            data = export(qmodel.cpu(), out, params, calibration)
            decoded, container = load_decoded(args.model, out.read_bytes())
            accuracy = evaluate(decoded.to(dist.device), test_set, dist)
            accuracy_int = integer_accuracy(container, test_set) \
                if container.program is not None else None
            rates = file_rates(container)
            print_layers(layer_table(qmodel))
            print(f"QAT model: {qat_accuracy:.2f} %; decoded from {out}: {accuracy:.2f} % top-1 "
                  f"(float {float_accuracy:.2f} %, drop {float_accuracy - accuracy:.2f} points)")
            if accuracy_int is None:
                print(f"no integer program: {args.model} has operations docs/INFERENCE.md "
                      f"does not specify")
            if accuracy_int is not None:
                program = container.program
                print(f"integer program ({len(program.ops)} operations, "
                      f"{program.multiply_accumulates} multiply-accumulates per image, "
                      f"{container.program_section.size} bytes): {accuracy_int:.2f} % top-1 "
                      f"(float on the same weights {accuracy:.2f} %)")
            print(f"{out}: {len(data)} bytes, {rates['weights']} weights: "
                  f"{rates['bits_per_weight']:.4f} bits/weight whole model, "
                  f"{rates['bits_per_weight_weights_only']:.4f} weights only "
                  f"(target {args.target_bpw}); {seconds:.0f} s "
                  f"({float_seconds:.0f} s float) on {dist.world} process(es)")
            if args.report:
                report = {"model": args.model, "target_bpw": args.target_bpw,
                          "float_accuracy": float_accuracy, "accuracy": accuracy,
                          "accuracy_float": accuracy, "accuracy_int": accuracy_int,
                          "program_bytes": container.program_section.size
                          if container.program_section else 0,
                          "qat_accuracy": qat_accuracy, **rates,
                          "seconds": seconds, "float_seconds": float_seconds,
                          "processes": dist.world, "ranks_agree": agree,
                          "per_channel": args.per_channel,
                          "layers": layer_table(qmodel), "log": log, "container": str(out)}
                Path(args.report).parent.mkdir(parents=True, exist_ok=True)
                Path(args.report).write_text(json.dumps(report, indent=1) + "\n")
        dist.barrier()
    finally:
        dist.close()
    return 0




def print_layers(rows) -> None:
    print(f"{'layer':<16} {'weights':>8} {'levels':>6} {'step':>10} {'bits/w':>7} {'zeros':>6}")
    for row in rows:
        print(f"{row['name']:<16} {row['weights']:>8} {row['levels']:>6} {row['step']:>10.4g} "
              f"{row['entropy_bits_per_weight']:>7.3f} {100 * row['zero_fraction']:>5.1f}%")
