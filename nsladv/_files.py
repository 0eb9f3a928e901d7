"""Files written whole or not at all."""

import os
import pathlib


def replace_file(path, content):
    """Writes `path` through a temporary file beside it, so that a kill leaves the old file or the new one.

    Args:
        path: the file to write; its folder is made if needed.
        content: `bytes`, `str` (written as UTF-8), or a callable that writes
            to the open binary file (e.g. `lambda f: np.savez(f, **arrays)`).

    Returns:
        The path, as a `pathlib.Path`.
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Hidden and process-unique: readers that list the folder skip it, and two writers do not share it.
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        with open(partial, "wb") as f:
            if callable(content):
                content(f)
            else:
                f.write(content.encode() if isinstance(content, str) else content)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path
