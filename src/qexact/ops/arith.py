"""Python integer arithmetic on shapes, as a model's ``forward`` does it (``channels // groups``).

These nodes never touch tensor values: they compute sizes for ``view``/``reshape``.
"""

from __future__ import annotations

import operator

from ..errors import ShapeError
from ._registry import graph_op

OPERATORS = {"add": operator.add, "sub": operator.sub, "mul": operator.mul,
             "floordiv": operator.floordiv, "truediv": operator.truediv, "mod": operator.mod,
             "neg": operator.neg}


@graph_op("arith", "integer arithmetic on sizes (operator.add/sub/mul/floordiv/mod/neg)")
class ArithOp:
    @staticmethod
    def prepare(node, input_qparams, engine):
        name = node.attrs.get("operator")
        if name not in OPERATORS:
            raise ShapeError(f"unknown arithmetic operator {name!r}; known: {sorted(OPERATORS)}")
        return name, None

    @staticmethod
    def run(name, inputs):
        if not all(isinstance(value, (int, float)) for value in inputs):
            raise ShapeError(f"{name} applies to sizes (numbers), got "
                             f"{[type(value).__name__ for value in inputs]}")
        return OPERATORS[name](*inputs)
