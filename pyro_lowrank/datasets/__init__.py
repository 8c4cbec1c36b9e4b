"""Dataset loaders for the paper's experiments, with verified checksums and an optional download cache.

Every loader takes ``root`` (default :func:`default_root`: ``$PYRO_LOWRANK_DATA``, else the user cache folder). A file
is used only when its SHA-256 digest matches the registry; a missing file is downloaded from its official source and
verified; a mismatch raises :class:`ChecksumError`.

* :func:`load_heart_disease`: UCI Heart Disease, Cleveland + Hungary (source) vs Switzerland + VA (shift).
* :func:`load_pm25`: hourly PM2.5 windows, Beijing (source) vs Guangzhou (shift).
* :func:`load_uci`: the UCI regression benchmark with its fixed splits.
* :func:`load_sst2`, :func:`load_ag_news`: SST-2 and AG News (OOD) tokenised with a WordPiece vocabulary trained on
  SST-2 (needs ``tokenizers``: ``pip install 'pyro-lowrank[text]'``).
"""

from pyro_lowrank.datasets._files import REGISTRY, ChecksumError, DownloadError, RemoteFile, default_root, fetch
from pyro_lowrank.datasets.heart import HeartDiseaseData, load_heart_disease
from pyro_lowrank.datasets.pm25 import PM25_ALL_FEATURES, PM25_CITIES, PM25_FEATURES, PM25Data, load_pm25
from pyro_lowrank.datasets.text import (
    AGNewsData,
    SST2Data,
    encode,
    load_ag_news,
    load_sst2,
    read_sst2,
    sst2_tokenizer,
    train_wordpiece,
)
from pyro_lowrank.datasets.uci import UCI_DATASETS, UCIData, load_uci, num_splits

__all__ = [
    "AGNewsData",
    "ChecksumError",
    "DownloadError",
    "HeartDiseaseData",
    "PM25Data",
    "PM25_ALL_FEATURES",
    "PM25_CITIES",
    "PM25_FEATURES",
    "REGISTRY",
    "RemoteFile",
    "SST2Data",
    "UCIData",
    "UCI_DATASETS",
    "default_root",
    "encode",
    "fetch",
    "load_ag_news",
    "load_heart_disease",
    "load_pm25",
    "load_sst2",
    "load_uci",
    "read_sst2",
    "num_splits",
    "sst2_tokenizer",
    "train_wordpiece",
]
