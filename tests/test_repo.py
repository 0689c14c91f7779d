"""The README's commands are the ones CI and people run."""

import re

from conftest import REPO


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)```", readme, re.S)
    assert blocks[0].strip() == "./scripts/dev"
    assert blocks[1].strip() == "./scripts/test"
    ci = (REPO / ".ci" / "run").read_text().strip().splitlines()
    assert ci[-1] == blocks[1].strip()


def test_test_script_fails_when_no_test_ran():
    script = (REPO / "scripts" / "test").read_text()
    assert '"$rc" -eq 5' in script and "exit 1" in script
