"""cxr.training"""
