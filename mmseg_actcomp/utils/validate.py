"""Checks of configuration values shared by the layers, the region and the precise-BN pass."""


def require_integer(name: str, value, minimum: int) -> None:
    """ValueError ``'{name}={value!r} must be an integer >= {minimum}'`` unless ``value`` is an ``int``
    (``bool`` excluded: ``True`` is no count) of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f'{name}={value!r} must be an integer >= {minimum}')
