"""systemd/xkd-segment.service and its environment template (docs/install.md, "Start at boot").

systemd's own checker reads the unit where it is installed; its ExecStart line is then run for real by
bash, as systemd would after its `$$` unescaping, against a fake ROS install, workspace and interpreter
that record what they were given.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from xkd_ros.fastdds import FASTDDS_PROFILE_ENV, PROFILE_NAME
from xkd_ros.segment_node import EXIT_CONFIG

REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "systemd" / "xkd-segment.service"
ENV_TEMPLATE = REPO / "systemd" / "xkd-segment.env"
ENV_INSTALLED = "/etc/xkd/xkd-segment.env"


def unit_sections(text: str) -> dict[str, list[tuple[str, str]]]:
    """Section -> (key, value) in order; systemd allows a key more than once (Environment=)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        assert not line.endswith("\\"), "no continuation lines: each setting reads on one line"
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), [])
        else:
            key, value = line.split("=", 1)
            current.append((key.strip(), value.strip()))
    return sections


def setting(section: list[tuple[str, str]], key: str) -> str:
    (value,) = [v for k, v in section if k == key]
    return value


def environment_file(text: str) -> dict[str, str]:
    """KEY=value lines as systemd's EnvironmentFile= reads them (comments, optional quotes)."""
    env = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        key, value = line.split("=", 1)
        assert re.fullmatch(r"[A-Z_][A-Z0-9_]*", key), key
        assert not key.startswith("export"), line
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        env[key] = value
    return env


@pytest.fixture(scope="module")
def unit() -> dict[str, list[tuple[str, str]]]:
    return unit_sections(UNIT.read_text())


