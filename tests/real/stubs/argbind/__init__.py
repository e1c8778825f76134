"""Import stub for argbind: dac.utils decorates its CLI functions with argbind.bind(...)."""

from typing import Any


def bind(*args: Any, **kwargs: Any) -> Any:
    if len(args) == 1 and callable(args[0]) and not kwargs:
        return args[0]
    return lambda function: function


def parse_args(*args: Any, **kwargs: Any) -> Any:
    raise NotImplementedError("argbind stub: parse_args is not available")


def scope(*args: Any, **kwargs: Any) -> Any:
    raise NotImplementedError("argbind stub: scope is not available")
