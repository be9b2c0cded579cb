"""Inference needs only the model library: `import climp` and building a model load neither the
training/evaluation packages nor their plotting and data-pipeline dependencies."""
import subprocess
import sys

TRAINING_ONLY = ["matplotlib", "webdataset", "climp.train", "climp.eval", "climp.analysis", "climp.reproduce",
                 "climp.data"]


def test_model_library_imports_no_training_dependencies():
    code = ("import sys, climp; climp.create_model('climp-tiny'); climp.get_tokenizer('climp-tiny'); "
            f"print([m for m in {TRAINING_ONLY!r} if m in sys.modules])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", result.stdout
