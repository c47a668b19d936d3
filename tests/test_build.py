"""``python -m hw.build``: the default iCEBreaker build end to end, and its argument errors."""

import json
import struct

import pytest

from hw.build import DEFAULT_FREQUENCY_MHZ, DEFAULT_LANES, main
from sw.board import FLASH_OFFSET, expected_report, format_line


@pytest.mark.slow
def test_default_icebreaker_build(tmp_path, capsys):
    """Synthesis, P&R and packing of the default system; report, image and exit status agree."""
    out = tmp_path / "out"
    status = main(["--board", "icebreaker", "--out", str(out)])
    captured = capsys.readouterr()
    assert (out / "report.json").exists(), f"no report: {captured.err.strip()}"
    report = json.loads((out / "report.json").read_text())

    # Exit status follows the timing verdict: 0 when met, 1 and one line when missed.
    assert status == (0 if report["timing_met"] else 1)
    if not report["timing_met"]:
        assert len(captured.err.strip().splitlines()) == 1
        assert "timing missed" in captured.err
    assert "logic cells" in captured.out

    assert report["board"] == "icebreaker" and report["lanes"] == DEFAULT_LANES
    assert report["device"] == "iCE40UP5K-SG48"
    resources = report["resources"]
    assert resources["logic_cells"]["available"] == 5280
    assert resources["dsp"]["available"] == 8 and resources["ebr"]["available"] == 30
    for name, entry in resources.items():
        assert 0 <= entry["used"] <= entry["available"], name
    assert resources["logic_cells"]["used"] > 0 and resources["ebr"]["used"] > 0
    assert resources["pll"]["used"] == 1
    # The PLL's output is the one clock: 12 MHz * 64 / 32 = 24 MHz (icepll's dividers).
    assert DEFAULT_FREQUENCY_MHZ == 24.0
    assert report["pll"] == {"DIVR": 0, "DIVF": 63, "DIVQ": 5, "FILTER_RANGE": 1}
    assert list(report["clocks"]) == ["clk"]
    clock = report["clocks"]["clk"]
    assert clock["target_mhz"] == pytest.approx(DEFAULT_FREQUENCY_MHZ)
    assert clock["fmax_mhz"] > 0
    assert report["timing_met"] == (clock["fmax_mhz"] >= clock["target_mhz"])
    assert report["weights_per_second"] == round(DEFAULT_LANES * clock["fmax_mhz"] * 1e6)
    # The default configuration is chosen to build: it fits and meets timing.
    assert status == 0 and report["timing_met"]

    # The flash image: bitstream at 0, erased gap, length and container at 1 MiB.
    bitstream = (out / "top.bin").read_bytes()
    model = (out / "model.sbit").read_bytes()
    image = (out / "flash.bin").read_bytes()
    assert b"\x7e\xaa\x99\x7e" in bitstream[:64]          # iCE40 sync word
    assert 50_000 < len(bitstream) < FLASH_OFFSET
    assert image[:len(bitstream)] == bitstream
    assert set(image[len(bitstream):FLASH_OFFSET]) == {0xFF}
    assert struct.unpack_from("<I", image, FLASH_OFFSET)[0] == len(model)
    assert image[FLASH_OFFSET + 4:] == model
    assert report["model"]["bytes"] == len(model)
    assert report["expected_line"] == format_line(expected_report(model))


@pytest.mark.parametrize("argv,message", [
    (["--board", "nosuchboard"], "unknown board"),
    (["--board", "icebreaker", "--container", "/nonexistent/model.sbit"], "no such file"),
    (["--board", "icebreaker", "--lanes", "3"], "must divide"),
])
def test_bad_arguments_one_line(argv, message, tmp_path, capsys):
    assert main(argv + ["--out", str(tmp_path)]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_board_list(capsys):
    assert main(["--board"]) == 0
    assert "icebreaker" in capsys.readouterr().out
