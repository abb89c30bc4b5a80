"""cxr.benchmarks"""
