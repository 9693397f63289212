"""The error hierarchy: every user-facing failure is an AutotuneError with a one-paragraph message and a fix."""

from __future__ import annotations


class AutotuneError(Exception):
    """A problem the user can fix; the CLI prints it as one paragraph and exits 2."""

    exit_code = 2

    def __init__(self, message: str, *, fix: str | None = None) -> None:
        self.message = message.strip()
        self.fix = fix.strip() if fix else None
        super().__init__(self.render())

    def render(self) -> str:
        return f"{self.message} Fix: {self.fix}" if self.fix else self.message


class ContractError(AutotuneError):
    """The user's model.py does not meet the contract (DESIGN §2)."""


class PolicyError(AutotuneError):
    """A policy (file, --set override or search-space sample) is invalid or cannot run here."""


class SpaceError(AutotuneError):
    """A search-space YAML file is invalid."""


class StudyError(AutotuneError):
    """A study cannot be created, resumed or read (lock held, unknown study, bad flags)."""


class TrackingError(AutotuneError):
    """The MLflow store cannot be used."""


class SelectionError(AutotuneError):
    """An export selection rule cannot be parsed or nothing satisfies it."""


def collect(problems: list[str], error: type[AutotuneError], header: str, fix: str) -> None:
    """Raise one `error` listing every problem found, so a user learns about all of them in one run."""
    if not problems:
        return
    if len(problems) == 1:
        raise error(f"{header}: {problems[0]}", fix=fix)
    listed = "; ".join(f"({i}) {p}" for i, p in enumerate(problems, 1))
    raise error(f"{header}: {len(problems)} problems: {listed}", fix=fix)
