"""The README's promises: its code example runs, and its test command is the one CI runs."""

import pathlib
import re

REPO = pathlib.Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def test_use_the_losses_example_runs(capsys):
    section = README.split("## Use the losses in your own code", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    exec(compile(code, "README.md", "exec"), {})
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].replace("-", "").split() == ["[0.", "0.", "0.", "0.]"]
    recon = [float(line.split()[1]) for line in lines[1:]]
    # 8 images of 784 pixels at Bernoulli(0.3): a fresh decoder is near 784 log 2 = 543 nats,
    # and three Adam steps on the same batch lower the reconstruction term.
    assert len(recon) == 3 and 400 < recon[-1] < recon[0] < 700


def test_ci_runs_the_readme_test_command():
    quickstart = README.split("## Quickstart", 1)[1].split("## ", 1)[0]
    commands = [c.strip() for c in re.findall(r"```bash\n(.*?)\n *```", quickstart, re.S)]
    assert len(commands) == 2
    ci_lines = (REPO / ".ci" / "run").read_text().splitlines()
    assert commands[1] in ci_lines
