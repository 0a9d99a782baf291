"""The README's quick start runs as written."""

import re

from tests.utils.paths import REPO_ROOT

README = REPO_ROOT / "README.md"


def test_quick_start_runs(tmp_path, monkeypatch):
    code = re.search(r"## Quick start\n\n```python\n(.*?)```", README.read_text(), re.S).group(1)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert type(namespace["reloaded"]).__name__ == "OTOBertForQuestionAnswering"
    assert namespace["pruned"].oto_pruning.removed_groups == {"head": 1, "neuron": 2, "channel": 0}
