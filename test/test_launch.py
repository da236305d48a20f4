"""launch/segment.launch.py and rviz/xkd.rviz checked against the code they start and show.

launch_ros is not installed here, so the launch file is read with `ast`: its executable must be a
console script of setup.py, its parameters parameters of the node, its remaps the node's default
topics, and every file it names must exist and be installed by setup.py. Where launch_ros exists,
the LaunchDescription is also built for real.
"""

from __future__ import annotations

import ast
import importlib.util
import math
from glob import glob
from pathlib import Path

import pytest
import yaml

from xkd_ros.pointcloud import LABELED_DTYPE
from xkd_ros.segment_params import SegmentNodeConfig, param_specs

REPO = Path(__file__).resolve().parent.parent
LAUNCH = REPO / "launch" / "segment.launch.py"
RVIZ = REPO / "rviz" / "xkd.rviz"
DEFAULTS = SegmentNodeConfig()


def calls(tree: ast.AST, name: str) -> list[ast.Call]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call)
            and getattr(n.func, "id", getattr(n.func, "attr", None)) == name]


def kwarg(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def console_scripts() -> dict[str, str]:
    tree = ast.parse((REPO / "setup.py").read_text())
    setup = calls(tree, "setup")[0]
    entry = ast.literal_eval(kwarg(setup, "entry_points"))
    return dict(s.replace(" ", "").split("=", 1) for s in entry["console_scripts"])


def setup_data_globs() -> list[str]:
    """The globs of setup.py data_files (the f-string destination is irrelevant here)."""
    tree = ast.parse((REPO / "setup.py").read_text())
    return [ast.literal_eval(c.args[0]) for c in calls(tree, "glob")]


@pytest.fixture(scope="module")
def launch_tree() -> ast.Module:
    return ast.parse(LAUNCH.read_text())


def launch_nodes(tree: ast.Module) -> dict[str, ast.Call]:
    return {ast.literal_eval(kwarg(c, "executable")): c for c in calls(tree, "Node")}


def topic_remaps(tree: ast.Module) -> dict[str, str]:
    assign = next(n for n in ast.walk(tree) if isinstance(n, ast.Assign)
                  and getattr(n.targets[0], "id", None) == "TOPIC_REMAPS")
    return ast.literal_eval(assign.value)


def test_segment_node_is_a_console_script_of_this_package(launch_tree: ast.Module) -> None:
    node = launch_nodes(launch_tree)["segment_node"]
    package = kwarg(node, "package")
    assert isinstance(package, ast.Name) and package.id == "PACKAGE"
    assert "PACKAGE = \"xkd_ros\"" in LAUNCH.read_text()
    assert console_scripts()["segment_node"] == "xkd_ros.segment_node:main"
    assert ast.literal_eval(kwarg(node, "name")) == "segment_node"  # the params file key /segment_node


def test_launch_arguments_remaps_and_parameters_match_the_node(launch_tree: ast.Module) -> None:
    declared = {ast.literal_eval(c.args[0]) for c in calls(launch_tree, "DeclareLaunchArgument")
                if c.args and isinstance(c.args[0], ast.Constant)}
    remaps = topic_remaps(launch_tree)
    # the topic arguments come from TOPIC_REMAPS
    assert declared == {"params_file", "checkpoint", "use_camera", "use_rviz", "fastdds_profile", "respawn",
                        "respawn_delay"}
    camera = DEFAULTS.cameras[DEFAULTS.camera_names[0]]  # the default camera, raw transport
    assert camera.subscribed_topic == camera.image_topic
    assert remaps == {"cloud_in": DEFAULTS.topics.cloud_in, "cloud_out": DEFAULTS.topics.cloud_out,
                      "image_in": camera.image_topic, "camera_info_in": camera.camera_info_topic}
    node = launch_nodes(launch_tree)["segment_node"]
    params = kwarg(node, "parameters")
    overrides = next(e for e in params.elts if isinstance(e, ast.Dict))
    names = {s.name for s in param_specs()}
    assert {ast.literal_eval(k) for k in overrides.keys} == {"checkpoint", "use_camera"} <= names
    assert isinstance(kwarg(node, "remappings"), ast.ListComp)


def test_files_named_by_the_launch_file_exist_and_are_installed(launch_tree: ast.Module) -> None:
    joins = [[ast.literal_eval(a) for a in c.args[0].elts[1:]]
             for c in calls(launch_tree, "PathJoinSubstitution")]
    assert sorted(joins) == [["config", "fastdds_large_clouds.xml"], ["config", "segment.yaml"],
                             ["rviz", "xkd.rviz"]]
    installed = {Path(p).resolve() for g in setup_data_globs() for p in glob(str(REPO / g))}
    for parts in joins:
        path = REPO.joinpath(*parts)
        assert path.is_file() and path.resolve() in installed, path
    assert LAUNCH.resolve() in installed
    rviz = launch_nodes(launch_tree)["rviz2"]
    assert ast.literal_eval(kwarg(rviz, "package")) == "rviz2"
    assert kwarg(rviz, "condition") is not None  # only with use_rviz


def test_fastdds_profile_goes_to_the_variable_of_the_distro_s_fast_dds_unless_empty(
        launch_tree: ast.Module) -> None:
    from xkd_ros.fastdds import FASTDDS_PROFILE_ENV

    # the function is plain Python: run it on its own, without `launch`
    func = next(n for n in launch_tree.body
                if isinstance(n, ast.FunctionDef) and n.name == "fastdds_profile_env")
    consts = [n for n in launch_tree.body if isinstance(n, ast.Assign)
              and getattr(n.targets[0], "id", None) in ("FASTDDS_PROFILE_ENV", "FASTDDS2_DISTROS")]
    scope: dict = {}
    exec(compile(ast.Module(body=[*consts, func], type_ignores=[]), str(LAUNCH), "exec"), scope)
    assert scope["FASTDDS_PROFILE_ENV"] == FASTDDS_PROFILE_ENV  # the names the node checks
    pick = scope["fastdds_profile_env"]
    assert pick("humble") == pick("jazzy") == "FASTRTPS_DEFAULT_PROFILES_FILE"  # Fast DDS 2
    assert pick("kilted") == pick("rolling") == pick(None) == "FASTDDS_DEFAULT_PROFILES_FILE"  # Fast DDS 3
    (setenv,) = calls(launch_tree, "SetEnvironmentVariable")
    assert getattr(setenv.args[0], "id", None) == "profile_env"
    value = setenv.args[1]
    assert getattr(value.func, "id", None) == "LaunchConfiguration"
    assert ast.literal_eval(value.args[0]) == "fastdds_profile"
    condition = kwarg(setenv, "condition")
    assert condition.func.id == "LaunchConfigurationNotEquals"
    assert [ast.literal_eval(a) for a in condition.args] == ["fastdds_profile", ""]
    # a profile already set in the environment wins over the shipped one
    (env,) = calls(launch_tree, "EnvironmentVariable")
    assert getattr(env.args[0], "id", None) == "profile_env"


def launch_function(tree: ast.Module, name: str) -> object:
    """A plain-Python function of the launch file (it may use `math`), compiled on its own: no `launch`."""
    func = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name)
    scope: dict = {"math": math}
    exec(compile(ast.Module(body=[func], type_ignores=[]), str(LAUNCH), "exec"), scope)
    return scope[name]


