"""MkDocs hook: the committed figures join the site where the pages link them.

`benchmarks/results/*.png` and `examples/images/*.png` are written by the
scripts that make them and committed beside them; the pages link them by
those paths, and this adds them to the build as they are, never copied into
`docs/`.
"""

import glob
import os

from mkdocs.structure.files import File

FIGURES = ("benchmarks/results/*.png", "examples/images/*.png")


def on_files(files, config):
    root = os.path.dirname(config.config_file_path)
    for pattern in FIGURES:
        for path in sorted(glob.glob(os.path.join(root, pattern))):
            files.append(
                File(
                    os.path.relpath(path, root),
                    src_dir=root,
                    dest_dir=config.site_dir,
                    use_directory_urls=config.use_directory_urls,
                )
            )
    return files
