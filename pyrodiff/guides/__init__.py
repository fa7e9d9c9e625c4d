"""Guides q(x_{1:T} | x_0): the fixed forward chain and learned alternatives."""

from .forward import ChainOrder, ForwardGuide

__all__ = ["ChainOrder", "ForwardGuide"]
