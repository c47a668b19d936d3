"""The networks: standard ResNet shapes, BatchNorm folding, and quantizing them whole."""

import pytest
import torch

from sw.codec.container import read_container, write_container
from sw.quant import qat
from sw.quant.models import MODELS, build_model, fold_batchnorm, weight_count


def randomise_batchnorm(model, seed=0):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                n = module.num_features
                module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(n, generator=generator) * 0.1)
                module.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)


@pytest.mark.parametrize("name, parameters", [("resnet18", 11_689_512), ("resnet50", 25_557_032)])
def test_standard_parameter_counts(name, parameters):
    """The same counts as torchvision's resnet18 / resnet50 (and the papers)."""
    assert sum(p.numel() for p in build_model(name).parameters()) == parameters


@pytest.mark.parametrize("name", ["digits", "digits-tiny", "resnet18"])
def test_fold_batchnorm_computes_the_same(name):
    model = build_model(name)
    randomise_batchnorm(model)
    model.eval()
    size = 8 if name.startswith("digits") else 64
    x = torch.randn(2, MODELS[name][1][0], size, size)
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    with torch.no_grad():
        reference = model(x)
        assert torch.allclose(folded(x), reference, atol=1e-4 * reference.abs().max().item())


def test_digits_model_has_many_weights_per_channel():
    folded = fold_batchnorm(build_model("digits"))
    biases = sum(m.bias.numel() for m in folded.modules() if hasattr(m, "bias")
                 and m.bias is not None)
    assert 200_000 <= weight_count(folded) <= 500_000 and weight_count(folded) > 300 * biases


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_imagenet_resnets_quantize_and_round_trip(name):
    """Random weights and inputs: quantize, export, decode, load, same outputs bit for bit."""
    model = build_model(name)
    randomise_batchnorm(model)
    model.eval()
    qmodel = qat.quantize_model(fold_batchnorm(model), bits=2.0)
    qat.freeze_levels(qmodel)
    qmodel.eval()
    x = torch.randn(1, 3, 64, 64)
    data = write_container(qat.export_tensors(qmodel))
    container = read_container(data)
    plain = fold_batchnorm(build_model(name))
    plain.load_state_dict(qat.state_dict_from_container(container))
    plain.eval()
    with torch.no_grad():
        assert torch.equal(plain(x), qmodel(x))
    assert container.weight_count - sum(m.bias.numel() for _, m in
                                        qat.quantized_modules(qmodel)) == weight_count(qmodel)
    assert all(t.levels in (3, 5) for t in container.tensors if t.name.endswith("weight"))
