"""Quantization (docs/QUANT.md): ``qat`` holds the zero-point quantizer and the quantized layers,
``train`` trains with them to a rate (``python -m sw train``), ``compress`` quantizes a trained
model after the fact (PTQ, ``python -m sw compress``), ``gptq`` its error feedback, ``models`` the
networks, and ``default_model`` the small MLP every build carries unless told otherwise.
This ``__init__`` imports nothing: ``default_model`` works without torch.
"""
