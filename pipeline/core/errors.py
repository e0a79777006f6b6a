"""The one error type users see: it names the problem and the fix."""


class PipelineError(Exception):
    """A user-facing failure: what is wrong and what to do about it."""

    def __init__(self, problem: str, fix: str) -> None:
        super().__init__(f"{problem}\n  fix: {fix}")
        self.problem = problem
        self.fix = fix
