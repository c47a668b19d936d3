"""``python -m sim.decode``: runs the RTL on a container file, exit status says if it agrees."""

import subprocess
import sys

import numpy as np
import pytest

from sim import decode, testbench
from sw.codec.container import CodedTensor, RawTensor, write_container
from sw.format import Status
from sw.params import CodecParams

# simulations of the decoder's Verilog: the slow tier
pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"), pytest.mark.slow]


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
    from sw.codec.golden import golden_decode

    def wrong(data, params, **options):
        result = golden_decode(data, params, **options)
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


def test_error_at_the_end_of_a_long_section(tmp_path, capsys):
    """A section CRC damaged after 15,000 one-level symbols: the golden model emits nothing
    before the error, so a bound from its output gave up long before the RTL got there. The
    bound comes from the section headers: the RTL runs to the CRC and agrees."""
    import zlib
    params = CodecParams(state_count=8)
    data = bytearray(write_container([CodedTensor("long", np.zeros(15_000, np.int64), 1, 0),
                                      RawTensor("b", np.ones(3, np.float32))], params))
    header = 16 + 4 * params.state_count + 4
    crc_at = header + 4 + 4 + 2 + 4 + 6 + 4 + 4 + 4    # kind, name, ndim, dims ... payload_words
    assert int.from_bytes(data[crc_at:crc_at + 4], "little") == zlib.crc32(data[header:crc_at])
    data[crc_at] ^= 0x01
    path = tmp_path / "late_error.sbit"
    path.write_bytes(bytes(data))
    assert decode.main([str(path), "--lanes", "1"]) == 0
    out = capsys.readouterr().out
    assert "status    CRC_MISMATCH   golden CRC_MISMATCH" in out
    assert "every output agrees" in out


def test_cycle_bound_from_headers():
    params = CodecParams(state_count=8)
    small = write_container([CodedTensor("a", np.zeros(100, np.int64), 1, 0)], params)
    large = write_container([CodedTensor("a", np.zeros(100_000, np.int64), 1, 0)], params)
    # Same size of file, a thousand times the symbols: the bound follows the symbols.
    assert len(small) == len(large)
    assert decode.cycle_bound(large, params, 1) - decode.cycle_bound(small, params, 1) \
        >= 99_900
    # At K = 8 four lanes serve two states each, fewer than the 7 pipeline stages: the ring
    # carries bubbles and is no faster than one lane. At K = 32 it is four times as fast.
    assert decode.cycle_bound(large, params, 4) >= decode.cycle_bound(large, params, 1)
    wide = CodecParams(state_count=32)
    large = write_container([CodedTensor("a", np.zeros(100_000, np.int64), 1, 0)], wide)
    assert decode.cycle_bound(large, wide, 4) < decode.cycle_bound(large, wide, 1) / 3
    assert decode.cycle_bound(large, params, 1, stall=0.5) > decode.cycle_bound(large, params, 1)
    assert decode.cycle_bound(b"junk", params, 1) > 0
