"""Paraphrase pools of the version-2 corpus: 5-10 wordings per slot (data/DATASHEET.md).

Each slot is a tuple of ``str.format`` templates; a CoT draws one per slot from its seeded text
stream, and the base split (``plain``) always takes the first, so the wording variety is SFT-only.
Some wordings carry information: "since" justifies a carry or a folded constant, "but" comes
before a borrow. Column headers name the column ("Tens:"), they are not connectors. Every
check and alternative opener is led by a marker of ``infra_lib.segments.EXPLORATORY_MARKERS``
and every answer line matches ``ANSWER_LINE`` (both tested).
"""
from __future__ import annotations

POOLS: dict[str, tuple[str, ...]] = {
    # ---------------------------------------------------------------- math
    "math_open": (
        "First, work out {e}.",
        "Let's work out {e} column by column.",
        "We need {e}.",
        "To find {e}, go column by column.",
        "Start with {e}.",
        "We compute {e}.",
        "Set up {e} in columns.",
    ),
    "math_next": (
        "Next, work out {e}.",
        "Then take {e}.",
        "Now {e}.",
        "After that, {e}.",
        "Next comes {e}.",
    ),
    "column_header": ("{C}:", "{C} column:", "In the {c}:", "The {c}:", "{C} place:"),
    "add_plain": (
        "{e} = {s}, write {s}.",
        "{e} = {s}; write {s}.",
        "{e} makes {s}, write {s}.",
        "{e} gives {s}, so write {s}.",
        "{e} = {s}, so the digit is {s}.",
        "we get {e} = {s}, write {s}.",
    ),
    "add_carry": (
        "{e} = {s}, write {d}, carry {k}.",
        "{e} = {s}; since {s} is 10 or more, write {d} and carry {k}.",
        "{e} = {s}, which is more than 9, so write {d} and carry {k}.",
        "{e} = {s}: write {d} and carry {k}, since {s} has two digits.",
        "{e} makes {s}, so write {d} and carry {k}.",
        "{e} = {s}, so write {d}, carry {k}.",
    ),
    "bring_down": (
        "bring down {d}.",
        "nothing to add, write {d}.",
        "only {d}, so write {d}.",
        "just {d}; write {d}.",
        "{d} stays, write {d}.",
    ),
    "final_carry": (
        "write the carry {k}.",
        "the carry {k} goes down.",
        "bring down the carry {k}.",
        "only the carry {k} is left, write it.",
        "write {k} from the carry.",
    ),
    "sub_plain": (
        "{x} - {e} = {d}, write {d}.",
        "{x} - {e} = {d}; write {d}.",
        "{x} - {e} leaves {d}, write {d}.",
        "{x} - {e} gives {d}, so write {d}.",
        "take {e} from {x}: {d}, write {d}.",
    ),
    "sub_borrow": (
        "{x} - {e}, but {x} is less than {n}, so borrow 10: {x10} - {e} = {d}, write {d}.",
        "we need {x} - {e}, but {x} < {n}; borrow 10 to get {x10} - {e} = {d}, write {d}.",
        "{x} is smaller than {n}, but we can borrow 10: {x10} - {e} = {d}, write {d}.",
        "{x} - {e} would go below zero, but borrowing 10 gives {x10} - {e} = {d}; write {d}.",
        "{x} - {e} is too small, so borrow 10: {x10} - {e} = {d}, write {d}.",
    ),
    "op_result": (
        "So {e} = {r}.",
        "Therefore {e} = {r}.",
        "Thus {e} = {r}.",
        "Hence {e} = {r}.",
        "That gives {e} = {r}.",
        "This means {e} = {r}.",
    ),
    "chain_result": (
        "Therefore {e} = {r}.",
        "So {e} = {r}.",
        "Putting it together, {e} = {r}.",
        "Altogether, {e} = {r}.",
        "In total, {e} = {r}.",
    ),
    "answer": (
        "The answer is {r}.",
        "So the answer is {r}.",
        "Therefore the answer is {r}.",
        "Thus the answer is {r}.",
        "The final answer is {r}.",
    ),
    "math_check": (
        "Wait, let me check {e} column by column.",
        "Wait, let me check the columns of {e} again.",
        "Let me double-check {e} one column at a time.",
        "Hold on, let me verify {e} column by column.",
        "Hmm, let me check {e} again.",
        "But wait, let me recheck {e} by columns.",
        "Let me verify {e} once more, column by column.",
    ),
    "fix_carry": (
        "I dropped the carry into the {c}, so {e} = {r}, not {w}.",
        "The {c} missed the carry, so {e} = {r}, not {w}.",
        "So I forgot to carry into the {c}: {e} = {r}, not {w}.",
        "The carry into the {c} was lost; {e} is {r}, not {w}.",
        "That shows a missing carry in the {c}, so {e} = {r}, not {w}.",
    ),
    "fix_borrow": (
        "I forgot the borrow in the {c}, so {e} = {r}, not {w}.",
        "The {c} missed the borrowed 1, so {e} = {r}, not {w}.",
        "So I did not take the borrow from the {c}: {e} = {r}, not {w}.",
        "The borrow from the {c} was lost; {e} is {r}, not {w}.",
        "That shows a missing borrow in the {c}, so {e} = {r}, not {w}.",
    ),
    "confirm": (
        "Every column matches, so {e} = {r} stands.",
        "That agrees: {e} = {r}.",
        "The columns match, so {r} is right.",
        "Same digits as before, so {e} = {r}.",
        "It checks out: {e} = {r}.",
    ),
    "alt_open": (
        "Alternatively, {how}.",
        "Another way: {how}.",
        "Another approach: {how}.",
        "Alternatively, as a cross-check, {how}.",
        "Or, another way: {how}.",
    ),
    # ---------------------------------------------------------------- code
    "code_open": (
        "First, f starts from x.",
        "We begin with x.",
        "Start from the input x.",
        "Let's follow x through each step.",
        "First, take the input x.",
        "Begin with x and apply each step in turn.",
    ),
    "code_branch": (
        "The steps depend on x, so we need an if/else.",
        "There are two cases, so f needs an if/else.",
        "Since f does different things for different x, we use if/else.",
        "Two cases, so we branch with if/else.",
        "Because the rule changes at {t}, we need an if/else.",
    ),
    "arm_open": (
        "For x {cmp} {t}, start from x.",
        "When x {cmp} {t}, begin with x.",
        "If x {cmp} {t}, we start from x.",
        "In the case x {cmp} {t}, take x.",
        "First case, x {cmp} {t}: start from x.",
    ),
    "else_open": (
        "Otherwise, start from x.",
        "In the other case, begin with x.",
        "Else, we start from x.",
        "When that fails, take x.",
        "For the remaining x, start from x.",
    ),
    "step_add0": (
        "Adding {k} gives {F}.",
        "After adding {k} we have {F}.",
        "Add {k}: {F}.",
        "Adding {k} makes it {F}.",
        "Plus {k} gives {F}.",
    ),
    "step_sub0": (
        "Subtracting {k} gives {F}.",
        "After subtracting {k} we have {F}.",
        "Minus {k}: {F}.",
        "Subtracting {k} makes it {F}.",
        "Taking away {k} gives {F}.",
    ),
    "step_mul0": (
        "Multiplying by {k} gives {F}.",
        "After multiplying by {k} we have {F}.",
        "Times {k}: {F}.",
        "Multiplying by {k} makes it {F}.",
        "Scaling by {k} gives {F}.",
    ),
    "step_mul": (
        "Multiplying by {k} gives {F}, since {why}.",
        "Times {k}, every term is multiplied: {F}, since {why}.",
        "Multiplying by {k} multiplies each term: {why}, so we get {F}.",
        "Then times {k}: {F}, because {why}.",
        "After multiplying by {k} we have {F}, since {why}.",
    ),
    "step_add": (
        "Adding {k} gives {F}, since {why}.",
        "Then plus {k}: {F}, because {why}.",
        "Adding {k} changes only the constant: {why}, so {F}.",
        "After adding {k} we have {F}, since {why}.",
        "Plus {k} makes it {F}, since {why}.",
    ),
    "step_sub": (
        "Subtracting {k} gives {F}, since {why}.",
        "Then minus {k}: {F}, because {why}.",
        "Taking away {k} changes only the constant: {why}, so {F}.",
        "After subtracting {k} we have {F}, since {why}.",
        "Minus {k} makes it {F}, since {why}.",
    ),
    "returns": (
        "So f returns {F}.",
        "Therefore f returns {F}.",
        "Thus f returns {F}.",
        "Hence f returns {F}.",
        "That means f returns {F}.",
    ),
    "arm_returns": (
        "So for x {cmp} {t}, f returns {F}.",
        "Therefore when x {cmp} {t}, f returns {F}.",
        "Thus if x {cmp} {t}, f returns {F}.",
        "Hence for x {cmp} {t} the result is {F}.",
        "That means f returns {F} when x {cmp} {t}.",
    ),
    "else_returns": (
        "So otherwise f returns {F}.",
        "Therefore in the other case f returns {F}.",
        "Thus otherwise the result is {F}.",
        "Hence for the other x, f returns {F}.",
        "That means f returns {F} otherwise.",
    ),
    "code_check": (
        "Wait, let me check with f({x}).",
        "Let me verify with the example f({x}).",
        "Wait, let me trace f({x}) through the steps.",
        "Hold on, let me check f({x}) step by step.",
        "Let me double-check using f({x}).",
        "Hmm, let me trace the example f({x}).",
    ),
    "code_fix": (
        "Multiplying by {k} must multiply the {c} too: {why}, so f returns {F}.",
        "I forgot to multiply the {c} by {k}: {why}, so the result is {F}.",
        "The {c} was not multiplied by {k}; {why}, so it is {F}.",
        "So the times {k} was not carried through to the {c}: {why}, giving {F}.",
        "The constant {c} also gets multiplied by {k}: {why}, so {F}.",
    ),
    "code_fixed": (
        "So the code should be:",
        "So the corrected code is:",
        "Here is the corrected code:",
        "So f should be:",
        "The fixed code is:",
    ),
    "code_final": (
        "So the final code is:",
        "So the code stays:",
        "Therefore the code is:",
        "So the final version is:",
        "Thus the code is:",
    ),
    "code_alt": (
        "Alternatively, apply the steps one at a time:",
        "Another way: keep each step as its own statement:",
        "Alternatively, write the steps directly without simplifying:",
        "Another approach: update a variable step by step:",
        "Alternatively, let the code do each step in order:",
    ),
}


def pick(rng, slot: str, plain: bool = False, **fmt) -> str:
    """One wording of ``slot`` filled with ``fmt``: the first when ``plain``, else a seeded draw."""
    pool = POOLS[slot]
    t = pool[0] if plain else pool[rng.randrange(len(pool))]
    return t.format(**fmt)
