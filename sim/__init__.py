"""Simulation of the hardware decoder: Amaranth-simulator helpers and the cocotb testbench."""
