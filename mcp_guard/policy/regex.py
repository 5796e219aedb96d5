"""Regular expressions that cannot backtrack catastrophically.

Policy authors write the patterns, but callers choose the text they run against. `compile_safe`
walks the tree of the standard library's own parser (``re._parser``) and refuses every construct
that lets a backtracking matcher try many ways to match the same text:

- a repeated part that can match empty text, or that holds a repeat whose end can move into the
  next repetition, judged like repeats in a row (below) over three repetitions written out
  (``(a+)+``, ``(a*)*``, ``(.*a){20}``, but not ``(?:\\w+\\.)*``);
- alternatives inside a repeated part that can start with the same character or match empty
  text (``(a|ab)*``, ``(a|a)+``, ``(a|b*)+``);
- repeats of varying count in a row where the split between them can move: every part between
  them can take a character from the parts before it and hand one to the parts after it
  (``\\d+\\d+``, ``.*.*``, ``.*x.*``, ``[a-z]{0,9}[a-z]{0,9}``, and ``[A-Z]?[a-zA-Z][a-z]*``, which
  splits ``Ab`` two ways);
- a fixed-count repeat that costs more than 64 steps to try once counts as one of varying count.
  Everything after a part of varying length runs again at each of its backtracking steps, so
  the fixed-count parts there add up: from where they pass 64 steps, they count as of varying
  count too (``[ab]*[ab]{500}``, and ``[ab]*[ab]{64}[ab]{64}``). A character costs a step, a
  repeat its count times its body, alternatives their sum and a lookaround what it looks at,
  so lookarounds inside repeats multiply out (``(?:(?=[ab]{64})[ab]){64}`` costs 4160);
- an alternation that can match empty text or whose alternatives can start alike counts as a
  repeat of varying count (``(?:a|)`` is ``a?``), so several in a row over the same characters
  are refused (``(?:a|)(?:a|)a``);
- parts that can match the same text in more than one way, one after another: alternatives that
  can match alike (``(?:ab|[ab]b)``, two ways to match ``ab``; alternatives that start alike
  may, runs of single characters only if alike at every place, so ``Jan|Jun`` never do), and
  alternatives of different lengths that a varying part before them can shift into
  (``(?:a|ab)(?:c|bc)``, two ways to match ``abc``). Everything after such a part runs again for
  each way, so the ways multiply: more than 64 in one pattern are refused (``(?:ab|[ab]b)-``
  seven times), and any inside a repeated part or across its repetitions
  (``(?:[a-z]*(?:c|bc)-)+``, ``(?:(?:c|bc)-[a-z]*)+``);
- a lookaround holding a repeat of varying count, or lookarounds costing more than 64 steps
  together, inside a repeated part or after a part of varying length, where they run again at
  every repetition or backtracking step: ``[a-z]*(?=[a-z]*!)``, the lookarounds of one
  repetition (``(?:(?=[a-z]{64})(?=[a-z]{64})[a-z])*``), those after a varying part with the
  fixed-count parts between (``[a-z]*(?=[a-z]{64})(?=[0-9]{64})``), and lookaheads nested in
  repeated lookaheads, ``(?:(?=(?:(?=[ab]{64})[ab]){64})[ab]){64}``, whose cost multiplies by 64
  at each level (at the start, ``^(?!.*\\.\\.)``, a lookaround runs once); backreferences and
  conditionals.

The analysis is conservative: where it cannot tell, it refuses, so some linear patterns are
refused too, and so is any construct it does not know. ``[^/]+(/[^/]+)*`` is accepted because
each repetition starts with ``/``, which nothing else in it matches. A bounded repeat counts
like an unbounded one: ``[a-z]{0,255}`` three times in a row is cubic. Matching stays bounded
too: callers match only strings of at most `MAX_SUBJECT_LENGTH` characters, with
``Pattern.fullmatch``.
"""

from __future__ import annotations

import importlib
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any, NamedTuple

