"""benchmarks/real_data.py writes scikit-learn's digits in the layouts the product reads: the
training caption table (CsvDataset), the retrieval table and the zero-shot class folders of
`climp eval`. A small subset, no training."""
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

datasets = pytest.importorskip("sklearn.datasets", reason="scikit-learn (the test extra) is not installed")

from climp.data.sources import CsvDataset  # noqa: E402
from climp.eval.datasets import CaptionDataset, image_folder_set, load_classification_set  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def real_data():
    spec = importlib.util.spec_from_file_location("real_data", REPO / "benchmarks" / "real_data.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["real_data"] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def written(real_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("digits")
    return real_data.write_digits(root, side=16, test_fraction=0.25, seed=3, limit=80)


def _index(path) -> int:
    return int(Path(path).stem)


def test_training_table_reads_back_with_the_right_images_and_captions(real_data, written):
    digits = datasets.load_digits()
    data = CsvDataset(written.train_csv)
    assert len(data) == written.num_train == 60 and data.skips.total == 0
    words = real_data.NUMBER_WORDS
    for i in range(len(data)):
        image, caption = data[i]
        index = _index(data.paths[i])
        label = int(digits.target[index])
        assert caption.split()[-1] == words[label] and not caption.endswith(".")
        assert image.mode == "RGB" and image.size == (16, 16)
        small = np.asarray(image.convert("L").resize((8, 8), Image.Resampling.BOX), dtype=float)
        assert np.corrcoef(small.ravel(), digits.images[index].ravel())[0, 1] > 0.8
    assert len(set(data.captions)) > 10  # several phrasings, not one per class


def test_split_is_stratified_disjoint_and_seeded(real_data, written, tmp_path):
    digits = datasets.load_digits()
    train = {_index(p) for p in CsvDataset(written.train_csv).paths}
    test = {_index(image) for image, _ in CaptionDataset(written.test_csv).items}
    assert not train & test and train | test == set(range(80)) and len(test) == written.num_test == 20
    labels = digits.target[:80]
    for label in set(labels.tolist()):
        share = np.mean(labels[sorted(test)] == label)
        assert abs(share - np.mean(labels == label)) <= 0.1
    again = real_data.write_digits(tmp_path, side=16, test_fraction=0.25, seed=3, limit=80)
    assert Path(again.test_csv).read_text() == Path(written.test_csv).read_text()


def test_zero_shot_sets_hold_the_test_images_by_class_with_and_without_a_full_stop(real_data, written):
    digits = datasets.load_digits()
    plain = load_classification_set(real_data.PLAIN, written.zeroshot_root)
    stop = load_classification_set(real_data.STOP, written.zeroshot_root)
    assert plain.templates == list(real_data.TEMPLATES)
    assert stop.templates == [t + "." for t in real_data.TEMPLATES]
    for task in (plain, stop):
        assert len(task.dataset) == written.num_test
        for path, target in task.dataset.samples:
            assert task.classnames[target] == real_data.NUMBER_WORDS[digits.target[_index(path)]]
    folder = Path(written.resolution_folder)  # read as the resolution task reads --resolution-data
    resolution_set = image_folder_set(folder, folder.name, None)
    assert len(resolution_set.dataset) == written.num_test and resolution_set.templates == plain.templates
