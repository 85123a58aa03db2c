"""vllm.service as the vllm role renders it with real Ansible, checked against FACTS.md.

vLLM cannot run on this machine (no GPU), so these tests render the unit and env file for several variable sets and
check the command line: `vllm serve <model> --runner pooling`, no removed `--task`, loopback only on port 8001,
every variable reflected, the API key kept off the command line; and that the role's argument specs and preflight
refuse bad values with a message naming the variable.
"""

from __future__ import annotations

import json

import pytest
import yaml
from ansible_play import ROLES, ansible_available, describe, run_cases, run_play

ROLE = ROLES / "vllm"
VAR_SETS: dict[str, dict] = {
    "defaults": {},
    "qwen3_8b_matryoshka": {
        "vllm_model": "Qwen/Qwen3-Embedding-8B",
        "vllm_served_model_name": "text-embedding-3-small",
        "vllm_max_model_len": 32768,
        "vllm_max_num_seqs": 64,
        "vllm_gpu_memory_utilization": 0.85,
        "vllm_dtype": "bfloat16",
        "vllm_hf_overrides": {"is_matryoshka": True},
        "vllm_api_key": "vllm-upstream-key-0123456789",
        "vllm_hf_token": "hf_exampletoken",
        "vllm_hf_offline": True,
        "vllm_cuda_visible_devices": "0",
    },
    "odd_names_and_extra_args": {
        "vllm_model": "/srv/models/bge small",
        "vllm_served_model_name": "bge-small 100% $HOME",
        "vllm_dtype": "float16",
        "vllm_max_model_len": 512,
        "vllm_max_num_seqs": 256,
        "vllm_gpu_memory_utilization": 0.5,
        "vllm_extra_args": ["--enforce-eager", "--max-num-batched-tokens=16384"],
        "vllm_venv_dir": "/opt/vllm/venv",
    },
}


def _split_systemd(command: str) -> list[str]:
    """Split a systemd command line into argv the way systemd does (quotes, C escapes, %% and $$)."""
    words: list[str] = []
    i, n = 0, len(command)
    while i < n:
        while i < n and command[i].isspace():
            i += 1
        if i >= n:
            break
        word, quote, started = [], None, False
        while i < n:
            ch = command[i]
            if quote is None and ch.isspace():
                break
            if ch == "\\" and i + 1 < n:
                word.append(command[i + 1])
                i += 2
                started = True
                continue
            if quote is None and ch in "'\"" and not started:
                quote = ch
            elif ch == quote:
                quote = None
                i += 1
                break
            else:
                word.append(ch)
            started = True
            i += 1
        words.append("".join(word).replace("%%", "%").replace("$$", "$"))
    return words


def _exec_start(unit: str) -> list[str]:
    lines = unit.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("ExecStart="))
    parts = []
    for line in lines[start:]:
        parts.append(line.removeprefix("ExecStart=").rstrip().removesuffix("\\"))
        if not line.rstrip().endswith("\\"):
            break
    return _split_systemd(" ".join(parts))


def _options(argv: list[str]) -> dict[str, list[str]]:
    """Every `--flag value` (or `--flag=value`) pair after `serve <model>`, values collected per flag."""
    found: dict[str, list[str]] = {}
    rest = argv[3:]
    i = 0
    while i < len(rest):
        arg = rest[i]
        assert arg.startswith("--"), f"unexpected positional argument {arg!r} in {argv}"
        if "=" in arg:
            flag, value = arg.split("=", 1)
            i += 1
        elif i + 1 < len(rest) and not rest[i + 1].startswith("--"):
            flag, value = arg, rest[i + 1]
            i += 2
        else:
            flag, value = arg, ""
            i += 1
        found.setdefault(flag, []).append(value)
    return found


