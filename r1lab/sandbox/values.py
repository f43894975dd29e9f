"""Plain Python values as type-tagged JSON, both ways across the sandbox wall.

``tag`` turns a value into JSON-ready lists (``[kind, payload]``) that keep what JSON loses: tuples stay tuples,
sets stay sets, dict keys keep their types, ints of any size travel as hex, bytes and complex numbers survive,
and ``1``, ``1.0``, ``True`` and ``"1"`` stay four different things. Subclasses of these built-in types travel as
their plain values (their own methods are never called), and any other object raises ``TypeError``: a rigged
``__eq__`` never reaches the comparison, which the judge makes on plain values. ``untag`` rebuilds the
value and trusts nothing: any malformed node raises ``ValueError``, and nesting past ``MAX_DEPTH`` is refused on
both sides.

The judge's driver runs this file's source inside the sandbox, in a namespace of its own (arguments are
decoded and results encoded there), so it uses the standard library only and no names from elsewhere.

>>> untag(tag([1, (2, 3.5), {4: b"x"}, {None}, True, 10 ** 30, float("inf")]))
[1, (2, 3.5), {4: b'x'}, {None}, True, 1000000000000000000000000000000, inf]
>>> list(untag(tag(map(str, [1, 2])))), untag(tag({1: 2}.keys())) == {1}, untag(tag(range(3)))
(['1', '2'], True, range(0, 3))
"""

import math

MAX_DEPTH = 100
MAX_ITEMS = 1_000_000  # items read from an iterator (it may be endless)
#: the largest int ``untag`` rebuilds, in bits (reading one is linear, but comparing it with a Decimal converts it to
#: decimal digits, which is quadratic), and the largest part of a Fraction or bound of a range (a Fraction is reduced
#: by a gcd and ranges compare by dividing their bounds: superlinear work the judge would do outside any deadline)
MAX_INT_BITS = 1 << 18
MAX_PART_BITS = 1 << 14
MAX_DECIMAL_CHARS = 4_000  # a Decimal's text; and its exponent stays within +-MAX_DECIMAL_EXPONENT
MAX_DECIMAL_EXPONENT = 100_000
MAX_SAME_HASH = 64  # more distinct keys than this with one hash would make rebuilding a set or dict quadratic
_CONTAINERS = {"list": list, "tuple": tuple, "set": set, "frozenset": frozenset}


def tag(value, depth=0):
    """Built-in types as themselves; a subclass of one (``Counter``, a namedtuple, an ``int`` with a rigged
    ``__eq__``) as its plain built-in value, read through the base class's own methods, as Python's ``==``
    compares it with a plain value; anything else raises ``TypeError``."""
    if depth > MAX_DEPTH:
        raise ValueError("value nested too deep")
    if value is None:
        return ["none", None]
    if type(value) is bool:
        return ["bool", value]
    if isinstance(value, int):
        return ["int", format(int.__index__(value), "x")]  # hex: no decimal digit limit, linear both ways
    if isinstance(value, float):
        value = float.__float__(value)
        return ["float", value if math.isfinite(value) else repr(value)]
    if isinstance(value, complex):
        return ["complex", [tag(complex.__getattribute__(value, "real"))[1],
                            tag(complex.__getattribute__(value, "imag"))[1]]]
    if isinstance(value, str):
        return ["str", str.__str__(value)]
    if isinstance(value, (bytes, bytearray)):
        return ["bytes", bytes(memoryview(value)).hex()]
    for name, kind in _CONTAINERS.items():
        if isinstance(value, kind):
            return [name, [tag(v, depth + 1) for v in kind.__iter__(value)]]
    if isinstance(value, dict):
        return ["dict", [[tag(k, depth + 1), tag(v, depth + 1)] for k, v in dict.items(value)]]
    return _tag_library_value(value, depth)


def _tag_library_value(value, depth):
    """Standard-library values a test may compare or consume (``Fraction(1, 2) == 0.5``, ``list(map(...))``): each as
    a kind of its own, so Python's comparisons between them and plain values keep their meaning (a map is not a
    list; a ``dict_keys`` compares like a set). Any other iterable travels as a one-pass iterator over its items.
    The imports are here, not at the top, so that a sandbox run whose results are all plain pays nothing for them."""
    import collections
    import decimal
    import fractions

    kind = type(value)
    if isinstance(value, fractions.Fraction):
        parts = (int.__index__(value.numerator), int.__index__(value.denominator))
        return ["fraction", [format(part, "x") for part in parts]]
    if isinstance(value, decimal.Decimal):
        return ["decimal", decimal.Decimal.__str__(value)]
    if kind is range:
        return ["range", [tag(value.start)[1], tag(value.stop)[1], tag(value.step)[1]]]
    if kind in (type({}.keys()), type({}.values())):
        return ["keys" if kind is type({}.keys()) else "values", _items(value, depth)]
    if kind is type({}.items()):
        return ["items", [[tag(k, depth + 1), tag(v, depth + 1)] for k, v in _bounded(value)]]
    if isinstance(value, collections.deque):
        return ["deque", _items(collections.deque.__iter__(value), depth)]
    try:
        iterator = iter(value)
    except TypeError:
        raise TypeError(f"cannot compare a {kind.__name__}") from None
    return ["iter", _items(iterator, depth)]


