"""The Python examples of the README and of docs/python_api.md must run as written."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_python_blocks(document: Path) -> None:
    """Execute the ```python blocks of ``document`` in order, in one namespace."""
    blocks = re.findall(r"```python\n(.*?)```", document.read_text(), flags=re.S)
    assert blocks, f"{document.name} has no python example"
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(document), "exec"), namespace)


def test_readme_python_blocks_run(capsys):
    run_python_blocks(ROOT / "README.md")
    assert "'decision'" in capsys.readouterr().out


def test_python_api_guide_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    run_python_blocks(ROOT / "docs" / "python_api.md")
    printed = capsys.readouterr().out
    assert "Segmenter(Unet, classes=['tumour', 'stroma', 'lymphocytes'], image_size=(96, 96)" in printed
    assert "(1, 4, 96, 96)" in printed  # the ONNX model's logits, read with onnxruntime
    assert (tmp_path / "to-share" / "segmenter" / "model.safetensors").is_file()
    assert (tmp_path / "to-share" / "both" / "classifier" / "model.safetensors").is_file()
    assert "['classifier', 'config.json', 'model.safetensors']" in printed
    assert (tmp_path / "api-demo" / "classifier" / "metrics.png").is_file()
