"""vllm.service as the vllm role renders it with real Ansible, checked against FACTS.md.

These tests render the unit and env file for several variable sets (tests/vllm runs the real server) and
check the command line: vLLM's API server with `--model <model> --runner pooling`, no removed `--task`, loopback
only on port 8001,
every variable reflected, the API key kept off the command line; and that the role's argument specs and preflight
refuse bad values with a message naming the variable.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from ansible_play import HARDENED_SERVICE, ROLES, assert_outcome, render_task, run_cases, run_play, unit_settings

ROLE = ROLES / "vllm"
# /proc/driver/nvidia/version as a proprietary (570) and an open (580) kernel module print it
DRIVERS = Path(__file__).parent / "fixtures" / "nvidia"
# /proc/cpuinfo of an AVX2-only EPYC (Zen 3, this machine on 6 December 2026), the same with Zen 4's AVX-512 and
# avx512_bf16, and an Arm Neoverse V1 (Features lists bf16). Flag names as Linux prints them: x86 from
# arch/x86/include/asm/cpufeatures.h ("avx512_bf16", "amx_bf16"), arm64 from arch/arm64/kernel/cpuinfo.c's
# hwcap_str ("bf16")
CPUINFO = Path(__file__).parent / "fixtures" / "cpuinfo"
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
        "vllm_model_revision": "",
    },
    "cpu_build": {
        "vllm_build": "cpu",
        "vllm_model": "/opt/models/all-MiniLM-L6-v2",
        "vllm_model_revision": "",
        "vllm_max_model_len": 256,
        "vllm_cpu_kvcache_space_gib": 2,
        "vllm_cpu_omp_threads_bind": "0-3",
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
    """Every `--flag value` (or `--flag=value`) pair after `python -m <module>`, values collected per flag."""
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


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, str]]:
    """The unit and env file for every variable set, from one ansible-playbook run."""
    workdir = tmp_path_factory.mktemp("vllm-render")
    tasks: list[dict] = [
        {
            "name": "Run the vllm preflight checks and load the role defaults",
            "ansible.builtin.include_role": {"name": "vllm", "tasks_from": "preflight.yml", "public": True},
            # this machine has no NVIDIA driver; the floor has tests of its own below. The CPU is fixed, so the
            # cpu build's `auto` dtype is known (float32; the choice has tests of its own below)
            "vars": {"vllm_build": "cpu", "vllm_cpuinfo_file": str(CPUINFO / "epyc-zen3-avx2")},
        }
    ]
    for name, variables in VAR_SETS.items():
        for template, suffix in (("vllm.service.j2", "service"), ("vllm.env.j2", "env")):
            tasks.append(render_task(ROLE / "templates" / template, workdir / f"{name}.{suffix}", variables))
    plays = [{"name": "Render vllm.service", "hosts": "localhost", "gather_facts": False, "tasks": tasks}]
    run_play(plays, workdir)
    return {name: {kind: (workdir / f"{name}.{kind}").read_text() for kind in ("service", "env")} for name in VAR_SETS}


def _expected(name: str) -> dict:
    defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    merged = {**defaults, **VAR_SETS[name]}
    if "vllm_served_model_name" not in VAR_SETS[name]:
        merged["vllm_served_model_name"] = merged["vllm_model"]
    return merged


@pytest.mark.parametrize("name", list(VAR_SETS))
def test_exec_start_runs_the_api_server_with_the_pooling_runner(rendered: dict, name: str) -> None:
    expected = _expected(name)
    argv = _exec_start(rendered[name]["service"])
    assert argv[:3] == [f"{expected['vllm_venv_dir']}/bin/python", "-m", "vllm.entrypoints.openai.api_server"]
    options = _options(argv)
    assert options["--model"] == [expected["vllm_model"]]
    assert options.get("--revision", [""]) == [expected["vllm_model_revision"]]
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
    share = expected[
        "vllm_cpu_memory_utilization" if expected["vllm_build"] == "cpu" else "vllm_gpu_memory_utilization"
    ]
    assert float(options["--gpu-memory-utilization"][0]) == share
    cpu_auto = expected["vllm_build"] == "cpu" and expected["vllm_dtype"] == "auto"
    assert options["--dtype"] == ["float32" if cpu_auto else expected["vllm_dtype"]]
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
    settings = unit_settings(rendered["defaults"]["service"])
    assert settings["EnvironmentFile"] == ["/etc/vllm/vllm.env"]


def test_unit_is_hardened_but_keeps_the_gpu_devices(rendered: dict) -> None:
    for name in VAR_SETS:
        settings = unit_settings(rendered[name]["service"])
        assert settings["User"] == ["vllm"] and settings["Group"] == ["vllm"]
        for key, value in (*HARDENED_SERVICE.items(), ("PrivateDevices", "false")):
            assert settings[key] == [value], key
        assert settings["ReadWritePaths"] == ["/var/lib/vllm"]
        assert "Environment=HF_HOME=/var/lib/vllm/huggingface" in rendered[name]["service"].splitlines()
        # Each of these would hide /dev/nvidia* or break CUDA's JIT.
        for forbidden in ("DevicePolicy", "DeviceAllow", "ProtectClock", "MemoryDenyWriteExecute"):
            assert forbidden not in settings, forbidden
    assert "VLLM_TARGET_DEVICE=cpu" not in unit_settings(rendered["defaults"]["service"])["Environment"]
    offline = unit_settings(rendered["qwen3_8b_matryoshka"]["service"])["Environment"]
    assert "HF_HUB_OFFLINE=1" in offline and "CUDA_VISIBLE_DEVICES=0" in offline


def test_the_service_joins_the_group_that_owns_the_gpu_nodes(rendered: dict) -> None:
    """pve_gpu_passthrough makes the devN nodes root:44 (video) 0660 in the container (PVE's default is root:root
    0660, pve-container src/PVE/LXC.pm create_passthrough_device_node): vllm.service must hold gid 44 to open them."""
    defaults = yaml.safe_load((ROLES / "pve_gpu_passthrough" / "defaults" / "main.yml").read_text())
    assert defaults["pve_gpu_passthrough_dev_gid"] == "44" and not defaults["pve_gpu_passthrough_dev_mode"]
    for name in VAR_SETS:
        assert unit_settings(rendered[name]["service"])["SupplementaryGroups"] == ["video"], name


def test_the_cpu_build_gets_its_environment(rendered: dict) -> None:
    environment = unit_settings(rendered["cpu_build"]["service"])["Environment"]
    assert "VLLM_TARGET_DEVICE=cpu" in environment
    assert "VLLM_CPU_KVCACHE_SPACE=2" in environment
    assert "VLLM_CPU_OMP_THREADS_BIND=0-3" in environment


def test_the_default_model_is_pinned_to_a_commit(rendered: dict) -> None:
    options = _options(_exec_start(rendered["defaults"]["service"]))
    assert options["--model"] == ["Qwen/Qwen3-Embedding-0.6B"]
    assert len(options["--revision"][0]) == 40


# (cpuinfo fixture, vllm_dtype) -> the --dtype vllm.service runs the cpu build with
CPU_DTYPES: dict[str, tuple[str, str, str]] = {
    "avx2_auto": ("epyc-zen3-avx2", "auto", "float32"),
    "avx512_bf16_auto": ("zen4-avx512-bf16", "auto", "bfloat16"),
    "arm_bf16_auto": ("neoverse-v1-bf16", "auto", "bfloat16"),
    "unreadable_cpuinfo_auto": ("missing", "auto", "float32"),
    "avx2_explicit_bfloat16": ("epyc-zen3-avx2", "bfloat16", "bfloat16"),
    "avx512_bf16_explicit_float32": ("zen4-avx512-bf16", "float32", "float32"),
}


@pytest.fixture(scope="module")
def cpu_dtypes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    """The --dtype of vllm.service (cpu build) for each case of CPU_DTYPES, from one ansible-playbook run."""
    workdir = tmp_path_factory.mktemp("vllm-dtype")
    tasks: list[dict] = []
    for case, (cpu, dtype, _) in CPU_DTYPES.items():
        variables = {"vllm_build": "cpu", "vllm_dtype": dtype, "vllm_cpuinfo_file": str(CPUINFO / cpu)}
        tasks.append(
            {
                "name": f"Preflight ({case})",
                "ansible.builtin.include_role": {"name": "vllm", "tasks_from": "preflight.yml", "public": True},
                "vars": variables,
            }
        )
        tasks.append(render_task(ROLE / "templates" / "vllm.service.j2", workdir / f"{case}.service", variables))
    play = {"name": "Render the cpu build's unit", "hosts": "localhost", "gather_facts": False, "tasks": tasks}
    run_play([play], workdir)
    return {case: _options(_exec_start((workdir / f"{case}.service").read_text()))["--dtype"] for case in CPU_DTYPES}


@pytest.mark.parametrize("case", list(CPU_DTYPES))
def test_the_cpu_builds_auto_dtype_is_bfloat16_only_where_the_cpu_runs_it_natively(
    cpu_dtypes: dict[str, list[str]], case: str
) -> None:
    """vLLM's `auto` is bfloat16 on every x86 CPU; emulated (no avx512_bf16/amx_bf16) it served 60 chunks in 21.5 s
    against 3.6 s in float32 here, which starved the GCP e2e's steady load. A dtype the user names is kept."""
    assert cpu_dtypes[case] == [CPU_DTYPES[case][2]]


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
    "unknown_build": ("argspec", {"vllm_build": "rocm"}, ("vllm_build", "cuda", "cpu")),
    "bad_threads_bind": ("preflight", {"vllm_cpu_omp_threads_bind": "all"}, ("vllm_cpu_omp_threads_bind", "0-3")),
    "cpu_build_of_an_unlocked_release": ("preflight", {"vllm_version": "0.31.0"}, ("vllm_version", "make vllm-lock")),
    "driver_below_the_floor": (
        "preflight",
        {"vllm_build": "cuda", "vllm_nvidia_version_file": str(DRIVERS / "version-570")},
        ("570.133.20", "needs driver 580 or newer", "vllm_build: cpu"),
    ),
    "no_driver": (
        "preflight",
        {"vllm_build": "cuda", "vllm_nvidia_version_file": str(DRIVERS / "missing")},
        ("No NVIDIA driver", "580"),
    ),
}


