"""Evaluation and diagnostics: what CMRM does to safety, over-refusal and utility.

Imported lazily (``import cmrm_guard.eval`` loads neither matplotlib nor LangChain):

- prompts: :func:`load_prompt_set`, :class:`EvalPrompt`, :func:`make_prompt`, :func:`check_disjoint`,
  :class:`PromptOverlapError` (FigStep / typographic / user image+text prompts; ``prompts.py``);
- conditions: :class:`Condition`, :func:`default_conditions` (``conditions.py``);
- judges: :class:`RefusalPhraseJudge`, :class:`LLMJudge`, :class:`Verdict`, :class:`Judge`
  (``judges.py``; fluency checks in ``fluency.py``);
- running: :func:`run_evaluation` -> :class:`EvalResults` (``runner.py``), metrics with Wilson
  intervals (``metrics.py``), representation diagnostics (``diagnostics.py``);
- report: :func:`write_report`, :func:`markdown_table` (``report.py``).

Example:
    >>> from cmrm_guard.eval import load_prompt_set, run_evaluation
    >>> prompts = load_prompt_set("harmful", n=50) + load_prompt_set("xstest_safe", n=50)
    >>> prompts += load_prompt_set("gsm8k", n=25) + load_prompt_set("shapes", n=24)
    >>> results = run_evaluation(svlm, prompts, output="eval-out")     # results.json, results.md, plots/
    >>> print(results.table())
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "EvalPrompt": "prompts",
    "PromptOverlapError": "prompts",
    "BUILTIN_SETS": "prompts",
    "load_prompt_set": "prompts",
    "make_prompt": "prompts",
    "check_disjoint": "prompts",
    "exclude_overlaps": "prompts",
    "Condition": "conditions",
    "default_conditions": "conditions",
    "Judge": "judges",
    "Verdict": "judges",
    "RefusalPhraseJudge": "judges",
    "LLMJudge": "judges",
    "REFUSAL_PHRASES": "judges",
    "DEFAULT_RUBRIC": "judges",
    "HeuristicFluency": "fluency",
    "PerplexityFluency": "fluency",
    "wilson_interval": "metrics",
    "compute_metrics": "metrics",
    "run_evaluation": "runner",
    "EvalResults": "runner",
    "EvalResumeError": "runner",
    "markdown_table": "report",
    "write_report": "report",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'cmrm_guard.eval' has no attribute {name!r}")
    value = getattr(import_module(f"cmrm_guard.eval.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
