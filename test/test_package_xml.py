"""package.xml against the code it ships: what `rosdep install` puts on a ROS machine must be what the
code imports (or the launch file starts), and what rosdep cannot install right must be in
docs/install.md at the versions CI tests.

The imports are read with `ast` from the installed code (xkd_core, xkd_ros, launch) and the tests, so a
new third-party import fails here until it is mapped below, once, to a rosdep key or to pip.
"""

from __future__ import annotations

import ast
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
INSTALLED_CODE = ("xkd_core", "xkd_ros", "launch")  # what setup.py / colcon install and run
TEST_CODE = ("test",)

#: import name -> rosdep key. Every key was resolved by `rosdep resolve` against ros/rosdistro
#: (rosdep/base.yaml, rosdep/python.yaml, humble/ and jazzy/distribution.yaml of 2026-08) for
#: ubuntu:jammy + humble and ubuntu:noble + jazzy: each is an apt package (docs/install.md).
ROSDEP_KEY = {
    # ROS 2 packages (the key is the package name)
    "rclpy": "rclpy",
    "builtin_interfaces": "builtin_interfaces",
    "std_msgs": "std_msgs",
    "sensor_msgs": "sensor_msgs",
    "diagnostic_msgs": "diagnostic_msgs",
    "geometry_msgs": "geometry_msgs",
    "rcl_interfaces": "rcl_interfaces",
    "tf2_ros": "tf2_ros_py",
    "ament_index_python": "ament_index_python",
    "launch": "launch",
    "launch_ros": "launch_ros",
    # Python libraries from the distribution (built against its numpy, like the ROS message modules)
    "numpy": "python3-numpy",
    "yaml": "python3-yaml",
    "cv2": "python3-opencv",
    "tqdm": "python3-tqdm",
    "matplotlib": "python3-matplotlib",
    "psutil": "python3-psutil",
    "pytest": "python3-pytest",
    "hypothesis": "python3-hypothesis",
    "skimage": "python3-skimage",  # photographs for a test (skimage.data)
}
#: import name -> pip distribution: goes into the workspace's virtual environment (docs/install.md),
#: never into package.xml (rosdep has only the CPU-only apt torch, and unpinned system-wide pip keys).
PIP_ONLY = {
    "torch": "torch",
    "timm": "timm",
    "spconv": "spconv",
    "spconv_triton": "spconv-triton",
    "rosbags": "rosbags",
}
#: requirements.txt pins rosdep's apt packages provide on a ROS machine (the rest must be in the guide)
APT_PROVIDED = {"numpy", "opencv-python-headless", "pyyaml", "tqdm", "matplotlib", "psutil"}
#: rosdep keys of ROS packages used without an import -> what in the installed code shows the use
USED_WITHOUT_IMPORT = {
    # tf2_ros's lookup returns a geometry_msgs/TransformStamped, whose fields the node reads
    "geometry_msgs": ".lookup_transform(",
}