__all__ = ["MAX_PATTERN_LENGTH", "MAX_SUBJECT_LENGTH", "UnsafePattern", "compile_safe"]

MAX_PATTERN_LENGTH = 1000
"""Longest pattern accepted, in characters."""

MAX_SUBJECT_LENGTH = 4096
"""Longest string a compiled pattern may be matched against; longer values are refused unmatched."""

_MAX_NESTING = 40
_LONG_FIXED = 64
"""Most steps the parts that run again at each backtracking step or repetition may cost together
and still count as constant: fixed-count parts after a part of varying length, and lookarounds."""
_MAX_WAYS = 64
"""Most ways a pattern may have to match the same text: what follows runs again for each."""
_UNBOUNDED = 1 << 30
_ENUMERABLE = 256
_RENDERED = 60
_CHAR_FLAGS = re.IGNORECASE | re.ASCII | re.DOTALL

_parser: Any = importlib.import_module("re._parser")
_c: Any = importlib.import_module("re._constants")

_CHAR_OPS = frozenset({_c.LITERAL, _c.NOT_LITERAL, _c.ANY, _c.IN})
_REPEAT_OPS = frozenset({_c.MAX_REPEAT, _c.MIN_REPEAT, _c.POSSESSIVE_REPEAT})
_LOOKAROUND_OPS = frozenset({_c.ASSERT, _c.ASSERT_NOT})
_CATEGORIES = {
    "CATEGORY_DIGIT": "d",
    "CATEGORY_NOT_DIGIT": "D",
    "CATEGORY_SPACE": "s",
    "CATEGORY_NOT_SPACE": "S",
    "CATEGORY_WORD": "w",
    "CATEGORY_NOT_WORD": "W",
}
_DISJOINT_CATEGORIES = frozenset(frozenset(pair) for pair in ("dD", "wW", "sS", "ds", "ws", "dW"))
"""Pairs of escapes no character matches both of, under the same ASCII flag."""
_ANCHORS = {
    "AT_BEGINNING": "^",
    "AT_BEGINNING_STRING": r"\A",
    "AT_END": "$",
    "AT_END_STRING": r"\Z",
    "AT_BOUNDARY": r"\b",
    "AT_NON_BOUNDARY": r"\B",
}
_FLAG_LETTERS = ((re.IGNORECASE, "i"), (re.MULTILINE, "m"), (re.DOTALL, "s"), (re.VERBOSE, "x"), (re.ASCII, "a"))
_SPECIAL = frozenset(".^$*+?{}[]\\|()")
_CLASS_SPECIAL = frozenset("\\]^-[")


class UnsafePattern(ValueError):
    """A pattern that is invalid, too long, or can backtrack catastrophically."""


def compile_safe(pattern: str) -> re.Pattern[str]:
    """Compile ``pattern`` for ``fullmatch`` once its parse tree shows it cannot backtrack catastrophically.

    Raises `UnsafePattern` naming the offending construct (as the parser normalised it) and,
    when it appears verbatim once in ``pattern``, its offset.
    """
    if len(pattern) > MAX_PATTERN_LENGTH:
        raise UnsafePattern(f"pattern is {len(pattern)} characters long; the limit is {MAX_PATTERN_LENGTH}")
    try:
        compiled = re.compile(pattern)
        tree = _parser.parse(pattern)
    except (re.error, OverflowError) as exc:  # OverflowError: a repeat count past the engine's limit
        raise UnsafePattern(f"invalid regular expression: {exc}") from exc
    except RecursionError as exc:
        raise UnsafePattern("groups are nested too deeply") from exc
    _Analysis(pattern).sequence(tree.data, tree.state.flags, 0, loop=None)
    return compiled


@dataclass(frozen=True, slots=True)
class _Atom:
    """A set of characters in the form needed to decide whether two sets overlap."""

    source: str  # a regular expression matching exactly the characters of the set
    flags: int
    points: frozenset[int] | None  # every member, when few and not subject to case folding
    category: str | None  # the letter of ``\\d``-style escapes when the set is exactly one


