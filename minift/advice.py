"""The seed chapter's advice around its decision tree (minift/decide.py): the six common failure
points and the ops checklist, each failure point with the one threshold that detects it.

    failure point                                   threshold            checked by
    1 full SFT on a small data set overfits         under SFT_MIN_PAIRS  decide
    2 drawn to training from scratch                (the path itself)    decide
    3 too little text for continued pre-training    under CPT_MIN_TOKENS decide
    4 continued pre-training on an instruct model   the model's name     decide, failure_point_warnings
    5 assuming a bigger LoRA rank is better         r >= LARGE_RANK      decide, failure_point_warnings, add_lora
    6 skipping the memory math                      (always a reminder)  decide

decide() walks the tree and collects the warnings that apply to the plan; failure_point_warnings
is the check that a run can make from its method, model name and rank (scripts/continue_pretraining.py,
minift.finetune); lora.add_lora warns about the rank when it builds the adapter. All of them take
their words and thresholds from here, so a threshold changes in one place.

ops_checklist(decision) is the chapter's "after making the decision" list, each item answered
from the decision where it can be, and otherwise pointing at the minift function or script that
does it.
"""
from __future__ import annotations

import os
import re

# The chapter's words, section 5 ("Common Failure Points"), numbered as there.
FAILURE_POINTS = {
    1: '"Full SFT is always better than LoRA": with under 10K examples, LoRA performs almost the same and is '
       'more stable. SFT overfits on small datasets.',
    2: "Getting drawn to from-scratch: training a 1B+ model takes days. It won't fit your schedule.",
    3: "Not enough data for continued pre-training: below 1B tokens, the effect is negligible.",
    4: "Running continued pre-training on an instruct model: CPT belongs on a base model. Instruct models "
       "have already been SFT'd; CPT breaks their format.",
    5: "Assuming bigger r is better: r=64+ inflates memory and causes overfitting. r=8-16 is the standard.",
    6: "Skipping memory math: A100 results don't transfer directly to a laptop. Do the math first.",
}
SFT_MIN_PAIRS = 10_000      # 1: "with under 10K examples"
CPT_MIN_TOKENS = 1e9        # 3: "below 1B tokens"
LARGE_RANK = 64             # 5: "r=64+", so r=64 itself warns

# Section 6 ("Ops Checklist"), in its order, each with where minift does it.
OPS_CHECKLIST = (
    ("Choose one of the four paths (via the decision tree)", "minift.decide.decide, scripts/decide.py"),
    ("Decide on base model (Ch 22)", "decide(...).model; presets in minift/config.py"),
    ("Data volume + format (raw text vs pairs)", "minift.data.dataset_stats, decide(dataset=...)"),
    ("Memory math (Full vs LoRA vs QLoRA)", "minift.memory.estimate; scripts/memory_check.py measures it"),
    ("Estimate training time (Ch 3, Ch 15 patterns)", "minift/flops.py; scripts/decide.py --data prints it"),
    ("Decide evaluation method (Part 5)", "minift.train.evaluate (held-out loss and perplexity)"),
    ("(Optional) Compare full SFT vs LoRA in an experiment", "scripts/compare_methods.py"),
)

_INSTRUCT = re.compile(r"instruct|chat|-it(?:$|[-_./])", re.IGNORECASE)
_METHODS = {"from-scratch": "from-scratch", "scratch": "from-scratch",
            "cpt": "cpt", "continued-pretraining": "cpt", "continued-pre-training": "cpt",
            "sft": "sft", "full": "sft", "full-sft": "sft", "lora": "lora", "qlora": "qlora"}


def human_count(x: float) -> str:
    """50e6 -> "50M", 1e9 -> "1B", 15811 -> "15.8K" (three significant digits)."""
    for suffix, v in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if x >= v:
            return f"{x / v:.3g}{suffix}"
    return f"{x:g}"


