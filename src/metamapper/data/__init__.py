"""Data layer: few-shot tasks, image sources, benchmark/COCO/Fashion-MNIST loaders, feature cache.

Importing this package registers the task sources ``"frozen-benchmark"``, ``"coco"`` and
``"fashion-mnist"`` in ``metamapper.data.tasks.TASK_SOURCES``.

Example::

    from metamapper.data import fashion_tasks, FashionImageSource, with_task_induction
    tasks = [with_task_induction(t) for t in fashion_tasks("test", "open_ended", n_tasks=10)]
"""

from metamapper.data.benchmarks import (
    BENCHMARK_NAMES,
    BenchmarkFile,
    BenchmarkFormatError,
    benchmark_filename,
    list_benchmark_files,
    load_benchmark,
    split_tasks,
)
from metamapper.data.coco import CocoCaptionPairs, CocoFormatError, CocoTasks
from metamapper.data.export import export_fashion, export_tasks
from metamapper.data.fashion import (
    CLASS_NAMES,
    TEST_CLASSES,
    TRAIN_CLASSES,
    FashionImageSource,
    FashionMNIST,
    FashionMNISTNotFoundError,
    IdxFormatError,
    class_to_keys,
    fashion_tasks,
    read_idx,
)
from metamapper.data.feature_cache import FeatureCache, FillReport
from metamapper.data.images import FolderImageSource, ImageLoadError, load_image
from metamapper.data.tasks import (
    Example,
    ImageSource,
    Query,
    Task,
    TaskSet,
    choose_words,
    filter_tasks,
    induction_text,
    sample_task,
    with_repeats,
    with_task_induction,
)
from metamapper.data.words import TEST_WORDS, made_up_words

__all__ = [
    "BENCHMARK_NAMES", "CLASS_NAMES", "TEST_CLASSES", "TEST_WORDS", "TRAIN_CLASSES",
    "BenchmarkFile", "BenchmarkFormatError", "CocoCaptionPairs", "CocoFormatError", "CocoTasks",
    "Example", "FashionImageSource", "FashionMNIST", "FashionMNISTNotFoundError", "FeatureCache",
    "FillReport", "FolderImageSource", "IdxFormatError", "ImageLoadError", "ImageSource", "Query",
    "Task", "TaskSet", "benchmark_filename", "choose_words", "class_to_keys", "export_fashion",
    "export_tasks", "fashion_tasks", "filter_tasks", "induction_text", "list_benchmark_files",
    "load_benchmark", "load_image", "made_up_words", "read_idx", "sample_task", "split_tasks",
    "with_repeats", "with_task_induction",
]