@dataclass(frozen=True, slots=True)
class _Shape:
    """What the analysis knows about the text a part of a pattern can match."""

    nullable: bool
    varies: bool  # holds a repeat whose count varies
    first: tuple[_Atom, ...]  # characters a non-empty match can start with
    last: tuple[_Atom, ...]  # characters a non-empty match can end with
    chars: tuple[_Atom, ...]  # characters a match can contain
    tail: tuple[_Atom, ...]  # characters a repeat of varying count at the end can match
    looks: int = 0  # most steps its lookarounds take in one try (a repeat's: in one repetition)
    work: int = 0  # most steps one try to match at one position can take, capped at _UNBOUNDED
    rerun: int = 0  # most steps run again in it at each backtracking step of a varying part in it
    shortest: int = 0  # fewest characters a match can have
    longest: int = 0  # most characters a match can have, capped at _UNBOUNDED
    ways: int = 1  # most ways it can match the same text, capped at _UNBOUNDED


_Item = tuple[Any, Any]
"""A parsed item: its opcode and argument."""


class _Part(NamedTuple):
    op: Any
    av: Any
    shape: _Shape


_EMPTY = _Shape(nullable=True, varies=False, first=(), last=(), chars=(), tail=())


class _Analysis:
    """One walk over one parsed pattern; refusals quote the pattern text."""

    _LOOKAROUND = (
        "lookaround with a long or varying repeat, or lookarounds and fixed parts costing more than "
        f"{_LONG_FIXED} steps together, run again at every repetition or backtracking step before them"
    )

    def __init__(self, pattern: str) -> None:
        self._pattern = pattern

    def sequence(
        self, items: Sequence[Any], flags: int, depth: int, *, loop: _Item | None
    ) -> tuple[_Shape, list[_Part]]:
        """The shape of consecutive items, refusing overlapping repeats in a row among them.

        ``loop`` is the innermost repeated part (repeating more than once) the items are in.
        """
        parts = [
            _Part(op, av, self._item(op, av, item_flags, item_depth, loop=loop))
            for op, av, item_flags, item_depth in self._flatten(items, flags, depth)
        ]
        shapes = [part.shape for part in parts]
        shifts = list(_shifts(shapes))
        self._check_runs(parts, shifts)
        self._check_lookarounds(parts)
        shape = _concat(shapes)
        ways = min(shape.ways * _shifted_ways(shapes, shifts), _UNBOUNDED)
        if ways > _MAX_WAYS:
            raise self._refuse(
                f"parts that can match the same text in several ways, in a row, give more than {_MAX_WAYS} ways "
                "to match it, and what follows runs again for each",
                [(part.op, part.av) for part in parts],
            )
        return replace(shape, ways=ways), parts

    def _flatten(self, items: Sequence[Any], flags: int, depth: int) -> Iterable[tuple[Any, Any, int, int]]:
        """Items with plain groups opened up, each with the flags in force where it stands."""
        if depth > _MAX_NESTING:
            raise UnsafePattern(f"groups are nested more than {_MAX_NESTING} deep")
        for op, av in items:
            if op is _c.SUBPATTERN:
                _, add, remove, body = av
                yield from self._flatten(body.data, (flags | add) & ~remove, depth + 1)
            else:
                yield op, av, flags, depth

    def _item(self, op: Any, av: Any, flags: int, depth: int, *, loop: _Item | None) -> _Shape:
        if op in _CHAR_OPS:
            atoms = _atoms(op, av, flags & _CHAR_FLAGS)
            return _Shape(
                nullable=False,
                varies=False,
                first=atoms,
                last=atoms,
                chars=atoms,
                tail=(),
                work=1,
                shortest=1,
                longest=1,
            )
        if op is _c.AT:
            return _EMPTY
        if op in _REPEAT_OPS:
            return self._repeat(op, av, flags, depth, loop=loop)
        if op is _c.BRANCH:
            return self._branch(av, flags, depth, loop=loop)
        if op is _c.ATOMIC_GROUP:  # never entered again once it matched: one way
            return replace(self.sequence(av.data, flags, depth + 1, loop=loop)[0], ways=1)
        if op in _LOOKAROUND_OPS:
            inner, _ = self.sequence(av[1].data, flags, depth + 1, loop=None)
            looks = _UNBOUNDED if inner.varies else max(inner.work, inner.looks)
            return _Shape(
                nullable=True, varies=False, first=(), last=(), chars=(), tail=(), looks=looks, work=inner.work
            )
        if op is _c.GROUPREF:
            raise self._refuse("backreference", [(op, av)])
        if op is _c.GROUPREF_EXISTS:
            raise self._refuse("conditional group (a backreference)", [(op, av)])
        raise UnsafePattern(f"unsupported construct {op}")

    def _repeat(self, op: Any, av: Any, flags: int, depth: int, *, loop: _Item | None) -> _Shape:
        low, high, body_items = av
        repeats = high > 1
        body, parts = self.sequence(body_items.data, flags, depth + 1, loop=(op, av) if repeats else loop)
        if repeats and body.looks > _LONG_FIXED:  # they run again at every repetition
            raise self._refuse(self._LOOKAROUND, [(op, av)])
        if high > low and body.nullable and not repeats:  # ``(?=x)?``, ``(?:a?)?``: two ways to match nothing
            raise self._refuse("optional part can match empty text itself, so it matches nothing two ways", [(op, av)])
        if repeats and body.nullable:
            raise self._refuse("repeated part can match empty text, so repetitions are ambiguous", [(op, av)])
        if repeats:
            written_out = [part.shape for part in parts] * 3  # across repetitions
            shifts = list(_shifts(written_out))
            if _movable_split(written_out, shifts) is not None:
                raise self._refuse(
                    "repeated part holds a repeat whose end can move into the next repetition, "
                    "so repetitions can split the same text in many ways",
                    [(op, av)],
                )
            if body.ways > 1 or _shifted_ways(written_out, shifts) > 1:
                raise self._refuse(
                    "repeated part can match the same text in several ways, so the ways multiply with each repetition",
                    [(op, av)],
                )
        if high == 0:
            return _EMPTY
        work = min(high * body.work, _UNBOUNDED)
        return _Shape(
            nullable=low == 0 or body.nullable,
            varies=high > low or body.varies or work > _LONG_FIXED,
            first=body.first,
            last=body.last,
            chars=body.chars,
            tail=body.chars if high > low else body.tail,
            looks=body.looks,
            work=work,
            rerun=body.rerun,
            shortest=min(low * body.shortest, _UNBOUNDED),
            longest=min(high * body.longest, _UNBOUNDED),
            ways=body.ways,
        )

    def _branch(self, av: Any, flags: int, depth: int, *, loop: _Item | None) -> _Shape:
        analysed = [self.sequence(alt.data, flags, depth + 1, loop=loop) for alt in av[1]]
        alternatives = [shape for shape, _ in analysed]
        runs = [_characters(parts) for _, parts in analysed]
        # An alternative that can match empty text makes the branch optional (``(?:a|)`` is
        # ``a?``); alternatives that can start alike may match text of different lengths
        # (``(?:a|aa)``). Either way, where the branch ends can move, as after a repeat; inside a
        # repeated part, repetitions could split the same text in many ways.
        alike = any(
            _overlap(alternative.first, other.first)
            for index, alternative in enumerate(alternatives)
            for other in alternatives[:index]
        )
        ambiguous = alike or any(alternative.nullable for alternative in alternatives)
        if loop is not None and ambiguous:
            raise self._refuse("alternatives inside a repeated part can match the same text or empty text", [loop])
        if sum(alternative.nullable for alternative in alternatives) > 1:  # ``(?:\b|)``, ``(?:|a?)``
            raise self._refuse("several alternatives can match empty text", [(_c.BRANCH, av)])
        chars = _union(alternative.chars for alternative in alternatives)
        return _Shape(
            nullable=any(alternative.nullable for alternative in alternatives),
            varies=ambiguous or any(alternative.varies for alternative in alternatives),
            first=_union(alternative.first for alternative in alternatives),
            last=_union(alternative.last for alternative in alternatives),
            chars=chars,
            tail=chars if ambiguous else _union(alternative.tail for alternative in alternatives),
            looks=min(sum(alternative.looks for alternative in alternatives), _UNBOUNDED),
            work=min(sum(alternative.work for alternative in alternatives), _UNBOUNDED),
            rerun=max(alternative.rerun for alternative in alternatives),
            shortest=min(alternative.shortest for alternative in alternatives),
            longest=max(alternative.longest for alternative in alternatives),
            ways=min(_alternative_ways(alternatives, runs), _UNBOUNDED),
        )

    def _check_runs(self, parts: list[_Part], shifts: Sequence[tuple[int, int, int]]) -> None:
        """Refuse a repeat of varying count followed by another that can take over its text
        (``shifts`` are the parts' `_shifts`)."""
        split = _movable_split([part.shape for part in parts], shifts)
        if split is not None:
            raise self._refuse(
                "repeats in a row can match the same text",
                [(later.op, later.av) for later in parts[split[0] : split[1] + 1]],
            )

    def _check_lookarounds(self, parts: list[_Part]) -> None:
        """Refuse lookarounds after a varying part that take what runs again at its backtracking steps past the limit."""
        reruns = _reruns([part.shape for part in parts])
        for index, part in enumerate(parts):
            before = reruns[index]
            if before is not None and part.shape.looks and before + part.shape.looks > _LONG_FIXED:
                start = next(number for number, earlier in enumerate(parts) if earlier.shape.varies)
                raise self._refuse(self._LOOKAROUND, [(later.op, later.av) for later in parts[start : index + 1]])

    def _refuse(self, problem: str, items: Sequence[Any]) -> UnsafePattern:
        text = _render(items)
        where = f" at offset {self._pattern.find(text)}" if self._pattern.count(text) == 1 else ""
        if len(text) > _RENDERED:
            text = text[: _RENDERED - 3] + "..."
        return UnsafePattern(f"{problem}: '{text}'{where}")


