"""Sample-quality metrics for generative models: FID, IS, KID, precision/recall, intra-class FID, MS-SSIM, cacc."""

from acgan.metrics.cacc import ImageClassifier, classifier_accuracy
from acgan.metrics.cache import cache_key, cached, default_cache_dir
from acgan.metrics.detector import Detector, load_detector, nvlabs_preprocess
from acgan.metrics.detector_files import NVLABS, PYPI_FEATURES, DetectorSource, resolve_detector_path
from acgan.metrics.evaluate import (
    METRICS,
    MetricSettings,
    compute_metrics,
    count_tag,
    format_table,
    parse_metrics,
    with_sample_count,
    write_json,
)
from acgan.metrics.fid import feature_statistics, frechet_distance, intra_class_fid
from acgan.metrics.inception_score import inception_score
from acgan.metrics.kid import kernel_inception_distance
from acgan.metrics.msssim import class_diversity, ms_ssim
from acgan.metrics.precision_recall import precision_recall
from acgan.metrics.standin import save_standin_detector

__all__ = [
    "METRICS",
    "NVLABS",
    "PYPI_FEATURES",
    "Detector",
    "DetectorSource",
    "ImageClassifier",
    "MetricSettings",
    "cache_key",
    "cached",
    "class_diversity",
    "classifier_accuracy",
    "compute_metrics",
    "count_tag",
    "default_cache_dir",
    "feature_statistics",
    "format_table",
    "frechet_distance",
    "inception_score",
    "intra_class_fid",
    "kernel_inception_distance",
    "load_detector",
    "ms_ssim",
    "nvlabs_preprocess",
    "parse_metrics",
    "precision_recall",
    "resolve_detector_path",
    "save_standin_detector",
    "with_sample_count",
    "write_json",
]
