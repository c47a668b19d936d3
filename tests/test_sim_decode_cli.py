"""``python -m sim.decode``: runs the RTL on a container file, exit status says if it agrees."""

import subprocess
import sys

import numpy as np
import pytest

from sim import decode
from sim import testbench
from sw.container import CodedTensor, RawTensor, write_container
from sw.format import Status
from sw.params import CodecParams

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def container(tmp_path_factory):
    params = CodecParams(state_count=8)
    rng = np.random.default_rng(4)
    data = write_container([CodedTensor("w", rng.integers(0, 5, 900), 5, 2),
                            RawTensor("b", np.ones(3, np.float32))], params)
    path = tmp_path_factory.mktemp("cli") / "model.sbit"
    path.write_bytes(data)
    return path


def test_agrees_and_reports(container, capsys):
    assert decode.main([str(container), "--lanes", "2", "--stall", "0.2"]) == 0
    out = capsys.readouterr().out
    assert "P=12 K=8 N=2" in out            # the container's own parameters
    assert "status    OK   golden OK" in out
    assert "values    900   golden 900" in out
    assert "values/cycle" in out and "every output agrees" in out


def test_damaged_container_statuses_agree(container, tmp_path, capsys):
    data = bytearray(container.read_bytes())
    data[60] ^= 0x10
    path = tmp_path / "bad.sbit"
    path.write_bytes(bytes(data))
    assert decode.main([str(path), "--lanes", "4"]) == 0
    assert "golden CRC_MISMATCH" in capsys.readouterr().out


def test_disagreement_exits_1(container, monkeypatch, capsys):
    from sw.golden import golden_decode

    def wrong(data, params):
        result = golden_decode(data, params)
        result.status = Status.STATE_MISMATCH
        return result
    monkeypatch.setattr(testbench, "golden_decode", wrong)
    assert decode.main([str(container), "--lanes", "1"]) == 1
    assert "MISMATCH  status OK, golden STATE_MISMATCH" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["/no/such/file.sbit"], "cannot read /no/such/file.sbit"),
    (["{c}", "--lanes", "3"], "lanes (3) must divide state_count (8)"),
    (["{c}", "--stall", "1.5"], "--stall must be in [0, 1)"),
    (["{c}", "--lanes", "two"], "invalid int value"),
    (["{c}", "--buffer-depth", "5"], "depth must be a power of two"),
])
def test_bad_arguments_one_line(container, args, message):
    args = [a.format(c=container) for a in args]
    run = subprocess.run([sys.executable, "-m", "sim.decode", *args], capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 2
    assert run.stdout == ""
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], run.stderr
