"""Training utterances for the intent model, derived from a policy's intent examples.

Policies write intent examples as regular expressions for the keyword recogniser (`where is my (order|package)`).
The embedding model needs sentences, so each pattern is expanded into the literal strings it matches: alternatives
are enumerated, optional parts taken and left out, wildcards become a space (`.?` an apostrophe, as in `can.?t`),
character classes a representative character, anchors and look-arounds nothing. Pure Python, no model needed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from re import _constants as C  # type: ignore[attr-defined]
from re import _parser as P  # type: ignore[attr-defined]
from typing import Any

from agents.dialogue.model import Policy

#: Prefix of the classes learned from pattern-triggered dialogues (never returned as an intent).
PATTERN_CLASS = "pattern:"
#: At most this many strings per pattern (an even spread over all the expansions when there are more).
DEFAULT_LIMIT = 48
_WILDCARD = object()  # a run of "anything": becomes a space
_SPACES = re.compile(r"\s+")
_CATEGORY_CHAR = {C.CATEGORY_DIGIT: "1", C.CATEGORY_SPACE: " ", C.CATEGORY_WORD: "", C.CATEGORY_NOT_DIGIT: "",
                  C.CATEGORY_NOT_SPACE: "", C.CATEGORY_NOT_WORD: " "}


def _spread(items: Sequence[str], limit: int) -> list[str]:
    """`limit` items spread evenly over `items` (all of them when there are few)."""
    if len(items) <= limit:
        return list(items)
    step = len(items) / limit
    return [items[int(i * step)] for i in range(limit)]


def _product(left: list[str], right: list[str], limit: int) -> list[str]:
    combined = [a + b for a in left for b in right] if len(left) * len(right) <= limit * 8 else [
        left[i % len(left)] + right[i % len(right)] for i in range(max(len(left), len(right), limit))]
    return _spread(list(dict.fromkeys(combined)), limit)


def _class_char(items: list[tuple[Any, Any]]) -> str:
    """A representative character of a class: its first literal or range start, or what its category stands for."""
    for op, value in items:
        if op is C.NEGATE:
            return ""
        if op is C.LITERAL:
            return chr(value)
        if op is C.RANGE:
            return chr(value[0])
        if op is C.CATEGORY:
            return _CATEGORY_CHAR.get(value, "")
    return ""


def _is_wildcard(sub: Any) -> bool:
    """A sub-pattern that stands for arbitrary text (`.`, `\\w`, `[^:]`): rendered as a gap, never enumerated."""
    return len(sub) == 1 and (sub[0][0] in (C.ANY, C.NOT_LITERAL) or (
        sub[0][0] is C.IN and (any(op is C.NEGATE for op, _ in sub[0][1])
                               or any(op is C.CATEGORY and value is C.CATEGORY_WORD for op, value in sub[0][1]))))


def _expand(parsed: Any, limit: int) -> list[str]:
    results = [""]
    for op, value in parsed:
        options: list[str]
        if op is C.LITERAL:
            options = [chr(value)]
        elif op is C.IN:  # `(a|b)` parses as the class [ab]: each of its literals, else a representative
            literals = [chr(v) for o, v in value if o is C.LITERAL]
            options = literals if len(literals) == len(value) else [_class_char(value)]
        elif op in (C.ANY, C.NOT_LITERAL):
            options = [" "]
        elif op is C.BRANCH:
            options = []
            for alternative in value[1]:
                options.extend(_expand(alternative, limit))
            options = _spread(list(dict.fromkeys(options)), limit)
        elif op is C.SUBPATTERN:
            options = _expand(value[-1], limit)
        elif op in (C.MAX_REPEAT, C.MIN_REPEAT, getattr(C, "POSSESSIVE_REPEAT", None)):
            low, high, sub = value
            if _is_wildcard(sub):
                # `.?` is nearly always an optional apostrophe (can.?t, that.?s); longer gaps separate words.
                options = ["'", ""] if high == 1 and sub[0][0] is C.ANY else [" "]
            else:
                inner = _expand(sub, limit)
                counts = sorted({low, min(high, max(low, 1))})
                options = []
                for count in counts:
                    repeated = [""]
                    for _ in range(count):
                        repeated = _product(repeated, inner, limit)
                    options.extend(repeated)
        elif op is C.ATOMIC_GROUP:
            options = _expand(value, limit)
        else:  # AT (anchors, \b), ASSERT / ASSERT_NOT (look-arounds), GROUPREF, ...: match no text
            continue
        results = _product(results, options, limit)
    return results


def expand_pattern(pattern: str | re.Pattern[str], limit: int = DEFAULT_LIMIT) -> list[str]:
    """The sentences a regex example stands for (at most `limit`), whitespace-normalised, without duplicates."""
    source = pattern.pattern if isinstance(pattern, re.Pattern) else pattern
    flags = pattern.flags if isinstance(pattern, re.Pattern) else 0
    try:
        parsed = P.parse(source, flags)
    except re.error:
        return []
    found: list[str] = []
    for text in _expand(parsed, limit):
        clean = _SPACES.sub(" ", text).strip(" '")
        if clean and any(ch.isalnum() for ch in clean):
            found.append(clean)
    return _spread(list(dict.fromkeys(found)), limit)


def intent_examples(policy: Policy, limit: int = DEFAULT_LIMIT) -> dict[str, list[str]]:
    """Intent name -> training sentences expanded from the policy's intent examples (FAQ entries included, as
    their `faq_<id>` intents), in declaration order. An intent none of whose examples expand is left out."""
    examples: dict[str, list[str]] = {}
    for intent in policy.intents:
        sentences: list[str] = []
        for pattern in intent.examples:
            sentences.extend(expand_pattern(pattern, limit))
        if sentences:
            examples[intent.name] = list(dict.fromkeys(sentences))
    return examples


def pattern_examples(policy: Policy, limit: int = DEFAULT_LIMIT) -> dict[str, list[str]]:
    """`pattern:<dialogue id>` -> sentences of the dialogues triggered by a regex rather than an intent (a greeting:
    `hi|hello`). The model learns them as classes of their own so that such a turn is not pulled towards the nearest
    intent ("hello" is close to "bye"); a turn nearest to one gets no intent, and the policy's pattern decides."""
    examples: dict[str, list[str]] = {}
    for dialogue in policy.dialogues:
        sentences = [s for trigger in dialogue.triggers if trigger.pattern is not None
                     for s in expand_pattern(trigger.pattern, limit)]
        if sentences:
            examples[f"{PATTERN_CLASS}{dialogue.id}"] = list(dict.fromkeys(sentences))
    return examples


def training_sets(policies: Iterable[Policy], limit: int = DEFAULT_LIMIT) -> dict[str, dict[str, Any]]:
    """Agent -> {"version": policy version, "intents": intent -> sentences, "patterns": pattern class ->
    sentences}: what a served intent model learns.

    Plain data, so it travels to Ray replicas (which need no policy files).
    """
    return {policy.agent: {"version": policy.version, "intents": intent_examples(policy, limit),
                           "patterns": pattern_examples(policy, limit)} for policy in policies}


def flatten(examples: Mapping[str, Sequence[str]]) -> list[tuple[str, str]]:
    """(intent, sentence) pairs of a training set."""
    return [(intent, sentence) for intent, sentences in examples.items() for sentence in sentences]