@pytest.fixture(scope="module")
def rejections(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    cases = {
        case: {
            "include": {"name": "vllm"} if entry == "argspec" else {"name": "vllm", "tasks_from": "preflight.yml"},
            # preflight cases run on the cpu build unless they say otherwise: this machine has no NVIDIA driver
            "vars": {"vllm_build": "cpu", **variables} if entry == "preflight" else variables,
        }
        for case, (entry, variables, _) in REJECTED.items()
    }
    cases["driver_at_the_floor"] = {
        "include": {"name": "vllm", "tasks_from": "preflight.yml"},
        "vars": {"vllm_build": "cuda", "vllm_nvidia_version_file": str(DRIVERS / "version-580")},
    }
    outcomes, results = run_cases(cases, tmp_path_factory.mktemp("vllm-reject"), check=True)
    # Nothing past the checks ran: no package, user, file or service task of the role.
    ran = {name for name, _ in results}
    assert not ran & {"Install the packages vLLM needs", "Create the vllm user", "Install vllm.service"}, ran
    return outcomes


def test_a_driver_at_the_floor_passes_the_preflight(rejections: dict[str, str]) -> None:
    assert_outcome(rejections, "driver_at_the_floor", refused_with=())


@pytest.mark.parametrize("case", list(REJECTED))
def test_bad_values_are_refused_with_a_message_naming_the_variable(rejections: dict[str, str], case: str) -> None:
    assert_outcome(rejections, case, REJECTED[case][2])


def test_argument_spec_lists_the_allowed_dtypes() -> None:
    spec = yaml.safe_load((ROLE / "meta" / "argument_specs.yml").read_text())["argument_specs"]["main"]["options"]
    defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    assert spec["vllm_dtype"]["choices"] == ["auto", "half", "float16", "bfloat16", "float", "float32"]
    assert set(spec) == set(defaults), "argument_specs.yml must mirror defaults/main.yml"


NATIVE_DIMENSIONS = {"0.6b": 1024, "4b": 2560, "8b": 4096}  # Qwen3-Embedding model cards


@pytest.mark.parametrize(
    "readme", ["README.md", *sorted(str(p.relative_to(ROLES.parent)) for p in ROLES.glob("*/README.md"))]
)
def test_readme_examples_give_qwen3_models_their_native_dimension(readme: str) -> None:
    """The gateway refuses an upstream whose dimension differs from its registry: an example that serves
    Qwen3-Embedding-8B must declare 4096 (or, for a 1024-dim deployment, serve 0.6B)."""
    text = (ROLES.parent / readme).read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", text, flags=re.S)
    for block in (entry for b in blocks for entry in re.split(r"(?m)^\s*- id:", b)):  # one registry entry each
        sizes = {size.lower() for size in re.findall(r"qwen3-embedding-(0\.6b|4b|8b)", block, flags=re.I)}
        dimensions = {int(d) for d in re.findall(r"^\s*dimension:\s*(\d+)", block, flags=re.M)}
        if sizes and dimensions:
            assert len(sizes) == 1 and dimensions == {NATIVE_DIMENSIONS[sizes.pop()]}, (readme, block)