def _concat(shapes: Sequence[_Shape]) -> _Shape:
    return _Shape(
        nullable=all(shape.nullable for shape in shapes),
        varies=any(shape.varies for shape in shapes),
        first=_edge(shapes, lambda shape: shape.first),
        last=_edge(reversed(shapes), lambda shape: shape.last),
        chars=_union(shape.chars for shape in shapes),
        tail=_union(_run_to_end(shape.tail, shapes[index + 1 :]) for index, shape in enumerate(shapes)),
        looks=min(sum(shape.looks for shape in shapes), _UNBOUNDED),
        work=min(sum(shape.work for shape in shapes), _UNBOUNDED),
        rerun=_reruns(shapes)[-1] or 0,
        shortest=min(sum(shape.shortest for shape in shapes), _UNBOUNDED),
        longest=min(sum(shape.longest for shape in shapes), _UNBOUNDED),
        ways=min(math.prod(shape.ways for shape in shapes), _UNBOUNDED),
    )


def _reruns(shapes: Sequence[_Shape]) -> list[int | None]:
    """The most steps that run again at each backtracking step of a varying part among consecutive shapes.

    Entry ``i`` counts them up to shape ``i``, and the last entry up to the end; None before any
    varying part. What runs again after a varying part's own backtracking steps inside it
    counts too.
    """
    total: int | None = None
    totals = [total]
    for shape in shapes:
        if shape.varies:
            total = shape.rerun if total is None else max(total + _rerun_cost(shape), shape.rerun)
        elif total is not None:
            total += _rerun_cost(shape)
        totals.append(None if total is None else min(total, _UNBOUNDED))
    return totals


