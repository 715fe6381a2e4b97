"""The verdicts of the exercises' self-checks (``lab.checks``): one printed line, and a truthy result.

Every check prints ``✅ correct: ...`` or ``❌ not yet: ...`` and returns a ``CheckResult``; an
answer left as ``None`` (or ``...``) gets "fill in ..."; an answer that makes a check raise gets
"not yet" with the error, never a traceback.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any


@dataclass
class CheckResult:
    """The verdict of one check: ``passed``, the printed ``message`` and measured ``details``."""

    passed: bool
    message: str
    details: dict[str, Any] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return self.passed


def verdict(passed: bool, message: str, **details: Any) -> CheckResult:
    """Print the verdict line and return it as a ``CheckResult``."""
    line = f"✅ correct: {message}" if passed else f"❌ not yet: {message}"
    print(line)
    return CheckResult(passed, line, details)


def unfilled(**answers: Any) -> CheckResult | None:
    """A "fill in" verdict for the first answer still ``None``/``...``, else None."""
    for name, value in answers.items():
        if value is None or value is Ellipsis:
            return verdict(False, f"fill in `{name}` (the TODO cell above), then run this cell again.")
    return None


def never_raises(check):
    """Turn an exception caused by an unexpected answer into a "not yet" verdict."""

    @functools.wraps(check)
    def wrapper(*args, **kwargs) -> CheckResult:
        try:
            return check(*args, **kwargs)
        except Exception as err:  # the student's answer had an unexpected type or shape
            return verdict(False, f"this answer could not be checked ({type(err).__name__}: {err}). "
                                   "Compare it with what the exercise asks for.")

    return wrapper
