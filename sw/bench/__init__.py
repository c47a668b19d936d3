"""Benchmarks: ``python -m sw.bench {codec,quant,hw}``. They print figures; they are not tests."""