def _rerun_cost(shape: _Shape) -> int:
    """What a part costs each time it runs again: all of it at a fixed count, else its lookarounds.

    What else a part of varying count does when it runs again, `_movable_split` judges.
    """
    return shape.looks if shape.varies else max(shape.work, shape.looks)


def _edge(shapes: Iterable[_Shape], side: Callable[[_Shape], tuple[_Atom, ...]]) -> tuple[_Atom, ...]:
    """The characters consecutive shapes can start (or end) with, reading them from that side."""
    atoms: list[_Atom] = []
    for shape in shapes:
        atoms.extend(side(shape))
        if not shape.nullable:
            break
    return tuple(dict.fromkeys(atoms))


def _movable_split(shapes: Sequence[_Shape], shifts: Iterable[tuple[int, int, int]]) -> tuple[int, int] | None:
    """Where a repeat of varying count is followed by another that can take over its text, if anywhere.

    A part of fixed count counts as a repeat too once the parts after the first, up to it, cost
    more than `_LONG_FIXED` steps: they run again at each shift (``[ab]*[ab]{64}[ab]{64}``).
    Returns the indices of the two repeats.
    """
    for start, end, rerun in shifts:
        if shapes[end].varies or rerun > _LONG_FIXED:
            return start, end
    return None


def _shifted_ways(shapes: Sequence[_Shape], shifts: Iterable[tuple[int, int, int]]) -> int:
    """How many more ways consecutive shapes have to match the same text, for the parts of
    different lengths that a varying part before them can shift into: one per length
    (``(?:|b)(?:c|bc)`` matches ``bc`` two ways). A varying part that can be shifted into is
    refused before (`_movable_split`)."""
    ends = {end for _, end, _ in shifts}
    return math.prod(min(shapes[end].longest - shapes[end].shortest + 1, _UNBOUNDED) for end in ends)


