"""Triton kernels, each beside its pure-PyTorch reference and its autograd wrapper."""
