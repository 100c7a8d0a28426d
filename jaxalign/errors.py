"""The errors a user can fix, so the command line reports them in one line (exit status 2).

Every error here names the thing at fault (the config key, the file, the directory) and what to
do about it; ``jaxalign.cli`` prints the message alone, without a traceback. Anything else that
escapes is a bug in jaxalign and keeps its traceback.

- ``UserError``: the base class.
- ``ConfigError``: a bad config key or value (``config.optim.lr=-1``), or a work directory that
  holds a run of another config.
- ``MissingDataError``: a file or directory that is named is not on disk (the config file, the
  data, a tokenizer, a checkpoint, a run).
- ``DataError``: a file or a stream's contents are unusable: a malformed ``config.json``, a
  truncated safetensors file, a train stream whose examples are all skipped as bad.
- ``WorkdirError``: the work directory cannot be used (empty path, a file, read-only, not a
  jaxalign run, or locked by a live run).

``read_json_object`` reads a JSON file a user gave (a run's ``config.json``, a checkpoint's
``config.json``) with these errors.

``RunStopped`` is not a user error: a run that stopped itself on purpose (a diverged loss,
checkpoint saves failing on a full disk), reported in one line with exit status 1.
"""

from __future__ import annotations

import json
import os
from typing import Any


class UserError(Exception):
    """A problem the user can fix; the message names it and says what to do."""


class ConfigError(UserError, ValueError):
    """A config problem; the message names each offending key (``config.optim.lr``) and value."""


class MissingDataError(ConfigError, FileNotFoundError):
    """A named file or directory (config file, TFDS directory, webdataset shards, tokenizer, a
    run) is not on disk."""


class DataError(UserError, ValueError):
    """A file's or a data stream's contents are unusable; the message names the file or the
    source and the reasons."""


class WorkdirError(UserError):
    """The work directory cannot be used for this run; the message names it."""


class RunStopped(RuntimeError):
    """A run stopped itself (divergence, failed saves); the message says why and what to do."""


def read_json_object(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON object in the file ``path``.

    Raises:
      MissingDataError: no file at ``path``.
      DataError: the message starts with the path: unreadable (a directory, no permission),
        not UTF-8 JSON (malformed, truncated, empty), or not a JSON object.
    """
    from etils import epath  # a local path or a URI (gs://...)

    name = os.fspath(path)
    try:
        values = json.loads(epath.Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MissingDataError(f"{name} does not exist") from None
    except OSError as error:
        raise DataError(f"{name}: cannot be read ({error.strerror or error})") from None
    except ValueError as error:  # JSONDecodeError, UnicodeDecodeError
        raise DataError(f"{name}: not valid JSON ({error})") from None
    if not isinstance(values, dict):
        raise DataError(f"{name}: expected a JSON object, found a {type(values).__name__}")
    return values