def _shifts(shapes: Sequence[_Shape]) -> Iterable[tuple[int, int, int]]:
    """Each pair of a part whose end can move and a later part it can shift into, with what runs
    again between them at each shift: ``(start, end, rerun)``.

    For the split between the two to move, each part in between must shift with it: a part
    that cannot match a character of those before it stops the shift (``[a-z]*@[a-z]*``);
    parts that can match empty text do not. ``[A-Z]?[a-zA-Z][a-z]*`` splits ``Ab`` two ways
    although its two repeats share no character. The first part's last character moves too,
    so one that nothing after it matches stops the shift (``(?:\\w+\\.)*\\w+``).
    """
    for start, pumped in enumerate(shapes):
        run = pumped.tail
        if not run:
            continue
        between: list[_Shape] = []
        rerun = pumped.rerun
        for end in range(start + 1, len(shapes)):
            shape = shapes[end]
            rerun += _rerun_cost(shape)
            if (
                _overlap(shape.first, run)
                and _overlap(pumped.last, _union(later.chars for later in shapes[start + 1 : end + 1]))
                and _shifts_into(between, shape)
            ):
                yield start, end, rerun
            if not shape.nullable:
                if not _overlap(shape.chars, run):
                    break
                between.append(shape)
            run = _union((run, shape.chars))


def _alternative_ways(alternatives: Sequence[_Shape], runs: Sequence[tuple[tuple[_Atom, ...], ...] | None]) -> int:
    """Most ways alternatives can match the same text: the ways of those that may match what one
    of them matches, together. Alternatives that start alike may; two runs of single characters
    only when they are as long and alike at every place (``Jan|Jun`` never match the same text)."""

    def alike(one: int, other: int) -> bool:
        if not _overlap(alternatives[one].first, alternatives[other].first):
            return False
        first, second = runs[one], runs[other]
        if first is None or second is None:
            return True
        return len(first) == len(second) and all(map(_overlap, first, second))

    return max(
        sum(alternatives[other].ways for other in range(len(alternatives)) if other == one or alike(one, other))
        for one in range(len(alternatives))
    )


