"""cocotb tests of the whole board systems (:class:`hw.system.BoardSystem`, the CRC system, and
:class:`hw.system.InferenceSystem`).

The flash is cocotbext-qspi's Verilog model holding an image made by :func:`sw.board.flash_image`;
the UART line is received by cocotbext-uart and compared with what :mod:`sw.board` computes
from the same container through the golden model. Run by ``tests/test_board_system.py``.
"""

import base64
from pathlib import Path

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, First, RisingEdge, Timer
from cocotb.utils import get_sim_time
from cocotbext.uart import UartSink

from sim.board import load_config, write_flash
from sw.board import check_line, expected_report, flash_image, parse_line
from sw.format import Status
from sw.params import CodecParams


async def _run_case(dut, sink, config, image: bytes, runs, limit_cycles: int):
    """Reset, run until the line is out; return (line, runs written, LEDs, cycles simulated)."""
    runs = await write_flash(dut.flash.memory, image, runs)
    dut.rst.value = 1
    await ClockCycles(dut.clk, 4)
    sink.clear()
    dut.rst.value = 0
    received = bytearray()
    for cycle in range(0, limit_cycles, 256):
        await ClockCycles(dut.clk, 256)
        received += sink.read_nowait(sink.count()) if sink.count() else b""
        if received.endswith(b"\r\n"):
            break
    else:
        raise AssertionError(f"no line after {limit_cycles} cycles; got {bytes(received)!r}")
    leds = (int(dut.led_green.value), int(dut.led_red.value))
    return received.decode("ascii", errors="replace").strip(), runs, leds


@cocotb.test()
async def board_prints_golden_line(dut):
    """Correct, corrupted, truncated and blank flash: the board line equals software's."""
    config = load_config()
    if "line_file" in config:
        return   # python -m sim.board runs board_line_once only
    params = CodecParams(**config["params"])
    container = base64.b64decode(config["container"])
    cocotb.start_soon(Clock(dut.clk, config["clock_ps"], unit="ps").start())
    sink = UartSink(dut.uart_tx, baud=config["baud"], bits=8, stop_bits=1)
    dut.rst.value = 1
    await Timer(5, "ns")   # after the flash model's time-zero erase of its array

    corrupt = bytearray(container)
    corrupt[config["corrupt_at"]] ^= 0x40
    cases = [
        ("good", container),
        ("corrupted", bytes(corrupt)),
        ("truncated", container[:len(container) // 2]),
        ("blank", None),
    ]
    runs = []
    for name, data in cases:
        image = flash_image(data, offset=config["offset"]) if data is not None else b""
        line, runs, leds = await _run_case(dut, sink, config, image, runs, config["limit_cycles"])
        got = parse_line(line)
        dut._log.info(f"{name}: {line}")
        if data is None:
            expected_status = Status.BAD_MAGIC   # erased flash reads 0xFF: not a container
            assert got.status == expected_status, f"{name}: {line}"
        else:
            expected = expected_report(data, params)
            problems = check_line(line, data, params)
            assert not problems, f"{name}: {line}: {problems}"
            if name == "good":
                assert expected.status == Status.OK and got.weights > 0
            else:
                assert expected.status != Status.OK, f"{name}: golden says OK"
            if name == "truncated":
                assert got.status == Status.TRUNCATED
        ok = got.status == Status.OK
        assert leds == (int(ok), int(not ok)), f"{name}: LEDs green/red = {leds}"


@cocotb.test()
async def board_line_once(dut):
    """One container (``python -m sim.board``): write the line the board prints to a file."""
    config = load_config()
    if "line_file" not in config:
        return   # only run by python -m sim.board
    container = base64.b64decode(config["container"])
    cocotb.start_soon(Clock(dut.clk, config["clock_ps"], unit="ps").start())
    sink = UartSink(dut.uart_tx, baud=config["baud"], bits=8, stop_bits=1)
    dut.rst.value = 1
    await Timer(5, "ns")
    image = flash_image(container, offset=config["offset"])
    line, _, leds = await _run_case(dut, sink, config, image, [], config["limit_cycles"])
    with open(config["line_file"], "w") as out:
        out.write(f"{line}\n{leds[0]} {leds[1]}\n")


@cocotb.test()
async def inference_runs(dut):
    """The inference system on each flash content of the plan
    (:func:`sim.board.simulate_inference`).

    The clock is made in the Verilog wrapper, so that no Python runs per cycle; this test
    writes the flash, resets, and waits for ``finished`` (or the case's limit), then writes
    what the UART sent, the LEDs and the cycles simulated to the case's output file.
    """
    config = load_config()
    if "cases" not in config:
        return   # only run by sim.board.simulate_inference
    period = config["clock_ps"]
    sink = UartSink(dut.uart_tx, baud=config["baud"], bits=8, stop_bits=1)
    dut.rst.value = 1
    await Timer(5, "ns")     # after the flash model's time-zero erase of its array
    runs = []
    for case in config["cases"]:
        runs = await write_flash(dut.flash.memory, Path(case["flash"]).read_bytes(), runs)
        dut.rst.value = 1
        await Timer(4 * period, "ps")
        sink.clear()
        dut.rst.value = 0
        started = get_sim_time("ps")
        await First(RisingEdge(dut.finished), Timer(case["limit_cycles"] * period, "ps"))
        cycles = int(get_sim_time("ps") - started) // period
        # `finished` follows the last stop bit; let the receiver take it
        await Timer(4 * round(1e12 / config["baud"]), "ps")
        text = bytes(sink.read_nowait(sink.count())) if sink.count() else b""
        leds = f"{int(dut.led_green.value)} {int(dut.led_red.value)}"
        dut._log.info(f"{case['name']}: {cycles} cycles, LEDs {leds}")
        profile = str(int(dut.profile.value)) if config.get("profile") else ""
        Path(case["output"]).write_text(
            text.decode("ascii", errors="replace") + "\x00" + leds + "\x00" + str(cycles)
            + "\x00" + profile)
