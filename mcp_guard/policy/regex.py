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
``Pattern.fullmatch``. So does the analysis itself: it takes time at most quadratic in the
length of the pattern, of at most `MAX_PATTERN_LENGTH` characters.
"""

from __future__ import annotations

import bisect
import functools
import importlib
import math
import operator
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
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
        self._atoms = _AtomIndex()

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
        sets = _CharSets(shapes, self._atoms)
        shifts = _find_shifts(sets, len(shapes))
        self._check_runs(parts, shifts.split)
        self._check_lookarounds(parts)
        shape = _concat(sets)
        ways = min(shape.ways * _shifted_ways(shapes, shifts.ends), _UNBOUNDED)
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
            # A shift from a later repetition is one from the first, moved along (and cut short).
            shifts = _find_shifts(_CharSets(written_out, self._atoms), len(parts))
            if shifts.split is not None:
                raise self._refuse(
                    "repeated part holds a repeat whose end can move into the next repetition, "
                    "so repetitions can split the same text in many ways",
                    [(op, av)],
                )
            if body.ways > 1 or _shifted_ways(written_out, shifts.ends) > 1:
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
        sets = _CharSets(alternatives, self._atoms)
        alike = any(
            sets.near_first[index] & sets.first[other] for index in range(len(alternatives)) for other in range(index)
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
            ways=min(_alternative_ways(sets, runs), _UNBOUNDED),
        )

    def _check_runs(self, parts: list[_Part], split: tuple[int, int] | None) -> None:
        """Refuse a repeat of varying count followed by another that can take over its text
        (``split``, from `_find_shifts`)."""
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


def _concat(sets: _CharSets) -> _Shape:
    shapes = sets.shapes
    return _Shape(
        nullable=all(shape.nullable for shape in shapes),
        varies=any(shape.varies for shape in shapes),
        first=_edge(shapes, lambda shape: shape.first),
        last=_edge(reversed(shapes), lambda shape: shape.last),
        chars=_union(shape.chars for shape in shapes),
        tail=sets.index.atoms(functools.reduce(operator.or_, map(sets.run_to_end, range(len(shapes))), 0)),
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


class _AtomIndex:
    """The atoms met in one pattern, numbered, so that a set of atoms is a bit mask: the
    characters of many parts together are one integer, and whether they overlap a set one ``&``.
    Which atoms overlap which is worked out once for each pair, when first needed."""

    def __init__(self) -> None:
        self._atoms: list[_Atom] = []
        self._numbers: dict[_Atom, int] = {}
        self._holding: dict[int, int] = {}  # for each member of a set listed by its members, the sets holding it
        self._unlisted: list[int] = []  # the sets not listed by their members, in order
        self._near: dict[_Atom, tuple[int, int]] = {}  # the atoms each overlaps, among the first so many

    def mask(self, atoms: Iterable[_Atom]) -> int:
        mask = 0
        for atom in atoms:
            number = self._numbers.get(atom)
            if number is None:
                number = self._numbers[atom] = len(self._atoms)
                self._atoms.append(atom)
                for point in atom.points or ():
                    self._holding[point] = self._holding.get(point, 0) | 1 << number
                if atom.points is None:
                    self._unlisted.append(number)
            mask |= 1 << number
        return mask

    def atoms(self, mask: int) -> tuple[_Atom, ...]:
        return tuple(atom for number, atom in enumerate(self._atoms) if mask >> number & 1)

    def near(self, atoms: Iterable[_Atom]) -> int:
        """The mask of the atoms that overlap one of ``atoms``: ``near(a) & mask(b)`` is nonzero when
        an atom of ``a`` and one of ``b`` overlap (`_atoms_overlap`)."""
        return functools.reduce(operator.or_, map(self._near_one, atoms), 0)

    def _near_one(self, atom: _Atom) -> int:
        """The mask of the atoms that overlap ``atom``, brought up to date with those numbered since.

        Sets listed by all their members overlap when they share one, so those are found through
        their members; any other pair is compared once, the first time it is needed.
        """
        self.mask((atom,))
        near, known = self._near.get(atom, (0, 0))
        if known < len(self._atoms):
            if atom.points is not None:
                near = functools.reduce(operator.or_, (self._holding[point] for point in atom.points), near)
                others: Iterable[int] = self._unlisted[bisect.bisect_left(self._unlisted, known) :]
            else:
                others = range(known, len(self._atoms))
            for other in others:
                if _atoms_overlap(atom, self._atoms[other]):
                    near |= 1 << other
            self._near[atom] = near, len(self._atoms)
        return near


class _CharSets:
    """The characters of consecutive shapes, as masks of an `_AtomIndex`."""

    def __init__(self, shapes: Sequence[_Shape], index: _AtomIndex) -> None:
        self.shapes = shapes
        self.index = index
        self.chars = [index.mask(shape.chars) for shape in shapes]
        self.first = [index.mask(shape.first) for shape in shapes]
        self.near_chars = [index.near(shape.chars) for shape in shapes]
        self.near_first = [index.near(shape.first) for shape in shapes]

    def run_to_end(self, start: int) -> int:
        """The characters the varying end of shape ``start`` can shift through the shapes after it
        to the end, or none when it cannot."""
        run = self.index.mask(self.shapes[start].tail)
        for later in range(start + 1, len(self.shapes)) if run else ():
            if self.shapes[later].nullable:
                continue
            if not self.near_chars[later] & run:
                return 0
            run |= self.chars[later]
        return run


class _Shifts(NamedTuple):
    split: tuple[int, int] | None  # a repeat of varying count and a later one that can take over its text
    ends: frozenset[int]  # the parts shifted into before ``split``: all of them when there is none


def _find_shifts(sets: _CharSets, starts: int) -> _Shifts:
    """The `_shifts` from the first ``starts`` shapes, up to the first where a repeat of varying
    count is followed by another that can take over its text.

    A part of fixed count counts as a repeat too once the parts after the first, up to it, cost
    more than `_LONG_FIXED` steps: they run again at each shift (``[ab]*[ab]{64}[ab]{64}``).
    """
    ends: set[int] = set()
    for start, end, rerun in _shifts(sets, starts):
        if sets.shapes[end].varies or rerun > _LONG_FIXED:
            return _Shifts((start, end), frozenset(ends))
        ends.add(end)
    return _Shifts(None, frozenset(ends))


def _shifted_ways(shapes: Sequence[_Shape], ends: Iterable[int]) -> int:
    """How many more ways consecutive shapes have to match the same text, for the parts of
    different lengths that a varying part before them can shift into (``ends``): one per length
    (``(?:|b)(?:c|bc)`` matches ``bc`` two ways). A varying part that can be shifted into is
    refused before (`_find_shifts`)."""
    return math.prod(min(shapes[end].longest - shapes[end].shortest + 1, _UNBOUNDED) for end in ends)


def _shifts(sets: _CharSets, starts: int) -> Iterator[tuple[int, int, int]]:
    """Each pair of a shape among the first ``starts`` whose end can move and a later shape it can
    shift into, with what runs again between them at each shift: ``(start, end, rerun)``, in order.

    For the split between the two to move, each part in between must shift with it: a part
    that cannot match a character of those before it stops the shift (``[a-z]*@[a-z]*``);
    parts that can match empty text do not. ``[A-Z]?[a-zA-Z][a-z]*`` splits ``Ab`` two ways
    although its two repeats share no character. The first part's last character moves too,
    so one that nothing after it matches stops the shift (``(?:\\w+\\.)*\\w+``).

    Each pair costs a few integer operations, and each part that stops shifts into a later one
    is found once for all the starts before it, so even the longest patterns are judged quickly.
    """
    shapes = sets.shapes
    stuck: dict[int, int] = {}  # for each end: the last part between that cannot pass a character on to it

    def last_stuck(start: int, end: int) -> int:
        """The last part after ``start`` and before ``end`` that can match a character of no part
        after it, up to ``end`` (-1 if none); starts come in order, so the first answer serves
        the later ones."""
        if end not in stuck:
            stuck[end] = -1
            after = sets.chars[end]
            for middle in range(end - 1, start, -1):
                if shapes[middle].nullable:
                    continue
                if not sets.near_chars[middle] & after:
                    stuck[end] = middle
                    break
                after |= sets.chars[middle]
        return stuck[end]

    for start in range(starts):
        pumped = shapes[start]
        run = sets.index.mask(pumped.tail)  # the characters that can shift: its tail's and those of the parts passed
        near_last = sets.index.near(pumped.last)
        last_moves = False  # whether a part passed can take the first part's last character
        rerun = pumped.rerun
        for end in range(start + 1, len(shapes)) if run else ():
            shape = shapes[end]
            rerun += _rerun_cost(shape)
            last_moves = last_moves or bool(near_last & sets.chars[end])
            if last_moves and sets.near_first[end] & run and last_stuck(start, end) <= start:
                yield start, end, rerun
            if not shape.nullable and not sets.near_chars[end] & run:
                break
            run |= sets.chars[end]


def _alternative_ways(sets: _CharSets, runs: Sequence[tuple[tuple[_Atom, ...], ...] | None]) -> int:
    """Most ways alternatives (``sets.shapes``) can match the same text: the ways of those that may
    match what one of them matches, together. Alternatives that start alike may; two runs of
    single characters only when they are as long and alike at every place (``Jan|Jun`` never
    match the same text)."""
    alternatives = sets.shapes
    places = [
        None if run is None else [(sets.index.near(place), sets.index.mask(place)) for place in run] for run in runs
    ]

    def alike(one: int, other: int) -> bool:
        if not sets.near_first[one] & sets.first[other]:
            return False
        first, second = places[one], places[other]
        if first is None or second is None:
            return True
        return len(first) == len(second) and all(
            near & mask for (near, _), (_, mask) in zip(first, second, strict=True)
        )

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


def _union(groups: Iterable[tuple[_Atom, ...]]) -> tuple[_Atom, ...]:
    return tuple(dict.fromkeys(atom for group in groups for atom in group))


@functools.lru_cache(maxsize=4096)
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


@functools.lru_cache(maxsize=1024)
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