def test_systemd_accepts_the_unit(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed")
    copy = tmp_path / UNIT.name
    shutil.copy(UNIT, copy)
    out = subprocess.run([analyze, "verify", "--man=no", str(copy)], capture_output=True, text=True,
                         timeout=60)
    # verify exits 0 on unknown keys and unparsable values, but names the unit in a warning
    ours = [line for line in (out.stdout + out.stderr).splitlines() if UNIT.stem in line]
    assert out.returncode == 0 and not ours, out.stdout + out.stderr


def test_the_node_runs_as_its_own_user_restarts_on_failure_and_logs_to_the_journal(unit: dict) -> None:
    service = unit["Service"]
    assert setting(service, "Type") == "exec"  # a missing interpreter fails the start, not later
    assert setting(service, "User") == setting(service, "Group") == "xkd"
    assert setting(service, "Restart") == "on-failure"  # segment_node exits 1 on failure, 0 on stop
    # a refused configuration (EX_CONFIG) is not restarted: it would fail the same way every time
    assert setting(service, "RestartPreventExitStatus") == str(EXIT_CONFIG)
    assert 1 <= float(setting(service, "RestartSec")) <= 30
    assert setting(unit["Unit"], "StartLimitIntervalSec") == "0"  # never gives up
    assert float(setting(service, "TimeoutStopSec")) > 10  # the node joins its executor within 10 s
    assert setting(service, "StandardOutput") == setting(service, "StandardError") == "journal"
    assert setting(service, "EnvironmentFile") == ENV_INSTALLED  # required: no leading '-'
    assert setting(service, "StateDirectory") == "xkd"
    env = dict(kv.split("=", 1) for k, v in service if k == "Environment" for kv in v.split())
    assert env["HOME"] == setting(service, "WorkingDirectory") == "/var/lib/xkd"  # the StateDirectory
    assert env["PYTHONUNBUFFERED"] == "1"
    assert "network-online.target" in setting(unit["Unit"], "After")
    assert setting(unit["Install"], "WantedBy") == "multi-user.target"


def exec_start_argv(unit: dict) -> list[str]:
    """ExecStart as systemd hands it to the kernel: `$$` becomes `$`, then its quoting is undone."""
    line = setting(unit["Service"], "ExecStart")
    assert "${" not in line.replace("$${", ""), "systemd itself would expand ${...}: write $${...} for bash"
    return shlex.split(line.replace("$$", "$"))


def test_exec_start_uses_only_variables_of_the_environment_template(unit: dict) -> None:
    argv = exec_start_argv(unit)
    assert argv[:2] == ["/bin/bash", "-c"] and len(argv) == 3
    used = set(re.findall(r"\$\{(\w+)\}", argv[2]))
    assert used == {"XKD_ROS_SETUP", "XKD_WORKSPACE", "XKD_PYTHON", "XKD_PARAMS_FILE", "XKD_NODE_ARGS"}
    assert used <= set(environment_file(ENV_TEMPLATE.read_text()))
    # the console script where setup.cfg installs it (colcon: install/<pkg>/lib/<pkg>/)
    assert "install_scripts=$base/lib/xkd_ros" in (REPO / "setup.cfg").read_text()
    assert '"segment_node = xkd_ros.segment_node:main"' in (REPO / "setup.py").read_text()
    assert '"${XKD_WORKSPACE}/install/xkd_ros/lib/xkd_ros/segment_node"' in argv[2]
    # explicit: bash (5.1 on jammy) may exec the last command by itself, but need not
    assert '&& exec "${XKD_PYTHON}" ' in argv[2]


def test_the_template_sets_the_fast_dds_profile_that_colcon_installs() -> None:
    env = environment_file(ENV_TEMPLATE.read_text())
    (name,) = [n for n in FASTDDS_PROFILE_ENV if n in env]
    assert name == "FASTRTPS_DEFAULT_PROFILES_FILE"  # Fast DDS 2: the template's Humble
    assert env["XKD_ROS_SETUP"] == "/opt/ros/humble/setup.bash"
    assert env[name] == f"{env['XKD_WORKSPACE']}/install/xkd_ros/share/xkd_ros/config/{PROFILE_NAME}"
    assert (REPO / "config" / PROFILE_NAME).is_file()
    assert 'glob("config/*.xml")' in (REPO / "setup.py").read_text()  # installed to share/xkd_ros/config
    assert env["RMW_IMPLEMENTATION"] == "rmw_fastrtps_cpp"


FAKE_PYTHON = """#!{python}
import json, os, sys
with open(os.environ["RECORD"], "w") as f:
    json.dump({{"argv": sys.argv[1:], "pid": os.getpid(), "env": dict(os.environ)}}, f)
sys.exit(3)
"""


def fake_install(root: Path) -> dict[str, str]:
    """A ROS setup script, a workspace and a venv interpreter that records its call; the environment
    systemd would give ExecStart (the template with these paths)."""
    (root / "ros").mkdir()
    (root / "ros" / "setup.bash").write_text("export ROS_DISTRO=humble FAKE_ROS_SOURCED=1\n")
    scripts = root / "ws" / "install" / "xkd_ros" / "lib" / "xkd_ros"
    scripts.mkdir(parents=True)
    (scripts / "segment_node").write_text("# the console script\n")
    (root / "ws" / "install" / "setup.bash").write_text("export FAKE_WS_SOURCED=1\n")
    python = root / "venv" / "bin" / "python3"
    python.parent.mkdir(parents=True)
    python.write_text(FAKE_PYTHON.format(python=sys.executable))
    python.chmod(0o755)
    env = environment_file(ENV_TEMPLATE.read_text())
    env.update(XKD_ROS_SETUP=str(root / "ros" / "setup.bash"), XKD_WORKSPACE=str(root / "ws"),
               XKD_PYTHON=str(python), XKD_PARAMS_FILE=str(root / "my params.yaml"),
               XKD_NODE_ARGS="-p device:=cuda -r /velodyne_points:=/lidar/points",
               PATH=os.environ["PATH"], RECORD=str(root / "record.json"))
    return env


def test_exec_start_sources_ros_and_the_workspace_then_becomes_the_node(unit: dict, tmp_path: Path) -> None:
    env = fake_install(tmp_path)
    proc = subprocess.Popen(exec_start_argv(unit), env=env)
    assert proc.wait(timeout=60) == 3  # the node's own exit status reaches systemd
    record = json.loads((tmp_path / "record.json").read_text())
    assert record["pid"] == proc.pid  # `exec`: the node is the service's main process, not a child
    script = tmp_path / "ws" / "install" / "xkd_ros" / "lib" / "xkd_ros" / "segment_node"
    assert record["argv"] == [str(script), "--ros-args", "--params-file", str(tmp_path / "my params.yaml"),
                              "-p", "device:=cuda", "-r", "/velodyne_points:=/lidar/points"]
    assert record["env"]["FAKE_ROS_SOURCED"] == record["env"]["FAKE_WS_SOURCED"] == "1"
    assert record["env"]["FASTRTPS_DEFAULT_PROFILES_FILE"].endswith(PROFILE_NAME)


def test_exec_start_fails_without_running_the_node_when_ros_is_not_there(unit: dict, tmp_path: Path) -> None:
    env = fake_install(tmp_path)
    env["XKD_ROS_SETUP"] = str(tmp_path / "opt" / "ros" / "rolling" / "setup.bash")  # wrong distro
    out = subprocess.run(exec_start_argv(unit), env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "setup.bash" in out.stderr  # journal: which file is missing
    assert not (tmp_path / "record.json").exists()


def test_exec_start_passes_no_extra_argument_by_default(unit: dict, tmp_path: Path) -> None:
    env = fake_install(tmp_path)
    env["XKD_NODE_ARGS"] = environment_file(ENV_TEMPLATE.read_text())["XKD_NODE_ARGS"]
    assert env["XKD_NODE_ARGS"] == ""
    assert subprocess.run(exec_start_argv(unit), env=env, timeout=60).returncode == 3
    argv = json.loads((tmp_path / "record.json").read_text())["argv"]
    assert argv[1:] == ["--ros-args", "--params-file", str(tmp_path / "my params.yaml")]