# ---------------------------------------------------------------------- one check per failure point
def small_data_sft_warning(pairs: float) -> str | None:
    """Failure point 1, for a full SFT run on `pairs` examples (the low end of a range)."""
    if pairs >= SFT_MIN_PAIRS:
        return None
    return (f"Full SFT on ~{human_count(pairs)} pairs (under {human_count(SFT_MIN_PAIRS)}) overfits; LoRA does as "
            f"well and is more stable (failure point 1).")


def from_scratch_warning() -> str:
    """Failure point 2: said whenever the answer is to train from scratch."""
    return ("From scratch: 'training a 1B+ model takes days' (failure point 2); be sure no base model is close "
            "enough for continued pre-training.")


def thin_cpt_data_warning(tokens: float) -> str | None:
    """Failure point 3, for `tokens` of raw domain text."""
    if tokens >= CPT_MIN_TOKENS:
        return None
    return (f"Only ~{human_count(tokens)} tokens: continued pre-training needs ~{human_count(CPT_MIN_TOKENS)}+ "
            f"domain tokens (failure point 3).")


def looks_instruct(model_name_or_path: str | None) -> bool:
    """"instruct", "chat" or "-it" (ending a name part) in the model's last path component."""
    if not model_name_or_path:
        return False
    return bool(_INSTRUCT.search(os.path.basename(os.path.normpath(model_name_or_path))))


def cpt_on_instruct_warning(model_name_or_path: str | None) -> str | None:
    """Failure point 4, for continued pre-training on this model."""
    if not looks_instruct(model_name_or_path):
        return None
    return (f"continued pre-training on {model_name_or_path!r}, which looks like an instruct/chat model: CPT "
            "belongs on a base model. An instruct model has already been SFT'd, and training it on raw text "
            "breaks its chat format (failure point 4). Use the base model, then SFT or LoRA.")


def rank_warning(r: int) -> str | None:
    """Failure point 5, for a LoRA rank r."""
    if r < LARGE_RANK:
        return None
    return (f"LoRA rank r={r}: 'r=64+ inflates memory and causes overfitting. r=8-16 is the standard.' "
            f"(failure point 5)")


def memory_math_reminder() -> str:
    """Failure point 6: the memory math holds for the machine it was done for."""
    return ("Memory math is for this machine: results measured on an A100/H200 do not transfer to a laptop "
            "(failure point 6); re-run this on the machine that will train.")


# ---------------------------------------------------------------------- what a run can check
def failure_point_warnings(method: str, model_name_or_path: str | None, lora_r: int | None = None) -> list[str]:
    """The failure points a run can see from its method and model name (4) and LoRA rank (5).
    Returns the warnings as sentences; the caller decides how to show them."""
    kind = _METHODS.get(method.lower().replace("_", "-"))
    if kind is None:
        raise ValueError(f"unknown method {method!r}; use one of {sorted(set(_METHODS))}")
    warnings = [cpt_on_instruct_warning(model_name_or_path) if kind == "cpt" else None,
                rank_warning(lora_r) if kind in ("lora", "qlora") and lora_r is not None else None]
    return [w for w in warnings if w]


# ---------------------------------------------------------------------- after the decision
def ops_checklist(decision) -> list[str]:
    """The ops checklist as lines "[x] item: answer" (answered by the decision) or "[ ] item: where"."""
    step2 = next((s.removeprefix("2. ") for s in decision.steps if s.startswith("2. ")), None)
    answers = {0: f"path {decision.path!r}, method {decision.method!r}" if decision.path else None,
               1: decision.model,
               2: step2,
               3: f"{len(decision.fits)} (model, method) pairs fit, in the steps above (minift.memory.estimate); "
                  f"scripts/memory_check.py measures a run" if decision.fits else None}
    lines = []
    for i, (item, where) in enumerate(OPS_CHECKLIST):
        answer = answers.get(i)
        lines.append(f"[x] {item}: {answer}" if answer else f"[ ] {item}: {where}")
    return lines