def _characters(parts: Sequence[_Part]) -> tuple[tuple[_Atom, ...], ...] | None:
    """The characters each place of a run of single characters can be (anchors aside); None for
    anything else."""
    if not all(part.op in _CHAR_OPS or part.op is _c.AT for part in parts):
        return None
    return tuple(part.shape.first for part in parts if part.op in _CHAR_OPS)


def _shifts_into(between: list[_Shape], later: _Shape) -> bool:
    """Whether every part in ``between`` can match a character of some part after it, up to ``later``."""
    return all(
        _overlap(middle.chars, _union(after.chars for after in [*between[index + 1 :], later]))
        for index, middle in enumerate(between)
    )


def _run_to_end(run: tuple[_Atom, ...], later: Sequence[_Shape]) -> tuple[_Atom, ...]:
    """The characters a varying repeat's end can shift through ``later`` to the end, or none when it cannot."""
    for shape in later if run else ():
        if shape.nullable:
            continue
        if not _overlap(shape.chars, run):
            return ()
        run = _union((run, shape.chars))
    return run


def _union(groups: Iterable[tuple[_Atom, ...]]) -> tuple[_Atom, ...]:
    return tuple(dict.fromkeys(atom for group in groups for atom in group))


def _overlap(left: tuple[_Atom, ...], right: tuple[_Atom, ...]) -> bool:
    return any(_atoms_overlap(a, b) for a in left for b in right)


@lru_cache(maxsize=4096)
def _atoms_overlap(a: _Atom, b: _Atom) -> bool:
    """Whether some character is in both sets; true whenever that cannot be ruled out."""
    if a.points is not None:
        return any(_member(b, point) for point in a.points)
    if b.points is not None:
        return any(_member(a, point) for point in b.points)
    if a.category and b.category and not (a.flags ^ b.flags) & re.ASCII:
        return frozenset((a.category, b.category)) not in _DISJOINT_CATEGORIES
    return True


def _member(atom: _Atom, point: int) -> bool:
    return _class_pattern(atom.source, atom.flags).fullmatch(chr(point)) is not None


@lru_cache(maxsize=1024)
def _class_pattern(source: str, flags: int) -> re.Pattern[str]:
    return re.compile(source, flags)


def _atoms(op: Any, av: Any, flags: int) -> tuple[_Atom, ...]:
    """The character sets a single-character item matches (a class splits into its parts)."""
    if op is _c.LITERAL:
        return (_ranges_atom([(av, av)], flags),)
    if op is _c.NOT_LITERAL:
        return (_Atom(f"[^{_class_char(av)}]", flags, None, None),)
    if op is _c.ANY:
        return (_Atom(".", flags, None, None),)
    atoms: list[_Atom] = []
    ranges: list[tuple[int, int]] = []
    for item_op, item_av in av:
        if item_op is _c.LITERAL:
            ranges.append((item_av, item_av))
        elif item_op is _c.RANGE:
            ranges.append(item_av)
        elif item_op is _c.CATEGORY and str(item_av) in _CATEGORIES:
            letter = _CATEGORIES[str(item_av)]
            atoms.append(_Atom("\\" + letter, flags, None, letter))
        elif item_op is not _c.NEGATE:
            raise UnsafePattern(f"unsupported character set item {item_op}")
    if av and av[0][0] is _c.NEGATE:
        return (_Atom(_render_class(av), flags, None, None),)
    if ranges:
        atoms.append(_ranges_atom(ranges, flags))
    return tuple(atoms)


def _ranges_atom(ranges: list[tuple[int, int]], flags: int) -> _Atom:
    spans = (_class_char(low) if low == high else f"{_class_char(low)}-{_class_char(high)}" for low, high in ranges)
    source = "[" + "".join(spans) + "]"
    points = None
    if sum(high - low + 1 for low, high in ranges) <= _ENUMERABLE:
        members = frozenset(point for low, high in ranges for point in range(low, high + 1))
        folds = flags & re.IGNORECASE and any(point > 127 or chr(point).isalpha() for point in members)
        points = None if folds else members
    return _Atom(source, flags, points, None)