def argument_defaults(tree: ast.Module) -> dict[str, str]:
    return {ast.literal_eval(c.args[0]): ast.literal_eval(kwarg(c, "default_value"))
            for c in calls(tree, "DeclareLaunchArgument")
            if c.args and isinstance(c.args[0], ast.Constant)
            and isinstance(kwarg(c, "default_value"), ast.Constant)}


def test_segment_node_respawns_after_the_delay_argument_by_default(launch_tree: ast.Module) -> None:
    defaults = argument_defaults(launch_tree)
    assert defaults["respawn"] == "true"  # a vehicle node comes back by itself
    delay_of = launch_function(launch_tree, "respawn_delay_seconds")
    assert delay_of(defaults["respawn_delay"]) == 2.0
    assert delay_of("0") == 0.0 and delay_of(" 0.5 ") == 0.5
    for bad in ("abc", "", "-1", "nan", "inf", "1s"):
        with pytest.raises(ValueError, match="respawn_delay: expected seconds"):
            delay_of(bad)

    node = launch_nodes(launch_tree)["segment_node"]
    respawn = kwarg(node, "respawn")
    assert respawn.func.id == "LaunchConfiguration" and ast.literal_eval(respawn.args[0]) == "respawn"
    # launch_ros wants the delay as a float: the argument is performed in the context, then parsed
    delay = kwarg(node, "respawn_delay")
    assert delay.func.id == "respawn_delay_seconds"
    (perform,) = delay.args
    assert perform.func.attr == "perform" and [a.id for a in perform.args] == ["context"]
    assert perform.func.value.func.id == "LaunchConfiguration"
    assert ast.literal_eval(perform.func.value.args[0]) == "respawn_delay"
    # ... so the node is made by the function an OpaqueFunction of the description calls with the context
    maker = next(n for n in launch_tree.body if isinstance(n, ast.FunctionDef)
                 and node in list(ast.walk(n)))
    assert [a.arg for a in maker.args.args] == ["context"]
    (opaque,) = calls(launch_tree, "OpaqueFunction")
    assert getattr(kwarg(opaque, "function"), "id", None) == maker.name
    rviz = launch_nodes(launch_tree)["rviz2"]
    assert kwarg(rviz, "respawn") is None  # a viewer closed on purpose stays closed


