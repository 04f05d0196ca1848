"""pytest hooks for `make nbtest`: print each notebook's execution time (nbval runs every cell as one test item,
so per-notebook time = the sum of its cells' setup + call + teardown)."""
from collections import defaultdict

_SECONDS: dict[str, float] = defaultdict(float)


def pytest_runtest_logreport(report):
    _SECONDS[report.nodeid.split("::")[0]] += report.duration


def pytest_terminal_summary(terminalreporter):
    if not _SECONDS:
        return
    terminalreporter.section("notebook execution times")
    for path, seconds in sorted(_SECONDS.items()):
        terminalreporter.write_line(f"{seconds:7.1f} s  {path}")
    terminalreporter.write_line(f"{sum(_SECONDS.values()):7.1f} s  total")