def _render(items: Sequence[Any]) -> str:
    """Regex text for parsed items, as the parser normalised them (for messages)."""
    if len(items) > 1 and items[-1][0] is _c.BRANCH:
        prefix = list(items[:-1])
        return "|".join(_render([*prefix, *alternative.data]) for alternative in items[-1][1][1])
    return "".join(_render_item(op, av, alone=len(items) == 1) for op, av in items)


def _render_item(op: Any, av: Any, *, alone: bool) -> str:
    if op is _c.LITERAL:
        char = chr(av)
        return "\\" + char if char in _SPECIAL else _printable(av)
    if op is _c.NOT_LITERAL:
        return f"[^{_class_char(av)}]"
    if op is _c.ANY:
        return "."
    if op is _c.IN:
        return _render_class(av)
    if op is _c.AT:
        return _ANCHORS.get(str(av), "")
    if op is _c.BRANCH:
        text = "|".join(_render(alternative.data) for alternative in av[1])
        return text if alone else f"(?:{text})"
    if op is _c.SUBPATTERN:
        group, add, remove, body = av
        on = "".join(letter for flag, letter in _FLAG_LETTERS if add & flag)
        off = "".join(letter for flag, letter in _FLAG_LETTERS if remove & flag)
        opening = "(" if group is not None else f"(?{on}{'-' + off if off else ''}:"
        return opening + _render(body.data) + ")"
    if op in _REPEAT_OPS:
        return _render_repeat(op, av)
    if op is _c.ATOMIC_GROUP:
        return f"(?>{_render(av.data)})"
    if op in _LOOKAROUND_OPS:
        direction, body = av
        kind = ("=" if op is _c.ASSERT else "!") if direction == 1 else ("<=" if op is _c.ASSERT else "<!")
        return f"(?{kind}{_render(body.data)})"
    if op is _c.GROUPREF:
        return f"\\{av}"
    if op is _c.GROUPREF_EXISTS:
        return f"(?({av[0]})...)"
    return f"<{op}>"


def _render_repeat(op: Any, av: Any) -> str:
    low, high, body = av
    text = _render(body.data)
    single = len(body.data) == 1 and (body.data[0][0] in _CHAR_OPS or body.data[0][0] is _c.SUBPATTERN)
    if not single:
        text = f"(?:{text})"
    if high == _c.MAXREPEAT:
        quantifier = {0: "*", 1: "+"}.get(low, f"{{{low},}}")
    elif low == high:
        quantifier = f"{{{low}}}"
    else:
        quantifier = "?" if (low, high) == (0, 1) else f"{{{low},{high}}}"
    suffix = "?" if op is _c.MIN_REPEAT else "+" if op is _c.POSSESSIVE_REPEAT else ""
    return text + quantifier + suffix


def _render_class(items: Sequence[Any]) -> str:
    if len(items) == 1 and items[0][0] is _c.CATEGORY:
        return "\\" + _CATEGORIES.get(str(items[0][1]), "?")
    body = []
    for op, av in items:
        if op is _c.NEGATE:
            body.append("^")
        elif op is _c.RANGE:
            body.append(f"{_class_char(av[0])}-{_class_char(av[1])}")
        elif op is _c.CATEGORY:
            body.append("\\" + _CATEGORIES.get(str(av), "?"))
        else:
            body.append(_class_char(av))
    return "[" + "".join(body) + "]"


def _class_char(point: int) -> str:
    return "\\" + chr(point) if chr(point) in _CLASS_SPECIAL else _printable(point)


def _printable(point: int) -> str:
    if 0x20 <= point < 0x7F:
        return chr(point)
    if point <= 0xFF:
        return f"\\x{point:02x}"
    return f"\\u{point:04x}" if point <= 0xFFFF else f"\\U{point:08x}"
