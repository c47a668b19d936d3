"""cocotb test of the engine harness (sim/engine.py): resets and waits; the Verilog checks.

Reads the plan from ``$SUBBIT_ENGINE_PLAN`` and writes what the harness counted, with each
image's cycles, to the plan's ``results`` file.
"""

import json
import os

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, First, ReadOnly, RisingEdge, Timer
from cocotb.utils import get_sim_time

PERIOD_NS = 10


@cocotb.test()
async def run_plan(dut):
    with open(os.environ["SUBBIT_ENGINE_PLAN"]) as f:
        plan = json.load(f)
    cocotb.start_soon(Clock(dut.clk, PERIOD_NS, unit="ns").start())
    dut.stall.value = plan["stall"]
    dut.rst.value = 1
    await ClockCycles(dut.clk, 3)
    dut.rst.value = 0
    deadline = get_sim_time("ns") + plan["max_cycles"] * PERIOD_NS
    cycles = []
    while True:
        remaining = deadline - get_sim_time("ns")
        if remaining <= 0:
            break
        timeout = Timer(remaining, unit="ns")
        fired = await First(RisingEdge(dut.answered), RisingEdge(dut.done), timeout)
        if fired is timeout:
            await ReadOnly()
            break
        await ReadOnly()
        if dut.answered.value:
            cycles.append(dut.last_cycles.value.to_unsigned())
        if dut.done.value:
            break
        await RisingEdge(dut.clk)
    results = {
        "images_done": dut.images_done.value.to_unsigned(),
        "writes": dut.writes.value.to_unsigned(),
        "write_mismatches": dut.write_mismatches.value.to_unsigned(),
        "first_mismatch": dut.first_mismatch.value.to_unsigned(),
        "prediction_mismatches": dut.prediction_mismatches.value.to_unsigned(),
        "cycles": cycles,
        "error": bool(dut.error.value),
        "code": dut.code.value.to_unsigned(),
    }
    with open(plan["results"], "w") as f:
        json.dump(results, f)
