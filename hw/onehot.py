"""A one-hot state machine whose register writes are AND-OR multiplexers.

Amaranth's ``m.FSM()`` encodes its state in binary and builds every register it drives as a
priority chain over the states. Yosys leaves both as they are (``fsm_detect`` skips a state
register with an initial value), so in a machine of ~40 states each decision starts with a
two-level state decode and ends in a chain of multiplexers. :class:`OneHotMachine` is written
the same way, with ``state``/``If``/``Elif``/``Else`` blocks, but records each write with its
full condition and builds, at :meth:`OneHotMachine.build`:

* one flip-flop per state, next = (any transition into it) | (in it and no transition out);
* for each register, an enable that is the OR of its write conditions and a data input that
  is the OR of ``condition & value`` over its distinct values. That is correct because the
  conditions of one register's writes are mutually exclusive: they lie in different states,
  or in different branches of one ``If``/``Else`` chain. The caller must not write a register
  twice under overlapping conditions in one state (:meth:`OneHotMachine.set` cannot tell).
"""

from contextlib import contextmanager

from amaranth import Module, Mux, Signal, Value

__all__ = ["OneHotMachine"]


def _any(terms):
    terms = list(terms)
    if not terms:
        return Value.cast(0)
    result = terms[0]
    for term in terms[1:]:
        result = result | term
    return result


def _all(terms):
    result = Value.cast(1)
    for term in terms:
        result = result & term
    return result


class OneHotMachine:
    """Builder of a one-hot state machine in module ``m``; the first state named is initial.

    Parameters
    ----------
    m : Module
    states : list of str
        All state names, the initial one first.
    prefix : str
        Prefix of the state flip-flops' names (``{prefix}_{state.lower()}``).

    Attributes
    ----------
    current : str or None
        The state whose block is open.
    """

    def __init__(self, m: Module, states, prefix: str = "at"):
        states = list(states)
        if len(set(states)) != len(states) or not states:
            raise ValueError(f"states must be distinct and non-empty, not {states!r}")
        self._m = m
        self._bits = {name: Signal(name=f"{prefix}_{name.lower()}", init=i == 0)
                      for i, name in enumerate(states)}
        self._moves = []           # (source, condition, target)
        self._writes = {}          # id(register) -> (register, [(condition, value)])
        self._pulses = {}          # id(signal) -> (signal, [condition])
        self._guards = []
        self._chains = [[]]
        self.current = None
        self._built = False

    def ongoing(self, name: str) -> Value:
        """The flip-flop of state ``name``: 1 while the machine is in it."""
        return self._bits[name]

    @contextmanager
    def state(self, name: str):
        """The block of state ``name``: writes and moves in it apply while the machine is there."""
        if self.current is not None:
            raise ValueError(f"state {name!r} opened inside state {self.current!r}")
        self.ongoing(name)
        self.current = name
        try:
            with self._enter(self._bits[name]):
                yield
        finally:
            self.current = None

    @contextmanager
    def _enter(self, condition):
        self._guards.append(condition)
        self._chains.append([])
        try:
            yield
        finally:
            self._guards.pop()
            self._chains.pop()

    @contextmanager
    def If(self, condition):
        self._chains[-1][:] = [condition]
        with self._enter(condition):
            yield

    @contextmanager
    def Elif(self, condition):
        chain = self._chains[-1]
        if not chain:
            raise ValueError("Elif without If")
        before = _any(chain)
        chain.append(condition)
        with self._enter(~before & condition):
            yield

    @contextmanager
    def Else(self):
        chain = self._chains[-1]
        if not chain:
            raise ValueError("Else without If")
        before = _any(chain)
        chain.clear()
        with self._enter(~before):
            yield

    def _guard(self):
        if self.current is None:
            raise ValueError("a write or a move outside any state")
        return _all(self._guards)

    def set(self, register: Signal, value):
        """``register`` takes ``value`` at the next clock edge under the current condition."""
        self._writes.setdefault(id(register), (register, []))[1].append((self._guard(), value))

    def pulse(self, signal: Signal):
        """``signal`` (combinational, 1 bit) is 1 under the current condition, 0 elsewhere."""
        self._pulses.setdefault(id(signal), (signal, []))[1].append(self._guard())

    def go(self, target: str):
        """Move to state ``target`` under the current condition."""
        self.ongoing(target)
        self._moves.append((self.current, self._guard(), target))

    def build(self):
        """Add the state flip-flops and every recorded write to the module. Statements the
        caller adds to ``sync`` before this have lower priority than the machine's writes."""
        if self._built:
            raise ValueError("built twice")
        self._built = True
        m = self._m
        for name, bit in self._bits.items():
            entering = [condition for source, condition, target in self._moves if target == name]
            leaving = [condition for source, condition, target in self._moves if source == name]
            m.d.sync += bit.eq(_any(entering) | (bit & ~_any(leaving)))
        for register, writes in self._writes.values():
            groups = {}   # the same value under several conditions is one AND-OR term
            for condition, value in writes:
                value = Value.cast(value)
                groups.setdefault(repr(value), (value, []))[1].append(condition)
            if len(groups) == 1:
                (value, conditions), = groups.values()
                data = value
            else:
                terms = []
                for value, conditions in groups.values():
                    fitted = Signal(register.shape(), name=f"{register.name}_term")
                    m.d.comb += fitted.eq(value)
                    terms.append(Mux(_any(conditions), fitted, 0))
                data = _any(terms)
            with m.If(_any(condition for condition, value in writes)):
                m.d.sync += register.eq(data)
        for signal, conditions in self._pulses.values():
            m.d.comb += signal.eq(_any(conditions))
