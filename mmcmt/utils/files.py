"""Checks on the files and folders that tools write."""
import os
import os.path as osp


def check_new_folder(path: str, hint: str = 'choose a new folder') -> None:
    """Refuse to write into ``path`` unless it is missing or an empty folder:
    nothing a user had is overwritten.

    Raises:
        FileExistsError: ``path`` is a file or a folder that is not empty;
            the message ends with ``hint`` (what to do instead).
    """
    if osp.isdir(path) and os.listdir(path):
        raise FileExistsError(f'{path} exists and is not empty; {hint}')
    if osp.exists(path) and not osp.isdir(path):
        raise FileExistsError(f'{path} exists and is not a folder; {hint}')