def _bounded(iterable):
    for count, item in enumerate(iterable):
        if count >= MAX_ITEMS:
            raise ValueError("too many items")
        yield item


def _items(iterable, depth):
    return [tag(v, depth + 1) for v in _bounded(iterable)]


def _int(payload, max_bits):
    """A hex int of at most ``max_bits`` bits (judged by its text's length first: nothing long is parsed)."""
    if len(payload) > max_bits // 4 + 2:
        raise ValueError("int too large")
    value = int(payload, 16)
    if value.bit_length() > max_bits:
        raise ValueError("int too large")
    return value


def _refuse(why):
    raise ValueError(why)


def _float(payload):
    if type(payload) is float or type(payload) is int and not isinstance(payload, bool):
        return float(payload)
    if payload in ("inf", "-inf", "nan"):
        return float(payload)
    raise ValueError("bad float")


def _few_collisions(keys) -> None:
    """Refuse keys crafted to share one hash (ints that differ by multiples of 2**61 - 1, say): a set of them
    takes quadratic time to build. Counting hashes is linear: equal hash values land on one counter."""
    counts = {}
    for key in keys:
        h = hash(key)  # raises TypeError for an unhashable key, as the set itself would
        counts[h] = counts.get(h, 0) + 1
        if counts[h] > MAX_SAME_HASH:
            raise ValueError("too many keys with one hash")


def untag(node, depth=0):
    if depth > MAX_DEPTH:
        raise ValueError("value nested too deep")
    if type(node) is not list or len(node) != 2 or type(node[0]) is not str:
        raise ValueError("not a tagged value")
    kind, payload = node
    if kind == "none" and payload is None:
        return None
    if kind in ("bool", "str") and type(payload).__name__ == kind:
        return payload
    if kind == "int" and type(payload) is str:
        return _int(payload, MAX_INT_BITS)
    if kind == "float":
        return _float(payload)
    if kind == "complex" and type(payload) is list and len(payload) == 2:
        return complex(_float(payload[0]), _float(payload[1]))
    if kind == "bytes" and type(payload) is str:
        return bytes.fromhex(payload)
    if kind in ("list", "tuple") and type(payload) is list:
        return _CONTAINERS[kind](untag(item, depth + 1) for item in payload)
    if kind in ("set", "frozenset") and type(payload) is list:
        items = [untag(item, depth + 1) for item in payload]
        _few_collisions(items)
        return _CONTAINERS[kind](items)
    if kind == "dict" and type(payload) is list:
        if any(type(pair) is not list or len(pair) != 2 for pair in payload):
            raise ValueError("bad dict item")
        pairs = [(untag(k, depth + 1), untag(v, depth + 1)) for k, v in payload]
        _few_collisions([k for k, _ in pairs])
        return dict(pairs)
    if type(payload) is list and kind in ("fraction", "range") and len(payload) == 2 + (kind == "range"):
        parts = [_int(v, MAX_PART_BITS) if type(v) is str else _refuse("bad part") for v in payload]
        if kind == "fraction":
            import fractions

            if parts[1] == 0:
                raise ValueError("zero denominator")
            return fractions.Fraction(*parts)
        return range(*parts)
    if kind == "decimal" and type(payload) is str and len(payload) <= MAX_DECIMAL_CHARS:
        import decimal

        value = decimal.Decimal(payload)  # raises InvalidOperation (a ValueError) for text that is not a number
        if value.is_finite() and abs(value.adjusted()) > MAX_DECIMAL_EXPONENT:
            raise ValueError("decimal exponent too large")
        return value
    if kind in ("iter", "keys", "values", "deque", "items") and type(payload) is list:
        if kind == "items":
            pairs = untag(["dict", payload], depth)
            return pairs.items()
        items = [untag(item, depth + 1) for item in payload]
        if kind == "keys":
            return untag(["dict", [[item, ["none", None]] for item in payload]], depth).keys()
        if kind == "values":
            return dict(enumerate(items)).values()
        if kind == "deque":
            import collections

            return collections.deque(items)
        return iter(items)
    raise ValueError(f"bad tagged value of kind {kind!r}")
