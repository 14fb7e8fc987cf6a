"""The style lexicon: the word lists behind the course's style measures, and the measures.

BLEU and chrF reward overlap with the reference. Modern and Shakespearean
sentences share most words, so copying the input scores well on both: they
cannot tell "learned the style" from "learned to copy". A measure a reader can
check by eye: the share of outputs that use at least one mark of the style
(archaic forms for Shakespeare; pirate forms and informal marks for Session 3's
other two tasks). `metrics` re-exports every name here.
"""

from __future__ import annotations

import re

ARCHAIC_WORDS = frozenset(
    """thou thee thy thine thyself ye art hath doth dost hast shalt wilt canst couldst wouldst shouldst
    didst wast wert hadst mayst mightst 'tis 'twas 'twere ne'er e'er o'er wherefore whither whence hither
    thither prithee methinks perchance mayhap forsooth ere morrow anon nay unto hearken begone alas
    goest knowest sayest speakest""".split()
)
# -eth verbs (goeth, speaketh) are archaic; these common words only end like them.
_NOT_ETH = frozenset("teeth beth seth kenneth elizabeth macbeth breath beneath".split())


def archaic_forms(text: str) -> list[str]:
    """The archaic forms in `text`, lower-cased, in order: 'Dost thou weep?' -> ['dost', 'thou']."""
    words = re.findall(r"[a-z]*'?[a-z]+(?:'[a-z]+)?", text.lower().replace("\u2019", "'"))
    return [w for w in words if w in ARCHAIC_WORDS or (w.endswith("eth") and len(w) > 5 and w not in _NOT_ETH)]


def style_share(texts: list[str]) -> float:
    """Share (0..1) of texts that use at least one archaic form (see ARCHAIC_WORDS)."""
    if not texts:
        raise ValueError("style_share needs at least one text.")
    return sum(bool(archaic_forms(t)) for t in texts) / len(texts)


# Session 3's other two tasks get measures of the same kind: a share of outputs
# that carry the task's marks, checkable by eye.
PIRATE_WORDS = frozenset(
    """ahoy arr arrr avast aye matey mateys hearty hearties scallywag scallywags landlubber landlubbers
    booty grog grub doubloons cap'n shanty plunder plundered bilge thankee yer""".split()
)  # not 'ye': Shakespeare says it too, and the two measures should not count each other's outputs


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z]*'?[a-z]+(?:'[a-z]*)?", text.lower().replace("\u2019", "'"))


def pirate_forms(text: str) -> list[str]:
    """Pirate forms in `text`, lower-cased, in order: 'Ahoy, matey! Where be ye headin'?' ->
    ['ahoy', 'matey', "headin'"]. Words ending in a dropped g (sailin', lookin') count too."""
    return [w for w in _words(text) if w in PIRATE_WORDS or (w.endswith("in'") and len(w) > 4)]


def pirate_share(texts: list[str]) -> float:
    """Share (0..1) of texts that use at least one pirate form (see PIRATE_WORDS)."""
    if not texts:
        raise ValueError("pirate_share needs at least one text.")
    return sum(bool(pirate_forms(t)) for t in texts) / len(texts)


# Chat-message habits a formal register does not use: abbreviations, slang, fillers and
# apostrophe-less contractions (cant, whats). 'ill' and 'lets' are left out: they are words.
INFORMAL_WORDS = frozenset(
    """u ur r thx thanx pls plz gonna wanna gotta lol ugh hey yeah yep nope ok okay tmrw asap sry btw omg
    cya cant dont wont whats im ive youre thats isnt didnt doesnt hows whos kinda sorta""".split()
)


def informal_marks(text: str) -> list[str]:
    """Why `text` is not formal: informal words, contractions (n't, 'll, 're, 'm, 've, 'd), a
    lower-case start or a missing final . ? !; [] for a formal sentence."""
    stripped = text.strip()
    if not stripped:
        return ["empty"]
    marks = [w for w in _words(stripped) if w in INFORMAL_WORDS]
    marks += re.findall(r"[a-z](n't|'ll|'re|'m|'ve|'d)\b", stripped.lower().replace("\u2019", "'"))
    if not stripped[0].isupper():
        marks.append("lower-case start")
    if stripped[-1] not in ".?!":
        marks.append("no final punctuation")
    return marks


def formal_share(texts: list[str]) -> float:
    """Share (0..1) of texts with no informal mark (see informal_marks)."""
    if not texts:
        raise ValueError("formal_share needs at least one text.")
    return sum(not informal_marks(t) for t in texts) / len(texts)