def _unit_settings(unit: str) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in unit.splitlines():
        if "=" in line and not line.startswith(("#", " ")):
            key, value = line.split("=", 1)
            settings.setdefault(key, []).append(value)
    return settings


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, str]]:
    """The unit and env file for every variable set, from one ansible-playbook run."""
    if not ansible_available():
        pytest.skip("ansible-playbook not found next to the test interpreter")
    workdir = tmp_path_factory.mktemp("vllm-render")
    tasks: list[dict] = [
        {
            "name": "Run the vllm preflight checks and load the role defaults",
            "ansible.builtin.include_role": {"name": "vllm", "tasks_from": "preflight.yml", "public": True},
        }
    ]
    for name, variables in VAR_SETS.items():
        for template, suffix in (("vllm.service.j2", "service"), ("vllm.env.j2", "env")):
            tasks.append(
                {
                    "name": f"Render {template} ({name})",
                    "ansible.builtin.template": {
                        "src": str(ROLE / "templates" / template),
                        "dest": str(workdir / f"{name}.{suffix}"),
                        "mode": "0600",
                    },
                    "vars": variables,
                }
            )
    plays = [{"name": "Render vllm.service", "hosts": "localhost", "gather_facts": False, "tasks": tasks}]
    proc, _ = run_play(plays, workdir)
    assert proc.returncode == 0, describe(proc)
    return {name: {kind: (workdir / f"{name}.{kind}").read_text() for kind in ("service", "env")} for name in VAR_SETS}


def _expected(name: str) -> dict:
    defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    merged = {**defaults, **VAR_SETS[name]}
    if "vllm_served_model_name" not in VAR_SETS[name]:
        merged["vllm_served_model_name"] = merged["vllm_model"]
    return merged


@pytest.mark.parametrize("name", list(VAR_SETS))
def test_exec_start_runs_vllm_serve_with_the_pooling_runner(rendered: dict, name: str) -> None:
    expected = _expected(name)
    argv = _exec_start(rendered[name]["service"])
    assert argv[:3] == [f"{expected['vllm_venv_dir']}/bin/vllm", "serve", expected["vllm_model"]]
    options = _options(argv)
    assert options["--runner"] == ["pooling"]
    assert "--task" not in options, "--task was removed from vLLM; --runner pooling replaces --task embed"


@pytest.mark.parametrize("name", list(VAR_SETS))
def test_vllm_listens_on_loopback_port_8001_only(rendered: dict, name: str) -> None:
    unit = rendered[name]["service"]
    options = _options(_exec_start(unit))
    assert options["--host"] == ["127.0.0.1"]
    assert options["--port"] == ["8001"]
    assert "--uds" not in options
    assert "0.0.0.0" not in unit and "::" not in options["--host"][0]


@pytest.mark.parametrize("name", list(VAR_SETS))
def test_every_variable_is_reflected_on_the_command_line(rendered: dict, name: str) -> None:
    expected = _expected(name)
    options = _options(_exec_start(rendered[name]["service"]))
    assert options["--served-model-name"] == [expected["vllm_served_model_name"]]
    assert options["--max-model-len"] == [str(expected["vllm_max_model_len"])]
    assert options["--max-num-seqs"] == [str(expected["vllm_max_num_seqs"])]
    assert float(options["--gpu-memory-utilization"][0]) == expected["vllm_gpu_memory_utilization"]
    assert options["--dtype"] == [expected["vllm_dtype"]]
    if expected["vllm_hf_overrides"]:
        assert json.loads(options["--hf-overrides"][0]) == expected["vllm_hf_overrides"]
    else:
        assert "--hf-overrides" not in options
    for extra in expected["vllm_extra_args"]:
        flag, _, value = extra.partition("=")
        assert options[flag] == [value]


def test_api_key_stays_off_the_command_line(rendered: dict) -> None:
    unit, env = rendered["qwen3_8b_matryoshka"]["service"], rendered["qwen3_8b_matryoshka"]["env"]
    key = VAR_SETS["qwen3_8b_matryoshka"]["vllm_api_key"]
    assert "--api-key" not in _options(_exec_start(unit))
    assert key not in unit
    assert f"VLLM_API_KEY={key}" in env.splitlines()
    assert "HF_TOKEN=hf_exampletoken" in env.splitlines()
    assert not [line for line in rendered["defaults"]["env"].splitlines() if line.startswith(("VLLM_API_KEY", "HF_"))]


def test_env_file_is_private(rendered: dict) -> None:
    configure = yaml.safe_load((ROLE / "tasks" / "configure.yml").read_text())
    env_task = next(task for task in configure if task.get("ansible.builtin.template", {}).get("src") == "vllm.env.j2")
    assert env_task["ansible.builtin.template"]["mode"] == "0600"
    assert env_task["ansible.builtin.template"]["owner"] == "root"
    settings = _unit_settings(rendered["defaults"]["service"])
    assert settings["EnvironmentFile"] == ["/etc/vllm/vllm.env"]


