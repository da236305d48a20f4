"""Where the package's files are: the source tree / editable install, else the installed ament share."""

from __future__ import annotations

from pathlib import Path


def config_file(name: str) -> Path:
    """`config/<name>` of the source tree / editable install, else of the installed ament package."""
    here = Path(__file__).resolve().parent.parent / "config" / name
    if here.is_file():
        return here
    try:
        from ament_index_python.packages import get_package_share_directory

        shared = Path(get_package_share_directory("xkd_ros")) / "config" / name
    except Exception:  # noqa: BLE001 - ament index missing or package not installed: report below
        shared = None
    if shared is not None and shared.is_file():
        return shared
    raise FileNotFoundError(f"cannot find config/{name} (looked at {here} and the ament share directory "
                            "of xkd_ros)")


def default_params_file() -> Path:
    """The node parameters, config/segment.yaml."""
    try:
        return config_file("segment.yaml")
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{exc}; pass --params-file") from None
