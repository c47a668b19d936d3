"""A single-port RAM of 16-bit words: the UP5K's SPRAM on iCE40, a ``Memory`` elsewhere.

Yosys does not map an Amaranth ``Memory`` to ``SB_SPRAM256KA``, even with one address for
reads and writes and ``synth_ice40 -spram`` (docs in /work/shared/hdl-notes.md: an 8K x 16
memory spills to block RAM, more than the chip has). So on an iCE40 platform this component
instantiates the primitive itself, 16K words a block, and decodes the address over several
blocks when the depth asks for them. Without a platform (simulation) it is a ``Memory`` with
the same read timing. After a write cycle ``DATAOUT`` is undefined (Yosys' cell model makes
it ``x``); the ``Memory`` then holds its previous read, and a user must not look at
``read_data`` the cycle after a write. ``python -m sim.engine --spram`` runs the engine on the
primitive's model to check that it does not.
"""

from amaranth import ClockSignal, Const, Instance, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

__all__ = ["SPRAM_WORDS", "SPRAM_BLOCKS", "SinglePortRam"]

#: Words of 16 bits in one SB_SPRAM256KA.
SPRAM_WORDS = 16384
#: Blocks on the iCE40UP5K.
SPRAM_BLOCKS = 4


class SinglePortRam(wiring.Component):
    """``depth`` words of 16 bits, one address for reads and writes.

    Parameters
    ----------
    depth : int
        Words; at most ``SPRAM_BLOCKS * SPRAM_WORDS`` (64K, the whole UP5K) on iCE40.
    spram : bool or None
        ``True``: always ``SB_SPRAM256KA`` instances (to simulate them against Yosys' cell
        models); ``False``: always a ``Memory``; ``None``: SPRAM when elaborated for an iCE40
        platform.

    Attributes
    ----------
    addr : In(range(depth))
    write_data : In(16)
    write_enable : In(1)
        Writes ``write_data`` at ``addr`` this cycle.
    read_data : Out(16)
        The word at the address of the previous cycle, when that cycle did not write
        (undefined after a write).
    """

    def __init__(self, depth: int, *, spram: bool = None):
        if not 1 <= depth <= SPRAM_BLOCKS * SPRAM_WORDS:
            raise ValueError(f"depth must be 1 .. {SPRAM_BLOCKS * SPRAM_WORDS}, not {depth}")
        self.depth = depth
        self.spram = spram
        super().__init__({
            "addr": In(range(depth)),
            "write_data": In(16),
            "write_enable": In(1),
            "read_data": Out(16),
        })

    @property
    def blocks(self) -> int:
        """SB_SPRAM256KA blocks this depth takes."""
        return -(-self.depth // SPRAM_WORDS)

    def elaborate(self, platform):
        from amaranth.vendor import SiliconBluePlatform

        m = Module()
        use_spram = self.spram
        if use_spram is None:
            use_spram = isinstance(platform, SiliconBluePlatform)
        if not use_spram:
            m.submodules.memory = memory = Memory(shape=16, depth=self.depth, init=[])
            write = memory.write_port()
            # no read while writing, as the SPRAM (whose DATAOUT is then undefined)
            read = memory.read_port()
            m.d.comb += [write.addr.eq(self.addr), write.data.eq(self.write_data),
                         write.en.eq(self.write_enable), read.addr.eq(self.addr),
                         read.en.eq(~self.write_enable), self.read_data.eq(read.data)]
            return m

        low = Signal(14)
        m.d.comb += low.eq(self.addr[:14])
        outputs = []
        select = Const(0, 1)
        if self.blocks > 1:
            # which block answers: the block of the previous cycle's address, as DATAOUT is
            # registered
            select = Signal(range(self.blocks))
            with m.If(~self.write_enable):
                m.d.sync += select.eq(self.addr[14:])
        for block in range(self.blocks):
            chosen = (self.addr[14:] == block) if self.blocks > 1 else Const(1, 1)
            data_out = Signal(16, name=f"data_out_{block}")
            m.submodules[f"spram{block}"] = Instance(
                "SB_SPRAM256KA",
                i_ADDRESS=low, i_DATAIN=self.write_data,
                i_MASKWREN=Const(0b1111, 4), i_WREN=self.write_enable & chosen,
                i_CHIPSELECT=chosen, i_CLOCK=ClockSignal("sync"),
                i_STANDBY=Const(0, 1), i_SLEEP=Const(0, 1), i_POWEROFF=Const(1, 1),
                o_DATAOUT=data_out)
            outputs.append(data_out)
        if self.blocks == 1:
            m.d.comb += self.read_data.eq(outputs[0])
        else:
            with m.Switch(select):
                for block, data_out in enumerate(outputs):
                    with m.Case(block):
                        m.d.comb += self.read_data.eq(data_out)
        return m

