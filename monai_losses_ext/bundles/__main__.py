"""``python -m monai_losses_ext.bundles {list, export, archive}``: the shipped bundles from the command line."""

from __future__ import annotations

import argparse
import sys

from . import archive_bundle, bundles_root, export_bundle, list_bundles


def main(argv: list[str] | None = None) -> int:
    """Run the command line.

    Args:
        argv: the arguments (default: ``sys.argv[1:]``).

    Returns:
        The exit status: 0 on success, 2 on a usage error or a refused export.
    """
    parser = argparse.ArgumentParser(
        prog="python -m monai_losses_ext.bundles",
        description="The MONAI bundles that ship with monai-losses-ext.",
        epilog="then: cd DEST && python -m monai.bundle run --config_file configs/train.json --dataset_dir <data>",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="the shipped bundles: name, version, task")
    ex = sub.add_parser("export", help="write a complete bundle folder to DEST")
    ex.add_argument("name", help="bundle name (lesion_segmentation) or short name (lesion)")
    ex.add_argument("dest", help="a new or empty folder")
    ex.add_argument("--overwrite", action="store_true", help="replace the bundle files of an earlier export at DEST")
    ar = sub.add_parser("archive", help="zip a bundle as <name>_v<version>.zip (MONAI model-zoo layout)")
    ar.add_argument("name", help="bundle name or short name")
    ar.add_argument("dest_dir", nargs="?", default=".", help="folder for the archive (default: .)")
    a = parser.parse_args(argv)
    try:
        if a.command == "list":
            for b in list_bundles():
                print(f"{b.name:24s} {b.version:8s} {b.task}")
            print(f"(from {bundles_root()})")
        elif a.command == "export":
            dest = export_bundle(a.name, a.dest, overwrite=a.overwrite)
            print(f"exported {a.name} to {dest}")
            print(f"run: cd {dest} && python -m monai.bundle run --config_file configs/train.json --dataset_dir <data>")
        else:
            print(archive_bundle(a.name, a.dest_dir))
    except (ValueError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
