"""Signature tests of the decoder components: ports, shapes, layouts, parameter checks."""

import pytest
from amaranth import signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from hw.crc import Crc32Word
from hw.decoder import (
    PIPELINE_DEPTH,
    ProgramWord,
    StatusLayout,
    WeightBatch,
    WeightDecoder,
    port_signals,
)
from hw.tables import SymbolTables
from hw.wordbuf import WordBuffer
from sw.params import CodecParams


@pytest.mark.parametrize("lanes", [1, 2, 4, 8])
def test_decoder_ports(lanes):
    dut = WeightDecoder(CodecParams(), lanes)
    sig = dut.signature
    assert set(sig.members) == {"words", "weights", "status", "program"}
    assert sig.members["words"] == In(stream.Signature(16))
    assert sig.members["weights"] == Out(stream.Signature(WeightBatch(lanes)))
    assert sig.members["status"] == Out(StatusLayout)
    # No ready: the consumer takes every program word (a documented contract).
    assert sig.members["program"] == Out(stream.Signature(ProgramWord, always_ready=True))
    # ... so its ready is the constant 1, and wiring.connect refuses a consumer that could
    # say no.
    assert sig.members["program"].signature.always_ready
    assert repr(dut.program.ready) == "(const 1'd1)"


def test_weight_batch_layout():
    layout = WeightBatch(4)
    assert layout == data.StructLayout({
        "values": data.ArrayLayout(signed(16), 4), "count": range(5),
        "section": unsigned(16), "first": 1, "last": 1})
    assert layout.size == 64 + 3 + 16 + 2
    assert StatusLayout == data.StructLayout({"done": 1, "error": 1, "code": 4})
    assert ProgramWord == data.StructLayout({"word": unsigned(16), "last": 1, "partial": 1})
    assert ProgramWord.size == 18


@pytest.mark.parametrize("lanes", [0, 3, 5, 64, -1, 2.0])
def test_decoder_refuses_lanes(lanes):
    with pytest.raises(ValueError):
        WeightDecoder(CodecParams(), lanes)


def test_decoder_depth():
    assert WeightDecoder(CodecParams(), 4).depth == PIPELINE_DEPTH == 7
    assert WeightDecoder(CodecParams(), 4).ring == 8
    assert WeightDecoder(CodecParams(), 8).ring == PIPELINE_DEPTH   # 4 states, 3 bubbles
    assert WeightDecoder(CodecParams(state_count=2), 1).ring == PIPELINE_DEPTH
    assert WeightDecoder(CodecParams(), 1).ring == 32
    assert WeightDecoder(CodecParams(), 4, buffer_depth=32).buffer_depth == 32
    with pytest.raises(ValueError):
        WeightDecoder(CodecParams(), 4, buffer_depth=12)


def test_component_signatures():
    assert Crc32Word().signature.members["crc"] == Out(32)
    buf = WordBuffer(4)
    assert buf.depth == 8
    assert buf.signature.members["push"] == In(stream.Signature(16))
    assert buf.signature.members["words"] == Out(data.ArrayLayout(unsigned(16), 4))
    with pytest.raises(ValueError):
        WordBuffer(4, depth=6)
    tables = SymbolTables(CodecParams(precision_bits=12), 3)
    assert tables.signature.members["slot"] == In(data.ArrayLayout(unsigned(12), 3))
    assert tables.signature.members["symbol"] == Out(data.ArrayLayout(unsigned(8), 3))


def test_decoder_converts_to_verilog():
    from amaranth.back import verilog
    dut = WeightDecoder(CodecParams(), 2)
    # ports= because of the constant program.ready (hw.decoder.port_signals)
    text = verilog.convert(dut, name="weight_decoder", ports=port_signals(dut))
    assert "module weight_decoder" in text
    for port in ("words__payload", "words__valid", "words__ready", "weights__payload",
                 "weights__valid", "weights__ready", "status", "program__valid",
                 "program__payload"):
        assert port in text
    assert "program__ready" not in text
    assert isinstance(WeightDecoder(CodecParams(), 2), wiring.Component)
