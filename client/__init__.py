"""cxr.client"""
