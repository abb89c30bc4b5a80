"""cxr-triton: chest X-ray abnormality detection served with NVIDIA Triton."""

__version__ = "0.1.0"
