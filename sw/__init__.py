"""subbit software: quantization, the interleaved-rANS codec, the container and the golden model.

Nothing here imports amaranth: the hardware generator (``hw``) depends on ``sw``, never the
other way round.
"""