def test_unit_is_hardened_but_keeps_the_gpu_devices(rendered: dict) -> None:
    for name in VAR_SETS:
        settings = _unit_settings(rendered[name]["service"])
        assert settings["User"] == ["vllm"] and settings["Group"] == ["vllm"]
        for key, value in (
            ("NoNewPrivileges", "yes"),
            ("ProtectSystem", "strict"),
            ("ProtectHome", "yes"),
            ("PrivateTmp", "yes"),
            ("CapabilityBoundingSet", ""),
            ("PrivateDevices", "no"),
        ):
            assert settings[key] == [value], key
        assert settings["ReadWritePaths"] == ["/var/lib/vllm"]
        assert "Environment=HF_HOME=/var/lib/vllm/huggingface" in rendered[name]["service"].splitlines()
        # Each of these would hide /dev/nvidia* or break CUDA's JIT.
        for forbidden in ("DevicePolicy", "DeviceAllow", "ProtectClock", "MemoryDenyWriteExecute"):
            assert forbidden not in settings, forbidden
    offline = _unit_settings(rendered["qwen3_8b_matryoshka"]["service"])["Environment"]
    assert "HF_HUB_OFFLINE=1" in offline and "CUDA_VISIBLE_DEVICES=0" in offline


# Values the role must refuse. `argspec` cases go through the role's entry point (argument_specs.yml),
# `preflight` cases through preflight.yml. Check mode: nothing on this machine changes even if a case passed.
REJECTED: dict[str, tuple[str, dict, tuple[str, ...]]] = {
    "bad_dtype": ("argspec", {"vllm_dtype": "fp8bad"}, ("vllm_dtype", "fp8bad", "bfloat16")),
    "bad_max_model_len": ("argspec", {"vllm_max_model_len": "many"}, ("vllm_max_model_len",)),
    "host_in_extra_args": ("preflight", {"vllm_extra_args": ["--host", "0.0.0.0"]}, ("vllm_extra_args", "--host")),
    "task_in_extra_args": ("preflight", {"vllm_extra_args": ["--task=embed"]}, ("vllm_extra_args", "--task")),
    "port_in_extra_args": ("preflight", {"vllm_extra_args": ["--port=8002"]}, ("--port",)),
    "gpu_memory_above_one": ("preflight", {"vllm_gpu_memory_utilization": 1.5}, ("vllm_gpu_memory_utilization",)),
    "dollar_in_api_key": ("preflight", {"vllm_api_key": "abc$def"}, ("vllm_api_key",)),
    "quote_in_hf_token": ("preflight", {"vllm_hf_token": 'hf_a"b'}, ("vllm_hf_token",)),
}


@pytest.fixture(scope="module")
def rejections(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    if not ansible_available():
        pytest.skip("ansible-playbook not found next to the test interpreter")
    cases = {
        case: {
            "include": {"name": "vllm"} if entry == "argspec" else {"name": "vllm", "tasks_from": "preflight.yml"},
            "vars": variables,
        }
        for case, (entry, variables, _) in REJECTED.items()
    }
    outcomes, results = run_cases(cases, tmp_path_factory.mktemp("vllm-reject"), check=True)
    # Nothing past the checks ran: no package, user, file or service task of the role.
    ran = {name for name, _ in results}
    assert not ran & {"Install the packages vLLM needs", "Create the vllm user", "Install vllm.service"}, ran
    return outcomes


@pytest.mark.parametrize("case", list(REJECTED))
def test_bad_values_are_refused_with_a_message_naming_the_variable(rejections: dict[str, str], case: str) -> None:
    message = rejections[case]
    assert message != "passed", f"{case} was accepted"
    for needle in REJECTED[case][2]:
        assert needle in message, (case, message)


def test_argument_spec_lists_the_allowed_dtypes() -> None:
    spec = yaml.safe_load((ROLE / "meta" / "argument_specs.yml").read_text())["argument_specs"]["main"]["options"]
    defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    assert spec["vllm_dtype"]["choices"] == ["auto", "half", "float16", "bfloat16", "float", "float32"]
    assert set(spec) == set(defaults), "argument_specs.yml must mirror defaults/main.yml"
