"""cocotb test of the decoder harness (sim/testbench.py): steers, the Verilog checks.

Reads the case plan from ``$SUBBIT_PLAN``, runs each case after a reset and writes what the
harness counted to ``$SUBBIT_RESULTS``.
"""

import json
import os
import time

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, First, ReadOnly, RisingEdge, Timer


@cocotb.test()
async def run_plan(dut):
    period = int(os.environ.get("COCOTB_CLOCK_NS", "10"))
    plan = json.loads(open(os.environ["SUBBIT_PLAN"]).read())
    cocotb.start_soon(Clock(dut.clk, period, unit="ns").start())
    results = []
    for case in plan:
        started = time.perf_counter()
        dut.rst.value = 1
        dut.reload.value = 0
        dut.case_index.value = case["index"]
        dut.in_stall.value = case["in_stall"]
        dut.out_stall.value = case["out_stall"]
        dut.seed.value = case["seed"] & 0xFFFFFFFF or 1
        await ClockCycles(dut.clk, 2)
        dut.reload.value = 1
        await ClockCycles(dut.clk, 2)
        dut.reload.value = 0
        dut.rst.value = 0
        await RisingEdge(dut.clk)
        await First(RisingEdge(dut.done), Timer(case["max_cycles"] * period, unit="ns"))
        await ClockCycles(dut.clk, 4)   # let the last transfers reach the checker
        await ReadOnly()
        results.append({
            "name": case["name"],
            "done": bool(dut.done.value),
            "error": bool(dut.error.value),
            "code": dut.code.value.to_unsigned(),
            "cycles": dut.cycles.value.to_unsigned(),
            "values": dut.received.value.to_unsigned(),
            "mismatches": dut.mismatches.value.to_unsigned(),
            "first_mismatch": dut.first_mismatch.value.to_unsigned(),
            "words_in": dut.words_in.value.to_unsigned(),
            "fed_all": bool(dut.fed_all.value),
            "section_cycles": dut.section_cycles.value.to_unsigned(),
            "program_words": dut.program_words.value.to_unsigned(),
            "program_mismatches": dut.program_mismatches.value.to_unsigned(),
            "seconds": time.perf_counter() - started,
        })
        await RisingEdge(dut.clk)
    with open(os.environ["SUBBIT_RESULTS"], "w") as f:
        json.dump(results, f)
