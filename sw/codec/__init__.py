"""The container file: the interleaved-rANS coder, the reader and writer, and the golden model.

``rans`` is the reference coder (the specification in code), ``fastrans`` the same coder compiled
with numba; ``program`` is the integer program the PROGRAM section carries (its encoding and
rules, docs/INFERENCE.md); ``container`` writes and reads a container (docs/FORMAT.md);
``golden`` is the golden model of the hardware decoder. Imports neither torch nor any other
package of ``sw`` but :mod:`sw.format` and :mod:`sw.params`.
"""
