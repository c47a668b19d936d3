"""The hardware decoder of subbit containers, in Amaranth 0.5 (docs/HARDWARE.md)."""
