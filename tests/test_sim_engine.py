"""The engine's Verilog (Verilator, else Icarus) on the two digits models, against
sw.network.engine."""

import pytest

from sim.engine import main, run_engine_sim


def digits_test_images(count):
    from sw.data import digits
    return digits()[2].numpy()[:count]


@pytest.mark.slow
def test_board_mlp_every_activation_and_prediction():
    from sw.quant.default_model import default_container
    _, data = default_container()
    run, stimulus = run_engine_sim(data, digits_test_images(4), lanes=2, stall=0.25)
    assert run.problems(len(stimulus["expect"])) == []
    assert run.images_done == 4 and len(run.cycles) == 4


@pytest.mark.slow
@pytest.mark.parametrize("columns", [1, 16])
def test_digits_resnet_every_layer(columns):
    """The default ResNet's shape (11 operations, 3 M products), its weights quantized as QAT
    exports them and its program calibrated on the training digits, one image end to end; at
    16 columns (the ULX3S's engine) every layer goes in groups of whole rows: two of the 8-wide
    ones, four of the 4-wide, and the 2-wide ones with rows missing."""
    import torch

    from hw.engine import engine_cycles
    from sw.codec.container import write_container
    from sw.data import digits
    from sw.network.lower import lower, order_tensors, resnet_layers
    from sw.quant import qat
    from sw.quant.models import build_model, fold_batchnorm

    torch.manual_seed(0)
    qmodel = qat.quantize_model(fold_batchnorm(build_model("digits")), bits=2.0)
    tensors = qat.export_tensors(qmodel)
    lowered = lower(resnet_layers(qmodel), {t.name: t for t in tensors},
                    digits()[0].numpy()[:256])
    data = write_container(order_tensors(tensors, lowered.tensor_order),
                           program=lowered.program)
    run, stimulus = run_engine_sim(data, digits_test_images(1), lanes=4,
                                   options={"columns": columns})
    assert run.problems(len(stimulus["expect"])) == []
    assert run.cycles == [engine_cycles(lowered.program, columns)]
    # every operation wrote its whole output: pixels + each layer's values
    assert run.writes == 64 + sum(op.output_size for op in lowered.program.ops)


@pytest.mark.parametrize("args, message", [
    (["missing.sbit"], "no such file"),
    (["CONTAINER", "--images", "0"], "--images must be in 1..450"),
    (["CONTAINER", "--stall", "1.5"], "--stall must be in [0, 1)"),
])
def test_errors_are_one_line(tmp_path, capsys, args, message):
    container = tmp_path / "c.sbit"
    container.write_bytes(b"SBIT")
    args = [str(container) if a == "CONTAINER" else str(tmp_path / a) if a.endswith(".sbit")
            else a for a in args]
    assert main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_unsound_container_is_refused(tmp_path, capsys):
    container = tmp_path / "c.sbit"
    container.write_bytes(b"SBIT" + bytes(200))
    assert main([str(container)]) == 1
    assert "not sound" in capsys.readouterr().err
