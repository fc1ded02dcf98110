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


def test_add_your_own_prior_and_objective_example_runs(capsys):
    section = README.split("### Add your own prior or objective", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    from vae_jax import objectives, priors

    try:
        exec(compile(code, "README.md", "exec"), {})
    finally:  # the example registers names; keep them out of other tests
        priors.PRIORS.pop("laplace", None)
        objectives.OBJECTIVES.pop("elbo_plus_l1", None)
    code_l1, nll, note = capsys.readouterr().out.strip().split(" ", 2)
    assert float(code_l1) > 0 and 0 < float(nll) < 64 * 0.7  # below 0.7 nats per pixel
    assert note.startswith("not defined")