def test_rviz_shows_the_labeled_cloud_by_its_rgb_field_with_matching_qos() -> None:
    from xkd_ros.bag_io import LIDAR_FRAME

    cfg = yaml.safe_load(RVIZ.read_text())["Visualization Manager"]
    assert cfg["Global Options"]["Fixed Frame"] == LIDAR_FRAME == "velodyne"
    displays = {d["Class"]: d for d in cfg["Displays"]}
    assert "rviz_default_plugins/Grid" in displays
    cloud = displays["rviz_default_plugins/PointCloud2"]
    assert cloud["Topic"]["Value"] == DEFAULTS.topics.cloud_out == "/xkd/labeled_cloud"
    assert cloud["Color Transformer"] == "RGB8" and cloud["Channel Name"] == "rgb"
    assert "rgb" in LABELED_DTYPE.names
    out = DEFAULTS.qos.output
    assert cloud["Topic"]["Reliability Policy"] == {"reliable": "Reliable", "best_effort": "Best Effort"}[
        out.reliability]
    assert cloud["Topic"]["Durability Policy"] == {"volatile": "Volatile",
                                                   "transient_local": "Transient Local"}[out.durability]
    image = displays["rviz_default_plugins/Image"]
    # the overlay of the default camera: <topics.overlay_out>/<camera name>
    assert image["Topic"]["Value"] == f"{DEFAULTS.topics.overlay_out}/{DEFAULTS.camera_names[0]}"
    assert image["Topic"]["Reliability Policy"] == cloud["Topic"]["Reliability Policy"]


def test_launch_description_builds_with_launch_ros() -> None:
    pytest.importorskip("launch_ros")
    from launch.actions import DeclareLaunchArgument

    from launch import LaunchDescription

    spec = importlib.util.spec_from_file_location("segment_launch", LAUNCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    ld = module.generate_launch_description()
    assert isinstance(ld, LaunchDescription)
    args = [e for e in ld.entities if isinstance(e, DeclareLaunchArgument)]
    assert {"params_file", "checkpoint", "use_camera", "use_rviz", "fastdds_profile", "respawn",
            "respawn_delay", "cloud_in", "image_in", "camera_info_in", "cloud_out"} <= {a.name for a in args}
    from launch.actions import OpaqueFunction
    from launch_ros.actions import Node

    from launch import LaunchContext

    (opaque,) = [e for e in ld.entities if isinstance(e, OpaqueFunction)]
    context = LaunchContext()
    for arg in args:
        arg.visit(context)  # the defaults
    (node,) = opaque.execute(context)
    assert isinstance(node, Node)
    context.launch_configurations["respawn_delay"] = "soon"
    with pytest.raises(ValueError, match="respawn_delay"):
        opaque.execute(context)
