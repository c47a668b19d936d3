"""The integer network a container carries (docs/INFERENCE.md): ``engine`` runs a program, the
reference for the hardware inference engine; ``lower`` builds a program from a trained network's
coded tensors. numpy only: no torch.
"""
