"""subbit software: quantization, the interleaved-rANS codec, the container and the golden model.

Packages and modules, each importing only those listed before it (and itself):

=============== ========================================================================
``sw.format``   the container's constants, section kinds, dtypes and status codes
``sw.params``   ``CodecParams``, and the ``--precision-bits``/``--states`` options
``sw.data``     the data sets (digits, MNIST-1D): imports nothing of sw
``sw.codec``    the file: rANS coder (``rans``, ``fastrans``), ``program`` (the PROGRAM
                section's encoding and rules), ``container`` (reader and writer), ``golden``
                (the golden model of the hardware decoder)
``sw.io``       model files in and out (``tensors``), containers into numpy or torch (``load``)
``sw.network``  the integer network: reference ``engine`` and ``lower`` (trained -> program)
``sw.quant``    QAT (``qat``, ``train``), PTQ (``compress``, ``gptq``), ``models``, and the
                ``default_model`` every build carries
``sw.board``    the board protocol: flash images and the UART lines a board must print
``sw.cli``      ``python -m sw``: the top, imported by nothing but ``sw.__main__``
``sw.bench``    ``python -m sw.bench``: leaves, imported by nothing
=============== ========================================================================

Beyond the order: ``sw.io`` does not import ``sw.network``, and ``sw.board`` does not import
``sw.quant`` (the board protocol needs no training code). torch is never imported by
``sw.format``, ``sw.params``, ``sw.codec``, ``sw.network`` or ``sw.board``, and by ``sw.data``,
``sw.io`` and ``sw.cli`` only inside the functions that need it (``verify`` and ``decode`` stay
fast); numba only by ``sw.codec.fastrans``.

Nothing in sw imports amaranth, ``hw``, ``sim``, ``boards`` or ``tests``: the hardware generator
depends on sw, never the other way round. The hardware benchmark, which runs the hardware
build, is therefore :mod:`hw.bench`; ``python -m sw.bench hw`` finds it by name when asked, so
it keeps its place beside the software benchmarks without sw importing hw.

tests/test_dependencies.py checks all of this on every ``import`` statement in sw, at module
level and inside functions.
"""
