"""Files in and out: model files (``tensors``: .npz, .safetensors, torch) and containers read
into numpy or torch (``load``: ``load_state_dict``, and a container's sizes read from its
headers before decoding). torch is imported inside functions only.
"""
