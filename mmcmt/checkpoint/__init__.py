"""Checkpoints: safe reading of files and URLs (:mod:`.safe_load`, installed
into mmengine when mmcmt is imported; what it allows: :mod:`.allow_list`,
derived from the checkpoints that ``tools/corpus_runs.py`` writes; what a
file names, read without loading it: :mod:`.inspection`), the released
checkpoints' key names (:mod:`.official`) and checked loading into a module
(:mod:`.loading`).
Depends only on torch and mmengine."""
from .loading import (ArchMismatchError, load_checked, read_checkpoint,
                      sub_state_dict)
from .official import (RELEASE_URL, RELEASED_FILES, convert_official_cmt,
                       is_official_cmt, pop_official_cmt, to_official_cmt)
from .safe_load import (CheckpointError, CorruptCheckpointError, DownloadError,
                        UntrustedCheckpointError, allow_globals, is_url,
                        load_file, load_url)

__all__ = [
    'ArchMismatchError', 'allow_globals', 'CheckpointError',
    'CorruptCheckpointError', 'DownloadError', 'RELEASED_FILES', 'RELEASE_URL',
    'UntrustedCheckpointError', 'convert_official_cmt', 'is_official_cmt',
    'load_checked', 'load_file', 'load_url', 'is_url', 'pop_official_cmt',
    'read_checkpoint', 'sub_state_dict', 'to_official_cmt'
]
