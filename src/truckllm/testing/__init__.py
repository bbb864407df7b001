"""Simulated upstreams and helpers to run servers, for the demo, the test suite and benchmarks."""
