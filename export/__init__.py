"""cxr.export"""
