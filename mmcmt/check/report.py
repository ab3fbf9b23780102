"""The check's output: sections, information lines, checks that pass or
fail, and the last line ``mmcmt check: N passed, M failed``."""
import contextlib
import sys
import traceback


class Report:
    """Prints as it goes (a check that hangs or crashes leaves what ran
    before on the screen) and counts the checks."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stdout
        self.passed = self.failed = 0

    def line(self, text=''):
        print(text, file=self.stream, flush=True)

    def section(self, title: str):
        self.line(f'\n## {title}')

    def info(self, label: str, value) -> None:
        self.line(f'  {label + ":":<28} {value}')

    def check(self, name: str, ok: bool, detail: str = '') -> bool:
        """Count and print one check: ``[PASS] name: detail``."""
        if ok:
            self.passed += 1
        else:
            self.failed += 1
        self.line(f'  [{"PASS" if ok else "FAIL"}] {name}'
                  f'{": " + detail if detail else ""}')
        return ok

    @contextlib.contextmanager
    def guard(self, name: str):
        """Run a block whose error fails the check ``name`` (with the
        error and where it happened) and lets the next ones run."""
        try:
            yield
        except Exception as error:  # any failure on the user's machine
            where = traceback.extract_tb(error.__traceback__)[-1]
            self.check(
                name, False, f'{type(error).__name__}: {error} '
                f'({where.filename}:{where.lineno})')

    def summary(self) -> str:
        return f'mmcmt check: {self.passed} passed, {self.failed} failed'
