"""Benchmarks: TAP-Vid and SPair-71k formats, protocols and metrics, and the sweeps that score on them."""
