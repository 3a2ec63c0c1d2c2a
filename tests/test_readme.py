"""The README's code runs and its commands are the ones CI uses."""

import contextlib
import io
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_python_examples_run_and_print_what_they_say():
    blocks = re.findall(r"```python\n(.*?)```", README, re.DOTALL)
    assert len(blocks) >= 2
    for block in blocks:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(block, "README.md", "exec"), {})  # noqa: S102 - the README's own examples
        promised = [m.group(1).strip() for m in re.finditer(r"^print\(.*\)\s+#\s*(.+)$", block, re.MULTILINE)]
        printed = out.getvalue().strip().splitlines()
        assert len(promised) == len(printed)
        for comment, line in zip(promised, printed):
            assert comment.startswith(line.strip()), (comment, line)


def test_ci_runs_the_readme_test_command():
    commands = re.findall(r"```bash\n(.*?)\n```", README, re.DOTALL)
    main_job, tests = commands[0], commands[1]
    assert "jrnn compare" in main_job and "pytest" in tests
    assert tests in (ROOT / ".ci" / "run").read_text()
