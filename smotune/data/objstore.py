"""``python -m smotune.data.objstore URL``: one object of an object store, copied to stdout.

``data.train`` shards on ``s3://`` are opened by webdataset as
``pipe:<python> -m smotune.data.objstore s3://bucket/key`` (see
``sources.shard_url``). The object is read with pyarrow's filesystem, the one
Ray uses for ``storage.path``, so credentials, region and endpoint come only
from the environment (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_SESSION_TOKEN``, ``AWS_DEFAULT_REGION``, ``AWS_ENDPOINT_URL``, or an
instance role) and never from a command line. A failure is one line on stderr
and exit status 1; a reader that stops early ends the copy quietly.
"""

from __future__ import annotations

import os
import shlex
import sys

CHUNK = 1 << 20


def pipe_url(url: str) -> str:
    """The webdataset ``pipe:`` URL that streams ``url`` through this module."""
    return f"pipe:exec {shlex.quote(sys.executable)} -m smotune.data.objstore {shlex.quote(url)}"


def copy_to(url: str, out) -> None:
    """Write the object at ``url`` to the binary stream ``out``."""
    from pyarrow import fs

    filesystem, path = fs.FileSystem.from_uri(url)
    with filesystem.open_input_stream(path) as src:
        while chunk := src.read(CHUNK):
            out.write(chunk)
    out.flush()


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m smotune.data.objstore URL", file=sys.stderr)
        return 2
    try:
        copy_to(argv[0], sys.stdout.buffer)
    except BrokenPipeError:  # the reader had what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (OSError, ValueError) as err:  # pyarrow raises OSError subclasses; a bad URI ValueError
        problem = " ".join(str(err).split())
        print(f"smotune: cannot read {argv[0]}: {type(err).__name__}: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