def top_level_imports(roots: tuple[str, ...]) -> dict[str, set[str]]:
    """Third-party top-level module -> the files importing it (import statements and
    `importlib.import_module("literal")`), without the standard library and this repository's own."""
    found: dict[str, set[str]] = {}
    for root in roots:
        for path in sorted((REPO / root).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
                      and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"):
                    names = [node.args[0].value]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top in sys.stdlib_module_names or is_local(top, path):
                        continue
                    found.setdefault(top, set()).add(str(path.relative_to(REPO)))
    return found


def is_local(module: str, importer: Path) -> bool:
    """A package of this repository or a module beside the importer (test fixtures). `launch` is not:
    the repository's launch/ folder holds no package, `import launch` is ROS's."""
    if module == "launch":
        return False
    candidates = (REPO / module, REPO / f"{module}.py", importer.parent / f"{module}.py")
    return any(p.exists() for p in candidates)


def depends(tag: str) -> list[str]:
    return [e.text.strip() for e in ET.parse(REPO / "package.xml").getroot().iter(tag)]


def launched_packages() -> set[str]:
    """Packages of the nodes the launch file starts, other than this one."""
    tree = ast.parse((REPO / "launch" / "segment.launch.py").read_text())
    packages = set()
    for call in ast.walk(tree):
        if isinstance(call, ast.Call) and getattr(call.func, "id", None) == "Node":
            package = next(k.value for k in call.keywords if k.arg == "package")
            if isinstance(package, ast.Constant):
                packages.add(package.value)
    return packages


def installed_source() -> str:
    return "\n".join(p.read_text() for root in INSTALLED_CODE for p in sorted((REPO / root).rglob("*.py")))


def test_every_third_party_import_is_mapped_to_a_rosdep_key_or_to_pip() -> None:
    imports = top_level_imports(INSTALLED_CODE + TEST_CODE)
    unmapped = {m: sorted(files) for m, files in imports.items() if m not in ROSDEP_KEY and m not in PIP_ONLY}
    assert not unmapped, (f"imports without a dependency: {unmapped}; add each to ROSDEP_KEY (a key that "
                          "rosdep resolves on jammy and noble) or PIP_ONLY (and docs/install.md)")
    assert {"rclpy", "torch", "numpy", "tf2_ros", "spconv_triton"} <= set(imports)  # nested, dynamic too
    stale = sorted((set(ROSDEP_KEY) | set(PIP_ONLY)) - set(imports))
    assert not stale, f"mapped but imported nowhere any more: {stale}"


def test_exec_depends_are_exactly_what_the_installed_code_imports_or_starts() -> None:
    imported = top_level_imports(INSTALLED_CODE)
    source = installed_source()
    used = {key for key, evidence in USED_WITHOUT_IMPORT.items() if evidence in source}
    assert used == set(USED_WITHOUT_IMPORT), "a dependency kept for a use that is gone"
    expected = {ROSDEP_KEY[m] for m in imported if m in ROSDEP_KEY} | launched_packages() | used
    exec_depends = depends("exec_depend")
    assert len(exec_depends) == len(set(exec_depends)), "a key listed twice"
    assert set(exec_depends) == expected, (
        f"missing: {sorted(expected - set(exec_depends))}, not used: {sorted(set(exec_depends) - expected)}")
    assert launched_packages() == {"rviz2"}


def test_test_depends_cover_what_only_the_tests_import() -> None:
    test_only = set(top_level_imports(TEST_CODE)) - set(top_level_imports(INSTALLED_CODE))
    # a key the installed code already depends on at run time is there for the tests too
    expected = {ROSDEP_KEY[m] for m in test_only if m in ROSDEP_KEY} - set(depends("exec_depend"))
    assert {"python3-pytest", "python3-hypothesis"} <= expected
    assert set(depends("test_depend")) == expected
    assert not set(depends("depend")) and not set(depends("build_depend"))  # a pure-Python package


def test_no_pip_only_package_is_given_to_rosdep() -> None:
    keys = set(depends("exec_depend")) | set(depends("test_depend"))
    for dist in PIP_ONLY.values():
        assert not {k for k in keys if dist.replace("-", "_") in k.replace("-", "_")}, dist
    assert "python3-torch" not in keys  # the distribution's CPU-only torch, not the CUDA build


def test_package_metadata_matches_setup_py() -> None:
    root = ET.parse(REPO / "package.xml").getroot()
    assert root.get("format") == "3"
    setup = (REPO / "setup.py").read_text()
    assert f'PACKAGE = "{root.findtext("name")}"' in setup
    assert f'version="{root.findtext("version")}"' in setup
    assert root.find("export/build_type").text == "ament_python"


def requirement_pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        m = re.fullmatch(r"\s*([A-Za-z0-9_.\-]+)==([^\s#;]+).*", line)
        if m:
            pins[m.group(1).lower()] = m.group(2)
    return pins


def test_the_install_guide_pins_what_rosdep_does_not_install_at_the_tested_versions() -> None:
    guide = (REPO / "docs" / "install.md").read_text()
    pins = {name: version for name, version in requirement_pins(REPO / "requirements.txt").items()
            if not name.startswith("ros-") and name not in APT_PROVIDED}
    assert {"torch", "torchvision", "timm", "spconv", "rosbags", "tensorboard"} <= set(pins)
    for name, version in pins.items():
        # the CPU wheel `spconv` is tested here; the guide installs the CUDA build of the same release
        pattern = rf"\bspconv-cu\d+=={re.escape(version)}\b" if name == "spconv" else \
            rf"(?<![\w-]){re.escape(name)}=={re.escape(version)}\b"
        assert re.search(pattern, guide, re.IGNORECASE), f"docs/install.md does not install {name}=={version}"
    for dist in PIP_ONLY.values():
        assert dist in guide, dist
